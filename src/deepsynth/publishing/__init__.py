"""Publishing a trained adapter: Hub upload (HTTP or git) and its model card."""

from deepsynth.publishing.common import PushArgumentError, PushError, PushReport
from deepsynth.publishing.hub import push_adapter
from deepsynth.publishing.model_card import render_model_card, write_model_card

__all__ = ["PushArgumentError", "PushError", "PushReport", "push_adapter", "render_model_card", "write_model_card"]
