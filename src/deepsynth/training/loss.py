"""Logits and loss on labelled positions only: ``lm_head`` and cross-entropy run where a next token is labelled.

A causal-LM loss reads the logits of position p only when token p+1 is labelled (labels != -100).
In OCR fine-tuning most positions are image tokens and prompt, so computing logits everywhere
wastes the ``lm_head`` matmul (vocabulary 129,280 at DeepSeek-OCR's real dims) and the fp32
logits, their softmax and their gradient. Nothing here is hand-written loss code; two inputs that
transformers (5.x) itself defines do the work:

* ``logits_to_keep`` as a 2-D boolean mask [batch, seq] (``transformers.modeling_utils.
  slice_logits_to_keep``, the packed-training form): the model applies ``lm_head`` to the hidden
  states of the True positions only, returning logits of shape [kept, vocab];
* ``shift_labels`` (the already shifted labels, here of those positions only): the model's own
  ``loss_function`` (``ForCausalLMLoss``) then computes the same cross-entropy terms, reduced the
  same way (mean, or sum / ``num_items_in_batch`` under gradient accumulation), as with full logits.

The loss and gradients equal the full-logits path to float rounding (tests/training/test_loss.py).
A model without these inputs (no ``logits_to_keep``, no loss kwargs, another loss function) keeps
the full-logits path; so does a Trainer with a label smoother or a ``compute_loss_func``, which read
``outputs.logits`` against the full labels themselves.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel
from torch import nn
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.trainer_utils import unwrap_peft_model

LOGGER = logging.getLogger("deepsynth")
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


def labelled_loss_inputs(trainer: Any, model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
    """The inputs ``trainer.compute_loss`` should give ``model``: with labelled-only logits when on and supported.

    ``trainer.loss_on_labelled_positions`` switches it; support is decided once per trainer (and
    logged), from the model and from the Trainer's own loss path (a label smoother or a
    ``compute_loss_func`` needs full logits).
    """
    if not getattr(trainer, "loss_on_labelled_positions", False):
        return inputs
    decision = getattr(trainer, "_labelled_loss_decision", None)
    if decision is None:
        if getattr(trainer, "label_smoother", None) is not None or getattr(trainer, "compute_loss_func", None) is not None:
            decision = (False, "the Trainer has a label smoother or a compute_loss_func, which read the full logits")
        else:
            decision = labelled_logits_support(model)
        trainer._labelled_loss_decision = decision
        LOGGER.info("loss on labelled positions only: %s (%s)", "on" if decision[0] else "off", decision[1])
    return with_labelled_logits(inputs) if decision[0] else inputs
