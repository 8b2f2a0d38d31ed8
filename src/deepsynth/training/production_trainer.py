"""``UnifiedProductionTrainer``: one fine-tuning run as a recipe of named steps, on transformers' ``Trainer``.

A run is a plan (:class:`deepsynth.training.plan.RunPlan`: the config, the model's facts and the data,
loaded once): ``UnifiedProductionTrainer.from_plan(plan).train()`` runs it as it is, and
``UnifiedProductionTrainer(config).train(dataset=…, eval_dataset=…)`` plans first. ``_run`` calls the
steps in order, from one place: setup_model → setup_examples → setup_pages → setup_adapter → start_run →
evaluate (baseline) → setup_trainer → fit → evaluate (adapted) → report → save → publish. Each step is a
method below that reads on its own.

Everything written goes to ``config.output_dir``; only the main process writes. Progress events
(schema: :mod:`deepsynth.training.progress`) are appended to ``progress.jsonl``; ``metrics.json`` is
a :class:`deepsynth.training.report.RunReport`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import EarlyStoppingCallback, ProgressCallback, TrainerCallback, set_seed

from deepsynth.data.collate import DataCollator, RowEncodingError, encode_rows, longest_example, task_instruction
from deepsynth.data.splits import PreparedData
from deepsynth.evaluation.compare import evaluate_model, sample_record
from deepsynth.evaluation.metrics import normalisation_words
from deepsynth.models.families import CAUSAL_LM
from deepsynth.models.feature_cache import CachedFeatureCollator, cache_applicable, precompute_image_features
from deepsynth.models.loading import LoadedModel, load_model_and_processor
from deepsynth.models.memory import (
    keep_embeddings_stored, log_memory, narrow_to_stored, release_vision, return_freed_memory, upcast,
)
from deepsynth.models.quantization.load import require_bitsandbytes
from deepsynth.models.quantization.report import quantization_report
from deepsynth.publishing import push_adapter, write_model_card
from deepsynth.training.checkpoints import (
    CheckpointGuard, checkpoint_bytes_estimate, checkpoint_step, model_save_bytes, run_history, run_train_loss,
    staged_save,
)
from deepsynth.training.config import TrainerConfig
from deepsynth.training.distributed import (
    FEATURE_CACHE_OFF, BaselineOnAllRanks, check_sharding_supported, enable_fsdp_on_cpu, gathered_trainable_state,
    local_weight_share, weights_sharded,
)
from deepsynth.training.errors import ConfigError
from deepsynth.training.moe import install_moe, plot_expert_utilization
from deepsynth.training.plan import RunPlan, plan_run
from deepsynth.training.progress import Done, Phase, ProgressWriter, Start, record_error
from deepsynth.training.recommend import estimate_updates
from deepsynth.training.report import EvalSummary, Holdout, RunReport, TrainableParams, TrainSummary, plot_loss_curve
from deepsynth.training.run_state import (
    Examples, RunState, Training, checkpoint_to_resume, trained_weights_digest, training_arguments, world_size,
)
from deepsynth.training.targets import ResolvedTargets, count_by_group, make_trainable, resolve_targets
from deepsynth.training.trainer import MoeTrainer, ProgressLog, RestoreAdapterOnResume, SparseProgressCallback

LOGGER = logging.getLogger("deepsynth")
# Samples whose generations are kept in metrics.json for a human to read.
SHOWN_SAMPLES = 3


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
        self._given_plan: RunPlan | None = None  # set by ``from_plan``
        self.plan: RunPlan | None = None  # the plan of the latest ``train()``

    @classmethod
    def from_plan(cls, plan: RunPlan, *, callbacks: Sequence[TrainerCallback] = (),
                  progress_listener: Callable[[dict[str, Any]], None] | None = None) -> UnifiedProductionTrainer:
        """A trainer that runs ``plan`` as it is: its config, its model facts and its data (nothing is
        loaded or rendered again)."""
        trainer = cls(plan.config, callbacks=callbacks, progress_listener=progress_listener)
        trainer._given_plan = plan
        return trainer

    def train(
        self,
        dataset: datasets.Dataset | str | Path | None = None,
        eval_dataset: datasets.Dataset | str | Path | None = None,
    ) -> tuple[dict[str, Any], dict[str, Path]]:
        """Run the fine-tuning; returns (metrics, paths of what was written).

        A trainer made by :meth:`from_plan` runs its plan (then ``dataset`` and ``eval_dataset`` are
        refused: the plan holds the data); otherwise the run is planned first
        (:func:`deepsynth.training.plan.plan_run` of the config on ``dataset`` / ``eval_dataset``,
        which default to the config's data). Bad data or settings fail before anything is written. A
        failure after the run started is recorded as an ``error`` event in progress.jsonl (for
        watchers such as the web UI) and re-raised.
        """
        self._progress: ProgressWriter | None = None
        if self._given_plan is not None and (dataset is not None or eval_dataset is not None):
            raise ValueError("this trainer runs its plan, which holds the data: train() takes no dataset then")
        require_bitsandbytes(self.config.lora_quantization)  # a QLoRA preset without bitsandbytes fails at once
        check_sharding_supported(self.config)  # e.g. QLoRA under FSDP: refused before anything is loaded
        self.plan = self._given_plan or plan_run(self.config, dataset, eval_dataset)
        try:
            return self._run(self.plan)
        except BaseException as error:
            if self._progress is not None:
                record_error(self._progress, error)
            raise

    def _run(self, plan: RunPlan) -> tuple[dict[str, Any], dict[str, Path]]:
        """The recipe: every step, in order. Non-main processes of a distributed run stop after training,
        or, when the weights are sharded (FSDP2, ZeRO-3), after the evaluation and the adapter's gathering."""
        enable_fsdp_on_cpu()  # before loading: rank 0 alone may read the weights (cpu_ram_efficient_loading)
        data = plan.prepared  # loaded (and validated) once, by the plan
        loaded = self.setup_model()
        log_memory("setup_model")  # where a run's memory goes, step by step (docs/performance.md)
        examples = self.setup_examples(loaded, data)
        pages = self.setup_pages(loaded, examples)
        log_memory("setup_pages")
        model, targets = self.setup_adapter(loaded)
        run = self.start_run(examples, targets, data)
        sharded = weights_sharded()
        before = self.evaluate(model, loaded, data, examples, run, baseline=True) if run.is_main and not sharded \
            else None
        return_freed_memory()  # what generation's caches left in the heap, before training's peak
        log_memory("the baseline evaluation")
        training = self.setup_trainer(model, loaded, targets, examples, run, pages)
        baseline = self._baseline_on_all_ranks(training, loaded, data, examples, run) if sharded else None
        self.fit(training, run)
        log_memory("fit")
        adapter_state = None
        if sharded:  # every rank takes part in each forward and in gathering the adapter
            model = training.trainer.model
            before = baseline.result
            after = self.evaluate(model, loaded, data, examples, run, baseline=False)
            adapter_state = gathered_trainable_state(model)
        if not run.is_main:
            return {}, {}
        if not sharded:
            after = self.evaluate(model, loaded, data, examples, run, baseline=False)
        log_memory("the final evaluation")
        training.moe.remove()
        report = self.report(model, loaded, data, examples, targets, run, training, before, after)
        paths = self.save(model, loaded, report, run, adapter_state=adapter_state)
        if self.config.push_to_hub:
            self.publish(report, paths, run)
        run.progress.emit(Done(metrics_path=str(paths["metrics"])))
        return report.to_dict(), paths

    # --- steps, in the order the recipe calls them ------------------------------------------------

    def setup_model(self) -> LoadedModel:
        """Seed everything, then load the base model and its processor (frozen vision path).

        With the feature cache on, a checkpoint stored narrower than the run's dtype is loaded as
        stored and upcast in ``setup_pages`` (deepsynth.models.memory): the whole model never exists
        in the run's dtype.
        """
        config = self.config
        set_seed(config.seed)  # LoRA init, dropout and data order all follow the run's seed
        loaded = load_model_and_processor(
            config.model_name, dtype=config.dtype, gradient_checkpointing=config.gradient_checkpointing,
            quantization=config.lora_quantization, image_mode=config.image_mode,
            staged_upcast=config.use_feature_cache is not False,
        )
        return loaded  # a task the model lacks was refused by the plan (its model facts)

    def setup_adapter(self, loaded: LoadedModel) -> tuple[torch.nn.Module, ResolvedTargets]:
        """Resolve the LoRA targets on the model and apply them (or unfreeze all but the frozen path)."""
        lora = self.config.lora_config()
        targets = resolve_targets(loaded.model, lora, loaded.family)
        return make_trainable(loaded.model, lora, targets, loaded.family), targets

    def setup_pages(self, loaded: LoadedModel, examples: Examples) -> dict[str, Any]:
        """Encode every train and eval page once, then let the frozen vision path go; returns the cache's
        report (metrics.json "feature_cache").

        With a frozen vision path and no augmentation a page's features are a constant of the run
        (deepsynth.models.feature_cache): they are computed here, in the run's dtype, and nothing needs
        the encoder again — training, the before/after loss and the generations read the cached
        features — so its weights are released (deepsynth.models.memory). A staged load is upcast last.
        """
        cache_on, reason = cache_applicable(loaded.model, loaded.family, self.config)
        if cache_on and weights_sharded():  # the vision encoder runs in the sharded forward (ranks > 0: on meta here)
            cache_on, reason = False, FEATURE_CACHE_OFF
        report: dict[str, Any] = {"enabled": cache_on, "reason": reason}
        if cache_on:  # the language model waits in the checkpoint's dtype while the pages are encoded
            narrow_to_stored(loaded.model, loaded.stored_dtype, loaded.family)
        if self.config.use_lora and not weights_sharded() and not any("embed" in name for name in (
                *(self.config.lora_modules_to_save or ()), *(self.config.lora_target_modules or ()))):
            kept = keep_embeddings_stored(loaded.model, loaded.stored_dtype, loaded.dtype)
            report.update({"embeddings_kept_stored_bytes": kept} if kept else {})
        if cache_on:
            upcast(loaded.model, loaded.dtype, loaded.family)
            stats = precompute_image_features(loaded.model, [*examples.train, *examples.eval])
            report.update(stats.to_dict())
            if stats.skipped is None:
                report["vision_released_bytes"] = release_vision(loaded.model, loaded.family)
        return_freed_memory()  # the released vision path, before the upcast asks for more
        loaded.finish_upcast()
        return_freed_memory()  # the bf16 copies of a staged upcast
        LOGGER.info("vision feature cache: %s (%s)", "on" if cache_on else "off", reason)
        return report

    def setup_examples(self, loaded: LoadedModel, data: PreparedData) -> Examples:
        """Rows → model inputs (prompt, pages, masked labels) with the task's instruction."""
        instruction = task_instruction(self.config.task, self.config.instruction)
        train = self._encode(loaded, data.train, instruction)
        evaluation = self._encode(loaded, data.eval, instruction)
        return Examples(train, evaluation, instruction, _sequence_lengths(self.config, loaded, train, evaluation))

    def start_run(self, examples: Examples, targets: ResolvedTargets, data: PreparedData) -> RunState:
        """Count the updates, open the run folder and progress.jsonl, choose the checkpoint to resume from."""
        config = self.config
        output_dir = Path(config.output_dir)
        estimate = estimate_updates(len(examples.train), config.batch_size, config.gradient_accumulation_steps,
                                    config.num_epochs, world_size())
        args = training_arguments(config, output_dir, estimate.effective_updates)
        is_main = args.process_index == 0
        progress = self._progress = ProgressWriter(output_dir / "progress.jsonl" if is_main else None,
                                                   self.progress_listener)
        if is_main:
            output_dir.mkdir(parents=True, exist_ok=True)
        resume, skipped = checkpoint_to_resume(config, output_dir)
        progress.emit(Start(total_updates=estimate.effective_updates, total_steps=estimate.total_steps,
                            num_train_samples=len(examples.train), resumed_from=str(resume) if resume else None,
                            resumed_at_update=checkpoint_step(resume) if resume else 0,
                            resume_skipped=[{"path": str(path), "reason": reason} for path, reason in skipped]))
        for warning in targets.warnings:
            LOGGER.warning("LoRA targets: %s", warning)
        if data.eval_on_training_data:
            LOGGER.warning("no held-out data: before/after metrics are computed on the training samples")
        return RunState(output_dir, args, estimate, progress, resume)

    def evaluate(self, model: torch.nn.Module, loaded: LoadedModel, data: PreparedData, examples: Examples,
                 run: RunState, *, baseline: bool) -> tuple[dict[str, float], list[Any]]:
        """Held-out loss and the task's metrics of greedy generations: the base model (adapter
        disabled) when ``baseline``, else the adapted one. Returns (scores, generations)."""
        config = self.config
        run.progress.emit(Phase(name="baseline_eval" if baseline else "final_eval"))
        return evaluate_model(
            model, loaded.processor, examples.eval, references=list(data.eval["summary"]),
            max_new_tokens=config.max_new_tokens, no_repeat_ngram_size=config.no_repeat_ngram_size,
            task=config.task, ignore_case=config.metric_ignore_case,
            ignore_punctuation=config.metric_ignore_punctuation, adapter_disabled=baseline and config.use_lora,
        )

    def setup_trainer(self, model: torch.nn.Module, loaded: LoadedModel, targets: ResolvedTargets,
                      examples: Examples, run: RunState, pages: dict[str, Any]) -> Training:
        """MoE knobs, the vision feature cache, checkpoint guard and callbacks, and the Trainer."""
        config = self.config
        # MoE knobs and expert-utilization telemetry (docs/moe.md); installed after the baseline so
        # that "eval" utilization describes the adapted model.
        moe = install_moe(model, loaded.family, gate_dropout_rate=config.gate_dropout_rate,
                          gate_dropout_keywords=config.gate_dropout_keywords,
                          expert_dropout_rate=config.expert_dropout_rate,
                          expert_dropout_min_keep=config.expert_dropout_min_keep,
                          router_aux_loss_coef=config.router_aux_loss_coef, seed=config.seed,
                          router_mode=targets.router_mode)
        collator: Any = DataCollator(loaded.processor, dtype=loaded.model.dtype)
        if pages.get("cached_examples"):
            collator = CachedFeatureCollator(collator)
        # Marks complete checkpoints, rotates them, checks free space (transformers' rotation is off).
        guard = CheckpointGuard(run.output_dir, config.save_total_limit, checkpoint_bytes_estimate(model))
        callbacks: list[TrainerCallback] = [ProgressLog(run.progress), guard, *self.callbacks]
        if run.resume and config.use_lora and not weights_sharded():  # sharded: accelerate loads it by name
            callbacks.append(RestoreAdapterOnResume(run.resume))
        if config.early_stopping_patience:
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
        trainer = MoeTrainer(
            moe=moe, loss_on_labelled_positions=config.loss_on_labelled_positions, model=model, args=run.args,
            train_dataset=examples.train, eval_dataset=examples.eval if config.eval_every_updates else None,
            data_collator=collator, callbacks=callbacks,
        )
        if trainer.pop_callback(ProgressCallback) is not None:  # None when tqdm is disabled
            trainer.add_callback(SparseProgressCallback())
        return Training(trainer, moe, guard, pages)

    def fit(self, training: Training, run: RunState) -> None:
        """``Trainer.train`` (resuming when a checkpoint was chosen); a failed save is reported as what
        it was (e.g. a full disk), cleaned up. Sets ``training.seconds``."""
        run.progress.emit(Phase(name="training"))
        started = time.perf_counter()
        try:
            training.trainer.train(resume_from_checkpoint=str(run.resume) if run.resume else None)
        except Exception as error:
            reported = training.guard.failure(error)
            if reported is error:
                raise
            raise reported from error
        training.seconds = time.perf_counter() - started
        # Every rank reports what it trained: under DDP the digests must be equal.
        LOGGER.info("rank %d/%d: %d optimizer updates, trained-weights sha256 %s", run.args.process_index,
                    run.args.world_size, training.trainer.state.global_step,
                    trained_weights_digest(training.trainer.model))
        if weights_sharded():
            LOGGER.info("rank %d/%d holds %d of %d weight elements", run.args.process_index, run.args.world_size,
                        *local_weight_share(training.trainer.model))

    def report(self, model: torch.nn.Module, loaded: LoadedModel, data: PreparedData, examples: Examples,
               targets: ResolvedTargets, run: RunState, training: Training,
               before: tuple[dict[str, float], list[Any]], after: tuple[dict[str, float], list[Any]]) -> RunReport:
        """The run's :class:`RunReport` (metrics.json): what was trained, how long, before/after."""
        config, state = self.config, training.trainer.state
        (scores_before, generations_before), (scores_after, generations_after) = before, after
        # The whole run, earlier segments included: the state's log history is saved in each checkpoint.
        history = run_history(state.log_history)
        by_group = count_by_group(model, loaded.family)
        pairs = list(zip(data.eval["summary"], generations_before, generations_after))[:SHOWN_SAMPLES]
        return RunReport(
            base_model=loaded.name, model_family=loaded.family,
            model_class="AutoModelForCausalLM" if loaded.family == CAUSAL_LM else type(loaded.model).__name__,
            preset=config.preset, **_task_report(self.plan, examples.lengths),
            num_train_samples=len(examples.train), num_eval_samples=len(examples.eval),
            eval_on_training_data=data.eval_on_training_data,
            holdout=Holdout(samples=len(data.held_out_indices), indices=data.held_out_indices,
                            seed=config.seed) if data.held_out_indices else None,
            estimated_updates=run.estimate.effective_updates, optimizer_updates=state.global_step,
            total_steps=run.estimate.total_steps, warmup_steps=run.args.warmup_steps,
            early_stopped=state.global_step < run.estimate.effective_updates,
            trainable_params=TrainableParams(total=sum(by_group.values()), by_group=by_group),
            quantization=quantization_report(model), resolved_targets=targets.to_dict(),
            feature_cache=training.feature_cache,
            train=TrainSummary(train_loss=run_train_loss(history, state.global_step),
                               runtime_seconds=round(training.seconds, 2),
                               resumed_from=str(run.resume) if run.resume else None),
            eval=EvalSummary(before=scores_before, after=scores_after,
                             delta={k: scores_after[k] - scores_before[k] for k in scores_before}),
            samples=[sample_record(reference, b, a) for reference, b, a in pairs],
            history=history,
            **training.moe.report(),  # "moe" (knobs, whether each acted) and "expert_utilization"
        )

    def save(self, model: torch.nn.Module, loaded: LoadedModel, report: RunReport, run: RunState, *,
             adapter_state: dict[str, torch.Tensor] | None = None) -> dict[str, Path]:
        """Write the adapter folder; nothing in the output folder changes unless every file was written.

        ``adapter_state``: the trainable tensors gathered from every rank when the weights are sharded."""
        run.progress.emit(Phase(name="saving"))
        output_dir = run.output_dir

        def write(folder: Path) -> list[str]:
            model.save_pretrained(folder, **({"state_dict": adapter_state} if adapter_state is not None else {}))
            loaded.processor.save_pretrained(folder)
            self.plan.recorded_config().save(folder / "training_config.json")  # names the mode read
            report.write(folder / "metrics.json")
            plot_loss_curve(report.history, folder / "loss_curve.png")
            written = []
            if report.expert_utilization and plot_expert_utilization(
                    report.expert_utilization, folder / "expert_utilization.png"):
                written.append("expert_utilization")
            # Replace PEFT's placeholder README with DeepSynth's model card (settings, counts, metrics).
            write_model_card(folder, repo_id=self.config.hub_model_id, overwrite=True)
            return written

        # Room for the weights and about 2 MB for the rest (its size is known only once written; ENOSPC is caught).
        extra = staged_save(output_dir, write, needed=model_save_bytes(model) + (2 << 20))
        paths = {name: output_dir / file for name, file in _OUTPUT_FILES.items()}
        paths.update({name: output_dir / f"{name}.png" for name in extra})
        return paths

    def publish(self, report: RunReport, paths: dict[str, Path], run: RunState) -> None:
        """Push the adapter folder to the Hub; the push report is added to metrics.json."""
        config = self.config
        run.progress.emit(Phase(name="pushing"))
        pushed = push_adapter(run.output_dir, config.hub_model_id, private=config.hub_private, token=config.hub_token)
        report.push = pushed.to_dict()
        report.write(paths["metrics"])

    # --- helpers of the steps ---------------------------------------------------------------------

    def _baseline_on_all_ranks(self, training: Training, loaded: LoadedModel, data: PreparedData,
                               examples: Examples, run: RunState) -> BaselineOnAllRanks:
        """The baseline evaluation of a sharded run: on every rank, once the Trainer has sharded the model."""
        def evaluate(model: torch.nn.Module) -> tuple[dict[str, float], list[Any]]:
            result = self.evaluate(model, loaded, data, examples, run, baseline=True)
            run.progress.emit(Phase(name="training"))
            return result

        baseline = BaselineOnAllRanks(evaluate)
        training.trainer.add_callback(baseline)
        return baseline

    def _encode(self, loaded: LoadedModel, rows: datasets.Dataset, instruction: str) -> list[dict[str, Any]]:
        try:
            return encode_rows(rows, loaded.processor, instruction=instruction, max_length=self.config.max_length)
        except RowEncodingError as error:
            if self.config.max_length is None:
                raise  # sized from the data: the row itself is at fault, and the error names it
            raise ConfigError("max_length", self.config.max_length, f"room for the targets ({error})") from None

_OUTPUT_FILES = {
    "output_dir": ".", "adapter": ".", "training_config": "training_config.json", "metrics": "metrics.json",
    "loss_curve": "loss_curve.png", "progress": "progress.jsonl", "model_card": "README.md",
}


def _sequence_lengths(config: TrainerConfig, loaded: LoadedModel, *example_sets: Sequence[dict]) -> dict[str, Any]:
    """``max_length`` as set, and the longest example it gave (sized from the data when unset); logged."""
    longest = longest_example([example for examples in example_sets for example in examples], loaded.processor)
    vision = f"{longest['vision']} vision + " if longest["vision"] else ""
    parts = f"{vision}{longest['prompt']} prompt + {longest['target']} target + EOS"
    if config.max_length is None:
        LOGGER.info("max_length sized from the data: %d tokens (the longest example: %s)", longest["tokens"], parts)
    return {"set": config.max_length, "longest_example": longest}


def _task_report(plan: RunPlan, lengths: dict[str, Any]) -> dict[str, Any]:
    """What metrics.json says of the task, the pages' resolution mode and the sequence length."""
    config, tokens = plan.config, plan.model.vision_tokens
    report: dict[str, Any] = {"task": config.task, "image_mode": tokens.to_dict() if tokens else None,
                              "max_length": lengths}
    if config.task == "transcribe":
        report["text_normalisation"] = normalisation_words(ignore_case=config.metric_ignore_case,
                                                           ignore_punctuation=config.metric_ignore_punctuation)
    return report


