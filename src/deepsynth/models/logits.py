"""Logits on labelled positions only: the inputs that make a transformers model score where a label exists.

Shared by training (``deepsynth.training.loss``, the Trainer's loss) and evaluation
(``deepsynth.evaluation.compare``, the before/after loss), so both compute the same loss the same way
without the full-vocabulary logits of every image and prompt position. See
``deepsynth.training.loss`` for why this is exact.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel
from torch import nn
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.trainer_utils import unwrap_peft_model

__all__ = ["IGNORE_INDEX", "labelled_logits_support", "labelled_positions", "with_labelled_logits"]

IGNORE_INDEX = -100


def _next_token_labels(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    # The shift ForCausalLMLoss applies: position p is scored against labels[:, p + 1].
    return nn.functional.pad(labels[:, 1:], (0, 1), value=ignore_index)


def labelled_positions(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Boolean [batch, seq]: the positions whose *next* token is labelled (those the causal-LM loss reads)."""
    return _next_token_labels(labels, ignore_index) != ignore_index


def with_labelled_logits(inputs: dict[str, Any], ignore_index: int = IGNORE_INDEX) -> dict[str, Any]:
    """``inputs`` plus ``logits_to_keep`` (labelled positions) and ``shift_labels`` (their next-token labels).

    Left unchanged when there are no 2-D ``labels`` or the caller already chose the logits or the
    shifted labels itself.
    """
    labels = inputs.get("labels")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 2 or "logits_to_keep" in inputs or "shift_labels" in inputs:
        return inputs
    shifted = _next_token_labels(labels, ignore_index)
    keep = shifted != ignore_index
    return {**inputs, "logits_to_keep": keep, "shift_labels": shifted[keep]}


def labelled_logits_support(model: nn.Module) -> tuple[bool, str]:
    """Whether ``model`` (PEFT- or DDP-wrapped or not) computes logits and loss on a position mask, and why."""
    base = unwrap_peft_model(extract_model_from_parallel(model))
    try:
        parameters = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False, f"{type(base).__name__}.forward has no inspectable signature"
    if "logits_to_keep" not in parameters:
        return False, f"{type(base).__name__}.forward takes no logits_to_keep"
    if getattr(base, "accepts_loss_kwargs", True) is False or not any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return False, f"{type(base).__name__}.forward passes no loss kwargs (shift_labels) to its loss"
    if getattr(base, "loss_function", None) is not ForCausalLMLoss:
        return False, f"{type(base).__name__}'s loss is not transformers' ForCausalLMLoss"
    return True, "logits_to_keep + shift_labels into the model's own ForCausalLMLoss"
