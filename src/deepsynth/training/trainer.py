"""transformers' Trainer as DeepSynth runs it: the Trainer subclass (router aux loss) and the run's callbacks.

The only module that subclasses transformers' training classes: the callbacks turn the Trainer's
logs into progress events (schema in :mod:`deepsynth.training.progress`), keep the console short
and restore the adapter on resume.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from transformers import ProgressCallback, Trainer, TrainerCallback

from deepsynth.models.adapters import load_adapter_weights
from deepsynth.training.loss import labelled_loss_inputs
from deepsynth.training.moe.install import MoeRegularisation
from deepsynth.training.progress import Eval, Log, ProgressWriter

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

    def train(self, *args: Any, **kwargs: Any):  # noqa: D102
        # TensorBoard writes its event file from a thread of its own: a full disk there printed a
        # thread traceback ahead of the run's one error line. The writer is closed on failure so that
        # its thread cannot fail later either.
        with background_disk_full_logged():
            try:
                return super().train(*args, **kwargs)
            except BaseException:
                self.close_report_writers()
                raise

    def close_report_writers(self) -> None:
        """Close TensorBoard's writer (transformers closes it only when training ends normally)."""
        from transformers.integrations import TensorBoardCallback

        for callback in self.callback_handler.callbacks:
            writer = getattr(callback, "tb_writer", None) if isinstance(callback, TensorBoardCallback) else None
            if writer is not None:
                callback.tb_writer = None
                try:
                    writer.close()
                except OSError as error:  # what its thread failed on (a full disk): reported by the run
                    LOGGER.debug("TensorBoard writer: %s", error)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:  # noqa: D102
        if "loss" in logs and self._aux_since_log:
            logs["aux_loss"] = sum(self._aux_since_log) / len(self._aux_since_log)
            self._aux_since_log = []
        super().log(logs, start_time)


@contextmanager
def background_disk_full_logged() -> Iterator[None]:
    """A full disk in a background thread (TensorBoard's writer) is one warning line, not a traceback.

    The run reports the full disk itself, as one error: the writer raises the same error again on
    the main thread's next write, and the checkpoint guard checks free space before every save.
    """
    previous = threading.excepthook

    def hook(info: threading.ExceptHookArgs) -> None:
        if isinstance(info.exc_value, OSError) and info.exc_value.errno in (errno.ENOSPC, errno.EDQUOT):
            name = info.thread.name if info.thread is not None else "a background thread"
            LOGGER.warning("%s could not write: %s", name, info.exc_value.strerror or info.exc_value)
            return
        previous(info)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


class ProgressLog(TrainerCallback):
    """Writes a ``log`` event per optimizer update and an ``eval`` event per held-out loss."""

    def __init__(self, writer: ProgressWriter) -> None:
        self.writer = writer

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D102 (TrainerCallback API)
        logs = logs or {}
        if "loss" in logs:
            self.writer.emit(Log(step=state.global_step, epoch=round(state.epoch or 0.0, 4), loss=float(logs["loss"]),
                                 learning_rate=float(logs.get("learning_rate", 0.0)),
                                 # router load-balancing term (MoeTrainer), logged on its own
                                 aux_loss=float(logs["aux_loss"]) if "aux_loss" in logs else None))
        if "eval_loss" in logs:
            self.writer.emit(Eval(step=state.global_step, eval_loss=float(logs["eval_loss"])))


class SparseProgressCallback(ProgressCallback):
    """transformers' progress bar, printing about ``lines`` log lines per run instead of one per update.

    The trainer logs every update (``logging_steps=1``) for the loss history and progress.jsonl;
    printing each of them buries the before/after table under hundreds of lines. Evaluation logs
    and the final summary are always printed.
    """

    def __init__(self, lines: int = 10) -> None:
        super().__init__()
        self.lines = lines

    def on_log(self, args, state, control, logs=None, **kwargs):
        every = max(1, state.max_steps // self.lines) if state.max_steps else 1
        if "loss" in (logs or {}) and state.global_step % every and state.global_step != state.max_steps:
            return
        super().on_log(args, state, control, logs=logs, **kwargs)


class RestoreAdapterOnResume(TrainerCallback):
    """Loads the checkpoint's adapter weights by exact name when a resumed run begins.

    Trainer restores a PEFT checkpoint through PEFT's loader, which (transformers 5) mangles
    DeepSeek-OCR adapter keys and leaves the adapter at its initial value; see
    ``deepsynth.models.adapters.load_adapter_weights``. This runs after that, before the first update.
    """

    def __init__(self, checkpoint: Path) -> None:
        self.checkpoint = checkpoint

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: D102 (TrainerCallback API)
        load_adapter_weights(model, self.checkpoint)
