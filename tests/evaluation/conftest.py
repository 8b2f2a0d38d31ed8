"""Fixtures shared by the evaluation tests: a PEFT adapter on the embedded base."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from deepsynth.models.loading import load_model_and_processor


@pytest.fixture(scope="module")
def lora_weights(tmp_path_factory) -> Path:
    """A PEFT adapter on the embedded base (LoRA B not zero), without training_config.json."""
    folder = tmp_path_factory.mktemp("lora") / "adapter"
    torch.manual_seed(0)
    model = load_model_and_processor(None).model
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)", init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(folder)
    return folder
