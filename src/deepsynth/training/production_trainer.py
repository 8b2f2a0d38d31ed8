"""``UnifiedProductionTrainer``: one fine-tuning run, top to bottom, on transformers' ``Trainer``.

data → model → LoRA targets → baseline evaluation → Trainer.train (schedule per optimizer update,
rotating checkpoints, resume) → adapted evaluation → adapter, config, metrics, loss curve → Hub.

Everything written goes to ``config.output_dir``; only the main process writes. Progress events
are appended to ``progress.jsonl`` (one JSON object per line) for the web UI and other watchers.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import PartialState
from transformers import EarlyStoppingCallback, ProgressCallback, TrainerCallback, TrainingArguments, set_seed

from deepsynth.data.collate import DataCollator, RowEncodingError, encode_rows, longest_example, task_instruction
from deepsynth.data.splits import PreparedData, load_splits
from deepsynth.evaluation.compare import evaluate_model, sample_record
from deepsynth.evaluation.metrics import normalisation_words
from deepsynth.models.adapters import load_adapter_weights
from deepsynth.models.families import CAUSAL_LM, family_names
from deepsynth.models.image_modes import IMAGE_MODES, page_size_for_run, vision_tokens_per_page
from deepsynth.models.loading import LoadedModel, load_model_and_processor
from deepsynth.models.quantization import quantization_report, require_bitsandbytes
from deepsynth.publishing import push_adapter, write_model_card
from deepsynth.training.checkpoints import (
    CheckpointGuard, checkpoint_bytes_estimate, checkpoint_problem, checkpoint_step, find_resumable, log_resume_choice,
    model_save_bytes, run_history, run_train_loss, staged_save,
)
from deepsynth.training.config import TrainerConfig
from deepsynth.training.errors import ConfigError, DiskFullError
from deepsynth.training.feature_cache import CachedFeatureCollator, cache_applicable, precompute_image_features
from deepsynth.training.moe import install_moe, plot_expert_utilization
from deepsynth.training.recommend import estimate_updates
from deepsynth.training.scheduler import HF_SCHEDULER_NAMES
from deepsynth.training.targets import ResolvedTargets, apply_lora, count_by_group, resolve_targets
from deepsynth.training.trainer import MoeTrainer

LOGGER = logging.getLogger("deepsynth")
# Samples whose generations are kept in metrics.json for a human to read.
SHOWN_SAMPLES = 3


class ProgressLog(TrainerCallback):
    """Appends progress events to ``progress.jsonl`` and keeps the loss history in memory."""

    def __init__(self, path: Path | None, listener: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.path = path
        self.listener = listener
        self.history: list[dict[str, Any]] = []

    def emit(self, event: str, **fields: Any) -> None:
        record = {"event": event, "time": round(time.time(), 3), **fields}
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as stream:
                stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        if self.listener is not None:
            self.listener(record)

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D102 (TrainerCallback API)
        logs = logs or {}
        if "loss" in logs:
            entry = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "loss": float(logs["loss"]),
                     "learning_rate": float(logs.get("learning_rate", 0.0))}
            if "aux_loss" in logs:  # router load-balancing term (MoeTrainer), logged on its own
                entry["aux_loss"] = float(logs["aux_loss"])
            self.history.append(entry)
            self.emit("log", **entry)
        if "eval_loss" in logs:
            entry = {"step": state.global_step, "eval_loss": float(logs["eval_loss"])}
            self.history.append(entry)
            self.emit("eval", **entry)


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


class UnifiedProductionTrainer:
    """Fine-tune a DeepSeek-OCR-family model (or a text causal LM) with LoRA from a TrainerConfig."""

    def __init__(
        self,
        config: TrainerConfig,
        *,
        callbacks: Sequence[TrainerCallback] = (),
        progress_listener: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.config = config
        self.callbacks = list(callbacks)
        self.progress_listener = progress_listener

    # --- the run ----------------------------------------------------------------------------------

    def train(
        self,
        dataset: datasets.Dataset | str | Path | None = None,
        eval_dataset: datasets.Dataset | str | Path | None = None,
    ) -> tuple[dict[str, Any], dict[str, Path]]:
        """Run the fine-tuning; returns (metrics, paths of what was written).

        A failure after the run started is recorded as an ``error`` event in progress.jsonl (for
        watchers such as the web UI) and re-raised.
        """
        self._progress: ProgressLog | None = None
        try:
            return self._train(dataset, eval_dataset)
        except BaseException as error:
            if self._progress is not None:
                self._report_error(self._progress, error)
            raise

    @staticmethod
    def _report_error(progress: ProgressLog, error: BaseException) -> None:
        """The ``error`` event; a disk-full one says where and how much (the event itself may not fit)."""
        fields: dict[str, Any] = {"message": f"{type(error).__name__}: {error}"}
        if isinstance(error, DiskFullError):
            fields = {"kind": "disk_full", "message": str(error), "path": str(error.path),
                      "needed_bytes": error.needed, "free_bytes": error.free}
        try:
            progress.emit("error", **fields)
        except OSError as failure:
            LOGGER.warning("could not record the error in progress.jsonl: %s", failure)

    def _train(self, dataset: Any, eval_dataset: Any) -> tuple[dict[str, Any], dict[str, Path]]:
        config = self.config
        output_dir = Path(config.output_dir)
        require_bitsandbytes(config.lora_quantization)  # a QLoRA preset without bitsandbytes fails at once
        data = self.prepare_data(dataset, eval_dataset)  # validated before anything is written
        set_seed(config.seed)  # LoRA init, dropout and data order all follow the run's seed
        loaded = load_model_and_processor(
            config.model_name, dtype=config.dtype, gradient_checkpointing=config.gradient_checkpointing,
            quantization=config.lora_quantization, image_mode=config.image_mode,
        )
        _check_task(config, loaded)
        base_class = type(loaded.model).__name__
        model, targets = self._adapt(loaded)
        instruction = task_instruction(config.task, config.instruction)
        train_examples = self._encode(loaded, data.train, instruction)
        eval_examples = self._encode(loaded, data.eval, instruction)
        lengths = _sequence_lengths(config, loaded, train_examples, eval_examples)

        estimate = estimate_updates(len(train_examples), config.batch_size, config.gradient_accumulation_steps,
                                    config.num_epochs, _world_size())
        args = self._training_arguments(output_dir, estimate.effective_updates)
        is_main = args.process_index == 0
        progress = self._progress = ProgressLog(output_dir / "progress.jsonl" if is_main else None,
                                                self.progress_listener)
        if is_main:
            output_dir.mkdir(parents=True, exist_ok=True)
        resume, skipped = self._checkpoint_to_resume(output_dir)
        progress.emit("start", total_updates=estimate.effective_updates, total_steps=estimate.total_steps,
                      num_train_samples=len(train_examples), resumed_from=str(resume) if resume else None,
                      # Log events of earlier segments past this update were redone: readers drop them.
                      resumed_at_update=checkpoint_step(resume) if resume else 0,
                      resume_skipped=[{"path": str(path), "reason": reason} for path, reason in skipped])
        for warning in targets.warnings:
            LOGGER.warning("LoRA targets: %s", warning)
        if data.eval_on_training_data:
            LOGGER.warning("no held-out data: before/after metrics are computed on the training samples")

        eval_kwargs = dict(
            sources=self._sources(loaded, data.eval), references=list(data.eval["summary"]), instruction=instruction,
            max_new_tokens=config.max_new_tokens, no_repeat_ngram_size=config.no_repeat_ngram_size,
            task=config.task, ignore_case=config.metric_ignore_case,
            ignore_punctuation=config.metric_ignore_punctuation,
        )
        before = predictions_before = None
        if is_main:
            progress.emit("phase", name="baseline_eval")
            before, predictions_before = evaluate_model(model, loaded.processor, eval_examples,
                                                        adapter_disabled=config.use_lora, **eval_kwargs)

        # MoE knobs and expert-utilization telemetry (docs/moe.md); installed after the baseline so
        # that "eval" utilization describes the adapted model.
        moe = install_moe(model, loaded.family, gate_dropout_rate=config.gate_dropout_rate,
                          gate_dropout_keywords=config.gate_dropout_keywords,
                          expert_dropout_rate=config.expert_dropout_rate,
                          expert_dropout_min_keep=config.expert_dropout_min_keep,
                          router_aux_loss_coef=config.router_aux_loss_coef, seed=config.seed,
                          router_mode=targets.router_mode)
        # Frozen vision path, no augmentation: encode each unique page once, not once per step.
        collator: Any = DataCollator(loaded.processor, dtype=loaded.model.dtype)
        cache_on, cache_reason = cache_applicable(model, loaded.family, config)
        cache_stats = precompute_image_features(model, train_examples) if cache_on else None
        if cache_stats is not None and cache_stats.skipped is None:
            collator = CachedFeatureCollator(collator)
        LOGGER.info("vision feature cache: %s (%s)", "on" if cache_on else "off", cache_reason)
        # Marks complete checkpoints, rotates them, checks free space (transformers' rotation is off).
        guard = CheckpointGuard(output_dir, config.save_total_limit, checkpoint_bytes_estimate(model))
        callbacks: list[TrainerCallback] = [progress, guard, *self.callbacks]
        if resume and config.use_lora:
            callbacks.append(RestoreAdapterOnResume(resume))
        if config.early_stopping_patience:
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
        trainer = MoeTrainer(
            moe=moe,
            loss_on_labelled_positions=config.loss_on_labelled_positions,
            model=model,
            args=args,
            train_dataset=train_examples,
            eval_dataset=eval_examples if config.eval_every_updates else None,
            data_collator=collator,
            callbacks=callbacks,
        )
        if trainer.pop_callback(ProgressCallback) is not None:  # None when tqdm is disabled
            trainer.add_callback(SparseProgressCallback())
        progress.emit("phase", name="training")
        started = time.perf_counter()
        self._run_training(trainer, guard, resume)
        train_seconds = time.perf_counter() - started
        # Every rank reports what it trained: under DDP the digests must be equal.
        LOGGER.info("rank %d/%d: %d optimizer updates, trained-weights sha256 %s", args.process_index,
                    args.world_size, trainer.state.global_step, trained_weights_digest(model))
        if not is_main:
            return {}, {}

        progress.emit("phase", name="final_eval")
        after, predictions_after = evaluate_model(model, loaded.processor, eval_examples, **eval_kwargs)
        moe.remove()
        # The whole run, earlier segments included: the state's log history is saved in each checkpoint.
        history = run_history(trainer.state.log_history)
        by_group = count_by_group(model, loaded.family)
        metrics = {
            "base_model": loaded.name,
            "model_family": loaded.family,
            "model_class": "AutoModelForCausalLM" if loaded.family == CAUSAL_LM else base_class,
            "preset": config.preset,
            **_task_report(config, loaded, lengths),
            "num_train_samples": len(train_examples),
            "num_eval_samples": len(eval_examples),
            "eval_on_training_data": data.eval_on_training_data,
            # Training rows held out for evaluation (no eval data given; holdout_samples), never trained on.
            "holdout": {"samples": len(data.held_out_indices), "indices": data.held_out_indices,
                        "seed": config.seed} if data.held_out_indices else None,
            "estimated_updates": estimate.effective_updates,
            "optimizer_updates": trainer.state.global_step,
            "total_steps": estimate.total_steps,
            "warmup_steps": args.warmup_steps,
            "early_stopped": trainer.state.global_step < estimate.effective_updates,
            "trainable_params": {"total": sum(by_group.values()), "by_group": by_group},
            # Base weights held in 4/8 bits (QLoRA presets) and their fraction of the base; None: not quantized.
            "quantization": quantization_report(model),
            "resolved_targets": targets.to_dict(),
            "feature_cache": {"enabled": cache_on, "reason": cache_reason,
                              **(cache_stats.to_dict() if cache_stats else {})},
            "train": {"train_loss": run_train_loss(history, trainer.state.global_step),
                      "runtime_seconds": round(train_seconds, 2),  # of this process's segment
                      "resumed_from": str(resume) if resume else None},
            "eval": {"before": before, "after": after,
                     "delta": {k: after[k] - before[k] for k in before}},
            "samples": [
                sample_record(ref, b, a)
                for ref, b, a in list(zip(data.eval["summary"], predictions_before, predictions_after))[:SHOWN_SAMPLES]
            ],
            "history": history,
            **moe.report(),  # "moe" (knobs, whether each acted) and "expert_utilization"
        }
        progress.emit("phase", name="saving")
        paths = self._save(model, loaded, metrics, output_dir)
        if config.push_to_hub:
            progress.emit("phase", name="pushing")
            report = push_adapter(output_dir, config.hub_model_id, private=config.hub_private, token=config.hub_token)
            metrics["push"] = report.to_dict()
            paths["metrics"].write_text(json.dumps(metrics, indent=2, ensure_ascii=False), encoding="utf-8")
        progress.emit("done", metrics_path=str(paths["metrics"]))
        return metrics, paths

    # --- steps ------------------------------------------------------------------------------------

    @staticmethod
    def _run_training(trainer: MoeTrainer, guard: CheckpointGuard, resume: Path | None) -> None:
        """``trainer.train``; a failed save is reported as what it was (e.g. a full disk), cleaned up."""
        try:
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        except Exception as error:
            reported = guard.failure(error)
            if reported is error:
                raise
            raise reported from error

    def prepare_data(self, dataset: Any = None, eval_dataset: Any = None) -> PreparedData:
        """Load and validate train and eval samples (raises DataError before anything is written).

        ``dataset`` / ``eval_dataset`` default to the config's data; see :func:`deepsynth.data.splits.load_splits`
        for where the eval rows come from (eval data, an ``eval`` split, ``holdout_samples``, or the
        training rows, said in the metrics).
        """
        config = self.config
        return load_splits(
            dataset if dataset is not None else config.data_path,
            eval_dataset if eval_dataset is not None else config.eval_data_path,
            column_mapping=config.column_mapping, max_train_samples=config.max_train_samples,
            max_eval_samples=config.max_eval_samples, holdout_samples=config.holdout_samples, seed=config.seed,
            samples=config.task, page_size=page_size_for_run(config.model_name, config.image_mode),
        )

    def _adapt(self, loaded: LoadedModel) -> tuple[torch.nn.Module, ResolvedTargets]:
        lora = self.config.lora_config()
        targets = resolve_targets(loaded.model, lora, loaded.family)
        if self.config.use_lora:
            return apply_lora(loaded.model, targets), targets
        frozen = family_names(loaded.family).frozen_prefixes
        for name, parameter in loaded.model.named_parameters():
            parameter.requires_grad_(not name.startswith(frozen))
        return loaded.model, targets

    def _sources(self, loaded: LoadedModel, rows: datasets.Dataset) -> list[Any]:
        return list(rows["image"] if loaded.is_multimodal else rows["text"])

    def _encode(self, loaded: LoadedModel, rows: datasets.Dataset, instruction: str) -> list[dict[str, Any]]:
        try:
            return encode_rows(rows, loaded.processor, instruction=instruction, max_length=self.config.max_length)
        except RowEncodingError as error:
            if self.config.max_length is None:
                raise  # sized from the data: the row itself is at fault, and the error names it
            raise ConfigError("max_length", self.config.max_length, f"room for the targets ({error})") from None

    def _training_arguments(self, output_dir: Path, total: int) -> TrainingArguments:
        config = self.config
        save_every = config.eval_every_updates if config.early_stopping_patience else (
            config.checkpoint_every_updates or max(1, -(-total // 5)))
        early = bool(config.early_stopping_patience)
        return TrainingArguments(
            output_dir=str(output_dir),
            per_device_train_batch_size=config.batch_size,
            per_device_eval_batch_size=1,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            num_train_epochs=config.num_epochs,
            learning_rate=config.optimizer.learning_rate,
            weight_decay=config.optimizer.weight_decay,
            lr_scheduler_type=HF_SCHEDULER_NAMES[config.optimizer.scheduler_type],
            warmup_steps=config.optimizer.resolve_warmup(total),
            logging_steps=1,
            save_strategy="steps",
            save_steps=save_every,
            save_total_limit=None,  # CheckpointGuard rotates: transformers' rotation deletes folders not ours
            eval_strategy="steps" if config.eval_every_updates else "no",
            eval_steps=config.eval_every_updates,
            load_best_model_at_end=early,
            metric_for_best_model="eval_loss" if early else None,
            greater_is_better=False if early else None,
            seed=config.seed,
            data_seed=config.seed,
            remove_unused_columns=False,
            report_to=["tensorboard"] if importlib.util.find_spec("tensorboard") else "none",
            use_cpu=not torch.cuda.is_available(),
            dataloader_pin_memory=torch.cuda.is_available(),
            ddp_find_unused_parameters=False,
        )

    def _checkpoint_to_resume(self, output_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
        """The checkpoint to resume from and the ``checkpoint-*`` folders passed over, with the reason.

        "auto" takes the newest complete checkpoint (see ``deepsynth.training.checkpoints``); a
        partial or foreign folder is logged and left alone, never deleted.
        """
        choice = self.config.resume_from_checkpoint
        if choice in (None, "never"):
            return None, []
        if choice == "auto":
            chosen, skipped = find_resumable(output_dir)
            log_resume_choice(chosen, skipped)
            return chosen, skipped
        path = Path(choice)
        if not (path / "trainer_state.json").is_file():
            raise ConfigError("resume_from_checkpoint", choice, "'auto', 'never' or a checkpoint-* directory")
        problem = checkpoint_problem(path)
        if problem is not None:  # the user's explicit choice: resumed from, with a warning
            LOGGER.warning("resuming from %s as asked, though it may be incomplete: %s", path, problem)
        return path, []

    def _save(self, model: torch.nn.Module, loaded: LoadedModel, metrics: dict[str, Any], output_dir: Path) -> dict[str, Path]:
        """Write the adapter folder; nothing in ``output_dir`` changes unless every file was written."""
        def write(folder: Path) -> list[str]:
            model.save_pretrained(folder)
            loaded.processor.save_pretrained(folder)
            _recorded_config(self.config, loaded).save(folder / "training_config.json")  # names the mode read
            (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False), encoding="utf-8")
            plot_loss_curve(metrics["history"], folder / "loss_curve.png")
            written = []
            if metrics["expert_utilization"] and plot_expert_utilization(
                    metrics["expert_utilization"], folder / "expert_utilization.png"):
                written.append("expert_utilization")
            # Replace PEFT's placeholder README with DeepSynth's model card (settings, counts, metrics).
            write_model_card(folder, repo_id=self.config.hub_model_id, overwrite=True)
            return written

        # Room for the weights and about 2 MB for the rest (its size is known only once written; ENOSPC is caught).
        extra = staged_save(output_dir, write, needed=model_save_bytes(model) + (2 << 20))
        paths = {
            "output_dir": output_dir,
            "adapter": output_dir,
            "training_config": output_dir / "training_config.json",
            "metrics": output_dir / "metrics.json",
            "loss_curve": output_dir / "loss_curve.png",
            "progress": output_dir / "progress.jsonl",
            "model_card": output_dir / "README.md",
        }
        paths.update({name: output_dir / f"{name}.png" for name in extra})
        return paths


def _check_task(config: TrainerConfig, loaded: LoadedModel) -> None:
    if config.task == "transcribe" and not loaded.is_multimodal:
        raise ConfigError("task", config.task, f"summarise for {loaded.name}, a text model (transcription reads "
                                               "page images: use a DeepSeek-OCR-family model)")


def _sequence_lengths(config: TrainerConfig, loaded: LoadedModel, *example_sets: Sequence[dict]) -> dict[str, Any]:
    """``max_length`` as set, and the longest example it gave (sized from the data when unset); logged."""
    longest = longest_example([example for examples in example_sets for example in examples], loaded.processor)
    vision = f"{longest['vision']} vision + " if longest["vision"] else ""
    parts = f"{vision}{longest['prompt']} prompt + {longest['target']} target + EOS"
    if config.max_length is None:
        LOGGER.info("max_length sized from the data: %d tokens (the longest example: %s)", longest["tokens"], parts)
    return {"set": config.max_length, "longest_example": longest}


def _task_report(config: TrainerConfig, loaded: LoadedModel, lengths: dict[str, Any]) -> dict[str, Any]:
    """What metrics.json says of the task, the pages' resolution mode and the sequence length."""
    mode = loaded.image_mode
    tokens = vision_tokens_per_page(loaded.family, mode, loaded.model.config) if mode is not None else None
    report: dict[str, Any] = {"task": config.task, "image_mode": tokens.to_dict() if tokens else None,
                              "max_length": lengths}
    if config.task == "transcribe":
        report["text_normalisation"] = normalisation_words(ignore_case=config.metric_ignore_case,
                                                           ignore_punctuation=config.metric_ignore_punctuation)
    return report


def _recorded_config(config: TrainerConfig, loaded: LoadedModel) -> TrainerConfig:
    """``config`` naming the mode the pages were read in (null in the config = the model's default then),
    so eval and generate reuse it whatever later versions make the default."""
    mode = loaded.image_mode
    if config.image_mode is not None or mode is None or mode.name not in IMAGE_MODES.get(loaded.family, {}):
        return config
    return TrainerConfig.from_dict({**config.to_dict(), "image_mode": mode.name}, hub_token=config.hub_token)


def _world_size() -> int:
    """Processes of this run as the Trainer will see them (1 without a launcher)."""
    return PartialState(cpu=not torch.cuda.is_available()).num_processes


def trained_weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the trainable tensors (names, dtypes, shapes, bytes): equal on every DDP rank."""
    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters()):
        if parameter.requires_grad:
            tensor = parameter.detach().cpu().contiguous()
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def plot_loss_curve(history: Sequence[dict[str, Any]], path: Path) -> Path:
    """Training (and held-out) loss per optimizer update, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    held_out = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    if train:
        axis.plot(*zip(*train), label="training loss")
    if held_out:
        axis.plot(*zip(*held_out), "o-", label="held-out loss")
    axis.set_xlabel("optimizer update")
    axis.set_ylabel("loss")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
