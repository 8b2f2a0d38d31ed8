"""transformers' Trainer as DeepSynth runs it: the router aux loss and its log entry (the only Trainer subclass)."""

from __future__ import annotations

import logging
from typing import Any

from transformers import Trainer

from deepsynth.training.loss import labelled_loss_inputs
from deepsynth.training.moe.install import MoeRegularisation

LOGGER = logging.getLogger("deepsynth")


class MoeTrainer(Trainer):
    """transformers' Trainer plus the router aux loss (training forwards only) and its ``aux_loss`` log entry.

    The aux term is ``coef × load_balancing_loss`` per micro-batch, scaled like the language-model
    loss so that an optimizer update sees its mean over the accumulated micro-batches. The logged
    ``loss`` is the total optimised loss; ``aux_loss`` is the unscaled balance term.
    With ``loss_on_labelled_positions``, logits and loss are computed where a label exists only
    (:mod:`deepsynth.training.loss`), in training and evaluation forwards alike.
    """

    def __init__(self, *args: Any, moe: MoeRegularisation | None = None, loss_on_labelled_positions: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.moe = moe
        self.loss_on_labelled_positions = loss_on_labelled_positions
        self._aux_since_log: list[float] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: D102
        inputs = labelled_loss_inputs(self, model, inputs)
        moe = self.moe
        if moe is None or not moe.aux_loss_active or not model.training:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        attention_mask = inputs.get("attention_mask")
        loss, outputs = super().compute_loss(model, {**inputs, "output_router_logits": True}, return_outputs=True,
                                             num_items_in_batch=num_items_in_batch)
        aux = moe.aux_loss(outputs, attention_mask)
        if aux is None and not moe.aux_losses and not getattr(self, "_warned_no_router_logits", False):
            LOGGER.warning("MoE: the model returned no router_logits: the router aux loss is not applied")
            self._warned_no_router_logits = True
        if aux is not None:
            loss = loss + (moe.aux_loss_coef / self._accumulation_share(num_items_in_batch)) * aux.to(loss.dtype)
            value = float(aux.detach())
            self._aux_since_log.append(value)
            moe.aux_losses.append(value)
        return (loss, outputs) if return_outputs else loss

    def _accumulation_share(self, num_items_in_batch: Any) -> int:
        """1, or the accumulation steps when transformers scales the LM loss for accumulation itself."""
        scaled_for_accumulation = self.loss_is_scaled_for_ga if self.loss_is_scaled_for_ga is not None else (
            (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None)
        return getattr(self, "current_gradient_accumulation_steps", 1) if scaled_for_accumulation else 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:  # noqa: D102
        if "loss" in logs and self._aux_since_log:
            logs["aux_loss"] = sum(self._aux_since_log) / len(self._aux_since_log)
            self._aux_since_log = []
        super().log(logs, start_time)
