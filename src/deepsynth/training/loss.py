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

import logging
from typing import Any

from torch import nn

# The mechanism lives with the models (evaluation uses it too): deepsynth.models.logits.
from deepsynth.models.logits import labelled_logits_support, with_labelled_logits

__all__ = ["labelled_loss_inputs"]

LOGGER = logging.getLogger("deepsynth")


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
