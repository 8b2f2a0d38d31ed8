"""The run plan: what a run will do with (config, data) and why, the one planner behind the CLI, the API and the trainer.

:func:`plan_run` resolves the model's facts once (:func:`deepsynth.training.model_facts.model_facts`),
loads the data once (:func:`deepsynth.data.splits.load_splits`, every PDF page rendered at the mode's
size), optionally applies the recommendation for its size (:func:`deepsynth.training.recommend.recommend`),
and returns a :class:`RunPlan`: the config the run will use, the model's facts, the loaded data, the
exact update count, the warnings and human-readable lines saying what was chosen and why. ``deepsynth
train`` prints those lines; the web API returns ``RunPlan.to_dict()``; the trainer runs the plan
(:meth:`deepsynth.training.production_trainer.UnifiedProductionTrainer.from_plan`) without loading the
data again.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from deepsynth.data.collate import task_instruction
from deepsynth.data.splits import EVAL_DATA, EVAL_SPLIT, HOLDOUT, PreparedData, hold_out, load_splits
from deepsynth.data.transcription import TRANSCRIPTION_SAMPLES
from deepsynth.evaluation.metrics import normalisation_words
from deepsynth.models.image_modes import VisionTokens
from deepsynth.training.config import TrainerConfig, build_config
from deepsynth.training.errors import ConfigError
from deepsynth.training.lora_config import FLAT_FIELDS
from deepsynth.training.model_facts import ModelFacts, model_facts
from deepsynth.training.recommend import (
    Recommendation, estimate_updates, eval_every, preset_reason, recommend, target_tokens,
)

#: The README's demonstration (examples/quickstart.yaml, which a test keeps equal to this): what plain
#: ``deepsynth train`` runs. The small tiny_data adapter trained hard (lr 2e-3, 175 updates) on the 54
#: bundled documents, so that the 3.6M-parameter embedded base moves visibly in about a minute.
DEMONSTRATION: dict[str, Any] = {
    "preset": "tiny_data",
    "output_dir": "outputs/quickstart",
    "max_eval_samples": 12,
    "batch_size": 4,
    "gradient_accumulation_steps": 2,
    "num_epochs": 25,
    "optimizer": {"learning_rate": 2.0e-03, "weight_decay": 0.01, "warmup_ratio": 0.1, "scheduler_type": "cosine"},
    "max_new_tokens": 48,
}
BUNDLED_DATA = "the bundled French samples"


@dataclass
class RunPlan:
    """What a run will do and why; the trainer runs it as it is. ``to_dict()`` is JSON-serialisable (the
    Hub token is never in it; nor are ``model`` and ``prepared``, which the trainer reads).

    ``model``: the model's facts, resolved once (:class:`deepsynth.training.model_facts.ModelFacts`).
    ``prepared``: the rows the run trains and is scored on, loaded once (PDF pages rendered once).
    ``data``: ``source`` (how the interface names the data), ``num_samples`` (training rows before
    any hold-out), ``train_samples``, ``eval_samples``, ``eval_from`` (``eval_data``, ``eval_split``,
    ``holdout`` or ``training_data``), ``holdout_indices``, ``no_eval_split`` (why the data gave no
    ``eval`` rows, when looked for). ``updates``: ``total_steps``, ``effective_updates``,
    ``warmup_steps``, ``world_size`` (exact, the trainer's semantics). ``train_tokens``: supervised
    target tokens of the training rows (counted for recommendations; None otherwise or when the
    tokenizer could not load). ``kept``: fields the caller set itself, kept over the recommendation.
    ``lines``: what was chosen and why, one line each, in the caller's words (``names``).
    """

    config: TrainerConfig
    data: dict[str, Any]
    updates: dict[str, int]
    model: ModelFacts
    prepared: PreparedData
    recommendation: Recommendation | None = None
    train_tokens: int | None = None
    kept: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    @property
    def vision_tokens(self) -> VisionTokens | None:
        """What a page costs in the run's resolution mode (None for a text model or one not resolved offline)."""
        return self.model.vision_tokens

    def recorded_config(self) -> TrainerConfig:
        """The config as the adapter folder records it: naming the mode the pages were read in (null in the
        config = the model's default now), so eval and generate reuse it whatever later versions make the default."""
        mode = self.model.recorded_mode
        if self.config.image_mode is not None or mode is None:
            return self.config
        return TrainerConfig.from_dict({**self.config.to_dict(), "image_mode": mode}, hub_token=self.config.hub_token)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "data": dict(self.data),
            "updates": dict(self.updates),
            "recommendation": None if self.recommendation is None else self.recommendation.to_dict(),
            "train_tokens": self.train_tokens,
            "kept": dict(self.kept),
            "vision_tokens": None if self.vision_tokens is None else self.vision_tokens.to_dict(),
            "warnings": list(self.warnings),
            "lines": list(self.lines),
        }

    def text(self) -> str:
        """The lines, then each warning as ``warning: …``: what ``deepsynth train`` prints."""
        return "\n".join([*self.lines, *(f"warning: {w}" for w in self.warnings)])


def plan_run(
    config: TrainerConfig,
    rows: datasets.Dataset | None = None,
    eval_rows: datasets.Dataset | None = None,
    *,
    recommend_settings: bool = False,
    keep: Collection[str] = (),
    world_size: int = 1,
    names: Mapping[str, str] | None = None,
    origin: str | None = None,
    data_label: str | None = None,
    learning_rates: str = "evidence",
) -> RunPlan:
    """Plan a run of ``config`` on its data: the one planner (``deepsynth train``, the web API, the trainer).

    Args:
        config: the settings so far (a file, a preset, flags, a form).
        rows: training rows as :func:`deepsynth.data.load_documents` accepts them (all of them, before
            any hold-out; ``config.column_mapping`` applies). None: ``config.data_path``, or the
            bundled samples when that is None.
        eval_rows: eval rows; None: ``config.eval_data_path``, else the data's ``eval`` split.
        recommend_settings: apply the recommendation for the number of training rows (``--auto``):
            preset, schedule, early stopping and, without eval data, a hold-out; target tokens are
            counted with the model's tokenizer for the parameters-per-token warning.
        keep: fields the caller set itself (flags, form edits): the recommendation leaves them as in
            ``config``, and the plan says so.
        world_size: training processes (data-parallel), for the exact update count.
        names: how the interface names fields in the lines (``{"eval_data_path": "--eval-data"}`` for
            the CLI); field names by default.
        origin: where the settings come from, in the interface's words (first line).
        data_label: how the interface names the data (default: ``data_path`` or the bundled samples).
        learning_rates: the recommendation's learning rates, ``"evidence"`` or ``"guide"`` (the design
            guide's); only with ``recommend_settings`` (a ConfigError otherwise: it would be ignored).

    Returns a :class:`RunPlan`. Raises DataError (bad data) or ConfigError (bad settings, e.g. a hold-out
    that leaves nothing to train on) before anything is written.
    """
    names = dict(names or {})
    _check_learning_rates(learning_rates, recommend_settings, names)
    _check_resume(config.resume_from_checkpoint, names)
    notes: list[str] = []
    facts = _model_facts(config, notes)  # a mode or task the model lacks fails here, before the data loads
    data = _load(config, facts, rows, eval_rows, holdout=None if recommend_settings else config.holdout_samples)
    rec = tokens = None
    if recommend_settings:
        tokens = _count_tokens(facts, data.train["summary"], notes)
        rec = recommend(len(data.train), config.model_name, world_size=world_size, num_train_tokens=tokens,
                        has_eval_data=not data.eval_on_training_data, learning_rates=learning_rates, facts=facts)
        config = rec.apply(config, keep)
        if config.holdout_samples and data.eval_on_training_data:
            data = hold_out(data, config.holdout_samples, config.seed, config.max_eval_samples)
    updates = _updates(config, len(data.train), world_size)
    if rec is not None:
        config = _size_evaluation(rec, config, keep, updates["effective_updates"])
    kept = {name: config.value(name) for name in keep if name in _recommended_fields(rec)} if rec else {}
    label = data_label or config.data_path or (TRANSCRIPTION_SAMPLES if config.task == "transcribe" else BUNDLED_DATA)
    plan = RunPlan(config, _data_summary(data, label), updates, facts, data, rec, tokens, kept, _warnings(rec, keep))
    plan.lines = _lines(plan, names, origin, notes)
    return plan


# --- steps ----------------------------------------------------------------------------------------

def _check_learning_rates(learning_rates: str, recommend_settings: bool, names: dict[str, str]) -> None:
    if learning_rates != "evidence" and not recommend_settings:
        # Ignored otherwise: the guide's rates are the recommendation's.
        raise ConfigError(names.get("learning_rates", "learning_rates"), learning_rates,
                          f"it with {names.get('recommend_settings', 'recommend_settings')} only (the guide's rates "
                          f"are the recommendation's); set {names.get('learning_rate', 'learning_rate')} for a rate "
                          "of your own")


def _load(config: TrainerConfig, facts: ModelFacts, rows: Any, eval_rows: Any, holdout: int | None) -> PreparedData:
    return load_splits(
        rows if rows is not None else config.data_path,
        eval_rows if eval_rows is not None else config.eval_data_path,
        column_mapping=config.column_mapping, max_train_samples=config.max_train_samples,
        max_eval_samples=config.max_eval_samples, holdout_samples=holdout, seed=config.seed, samples=config.task,
        page_size=facts.page_size,
    )


def _model_facts(config: TrainerConfig, notes: list[str]) -> ModelFacts:
    """The model's facts; ConfigError for a mode or a task the model lacks."""
    facts = model_facts(config.model_name, config.image_mode)
    if facts.unresolved is not None:
        notes.append(f"vision tokens per page not computed ({facts.unresolved})")
    if facts.reads_pages is False and config.task == "transcribe":
        raise ConfigError("task", config.task, "summarise for a text causal LM (transcription reads page "
                                               "images: use a DeepSeek-OCR-family model)")
    return facts


def _check_resume(choice: str | None, names: Mapping[str, str]) -> None:
    """An explicit checkpoint folder to resume from must be one: refused here, before the model loads and
    the run folder is made (the trainer checks it again when it resumes)."""
    if choice not in (None, "auto", "never") and not (Path(choice) / "trainer_state.json").is_file():
        raise ConfigError(names.get("resume_from_checkpoint", "resume_from_checkpoint"), choice,
                          "'auto', 'never' or a checkpoint-* directory (a folder with trainer_state.json)")


def _count_tokens(facts: ModelFacts, summaries: list[str], notes: list[str]) -> int | None:
    from deepsynth.models.loading import ModelLoadError

    try:
        return target_tokens(facts.tokenizer(), summaries)
    except ModelLoadError as error:
        notes.append(f"target tokens not counted ({error}); a typical summary length is assumed")
        return None


def _size_evaluation(rec: Recommendation, config: TrainerConfig, keep: Collection[str],
                     effective_updates: int) -> TrainerConfig:
    """``config`` evaluating (for early stopping) about as often over the run actually planned as the
    recommendation did over its own: kept epochs or accumulation change the number of updates."""
    if "eval_every_updates" not in rec.training_config or "eval_every_updates" in keep:
        return config
    every = eval_every(effective_updates)
    if every == config.eval_every_updates:
        return config
    return build_config(config.to_dict(), None, {"eval_every_updates": every}, hub_token=config.hub_token)


def _warnings(rec: Recommendation | None, keep: Collection[str]) -> list[str]:
    """The recommendation's warnings the plan prints: not the choices its lines state, not those about a
    value the caller replaced with its own (kept)."""
    if rec is None:
        return []
    dropped = set(rec.decisions.values()) | {text for name, text in rec.field_warnings.items() if name in keep}
    return [warning for warning in rec.warnings if warning not in dropped]


def _recommended_fields(rec: Recommendation) -> set[str]:
    return {"preset", *FLAT_FIELDS, *rec.overrides()}


def _data_summary(data: PreparedData, label: str) -> dict[str, Any]:
    return {
        "source": label,
        "num_samples": len(data.train) + len(data.held_out_indices),
        "train_samples": len(data.train),
        "eval_samples": len(data.eval),
        "eval_from": data.eval_from,
        "holdout_indices": list(data.held_out_indices),
        "no_eval_split": data.no_eval_split,
    }


def _updates(config: TrainerConfig, train_samples: int, world_size: int) -> dict[str, int]:
    estimate = estimate_updates(train_samples, config.batch_size, config.gradient_accumulation_steps,
                                config.num_epochs, world_size)
    return {"total_steps": estimate.total_steps, "effective_updates": estimate.effective_updates,
            "warmup_steps": config.optimizer.resolve_warmup(estimate.effective_updates), "world_size": world_size}


# --- the lines ------------------------------------------------------------------------------------

def _lines(plan: RunPlan, names: dict[str, str], origin: str | None, notes: list[str]) -> list[str]:
    config, rec, reads_pages = plan.config, plan.recommendation, plan.model.reads_pages
    lines = [f"Plan: {origin}" if origin else "Plan:", f"  data: {_data_line(plan.data, names, rec is not None)}"]
    settings = f"preset {rec.preset_name}, recommended for {preset_reason(plan.data['train_samples'])} " \
               "training samples" if rec else (f"preset {config.preset}" if config.preset else "custom LoRA settings")
    lines.append(f"  settings: {settings}; {_lora_words(config)}")
    lines.append(f"  schedule: {_schedule_words(config, plan.updates)}")
    if rec is not None and "learning_rate" not in plan.kept:
        lines.append(f"  {rec.decisions['learning_rate']}")
    lines.append(f"  task: {_task_words(config, names, reads_pages)}")
    if plan.vision_tokens is not None:
        default = "" if config.image_mode else " (the model's default)"
        lines.append(f"  pages: image mode {plan.vision_tokens.mode.name}{default}; vision tokens "
                     f"{plan.vision_tokens.text()}")
    lines.append(f"  sequence length: {_length_words(config, names, reads_pages)}")
    if config.early_stopping_patience:
        lines.append(f"  early stopping: held-out loss every {config.eval_every_updates} update(s); stops after "
                     f"{config.early_stopping_patience} evaluations without improvement and keeps the best adapter, "
                     f"so the {config.num_epochs} epoch{'s' if config.num_epochs != 1 else ''} are an upper bound")
    if plan.train_tokens is not None:
        lines.append(f"  target tokens: {plan.train_tokens:,} in the training samples (counted with the tokenizer)")
    for name, value in plan.kept.items():
        lines.append(f"  kept: {names.get(name, name)} {_words(value)} (yours, not the recommendation's)")
    lines.extend(f"  note: {note}" for note in notes)
    return lines


def _data_line(data: dict[str, Any], names: dict[str, str], recommended: bool) -> str:
    held_out = data["eval_from"] == HOLDOUT
    # With a hold-out, part of the samples is never trained on: "training samples" would count those too.
    head = f"{data['num_samples']} {'samples' if held_out else 'training samples'} from {data['source']}"
    if data["eval_from"] == EVAL_DATA:
        return f"{head}; scored on {data['eval_samples']} samples of the eval data"
    if data["eval_from"] == EVAL_SPLIT:
        return f"{head}; scored on {data['eval_samples']} held-out samples (its 'eval' split)"
    no_eval = f"no {names.get('eval_data_path', 'eval_data_path')}"
    why = f"{no_eval} and {data['no_eval_split']}" if data["no_eval_split"] else no_eval
    if data["eval_from"] == HOLDOUT:
        rows = ", ".join(str(index + 1) for index in data["holdout_indices"])
        return (f"{head}; {why}: {len(data['holdout_indices'])} held out for evaluation and early stopping "
                f"(row{'s' if len(data['holdout_indices']) > 1 else ''} {rows}, drawn with the seed) and never "
                f"trained on, as scores on trained samples overstate the gain; the other {data['train_samples']} are "
                "trained on")
    reason = f"{why}, and too few samples to hold one out" if recommended else why
    return (f"{head}; {reason}: the before/after scores are on the training samples and measure memorisation, "
            f"not quality (give eval data, even 1-2 documents, or set {names.get('holdout_samples', 'holdout_samples')})")


def _lora_words(config: TrainerConfig) -> str:
    if not config.use_lora:
        return "no LoRA: the unfrozen weights are trained in full"
    saved = f", {','.join(config.lora_modules_to_save)} trained in full" if config.lora_modules_to_save else ""
    return (f"LoRA rank {config.lora_rank}, alpha {_words(config.lora_alpha)}, dropout {_words(config.lora_dropout)} "
            f"on {','.join(config.lora_target_modules or [])}{saved}")


def _schedule_words(config: TrainerConfig, updates: dict[str, int]) -> str:
    optimizer = config.optimizer
    processes = f" on {updates['world_size']} processes" if updates["world_size"] > 1 else ""
    return (f"{updates['effective_updates']:,} optimizer updates ({updates['total_steps']:,} forward/backward "
            f"steps{processes}) = {config.num_epochs} epochs x batch {config.batch_size}, accumulation "
            f"{config.gradient_accumulation_steps}; learning rate {_words(optimizer.learning_rate)}, "
            f"{optimizer.scheduler_type} schedule, {updates['warmup_steps']} warmup update(s)")


def _task_words(config: TrainerConfig, names: dict[str, str], reads_pages: bool | None) -> str:
    instruction = task_instruction(config.task, config.instruction)
    if config.task == "transcribe":
        normalised = normalisation_words(ignore_case=config.metric_ignore_case,
                                         ignore_punctuation=config.metric_ignore_punctuation)
        return f"transcribe (prompt {instruction!r}; targets are the pages' text; CER and WER on {normalised})"
    if reads_pages is False:  # a text model: nothing to transcribe
        return f"summarise (prompt {instruction!r})"
    return f"summarise (prompt {instruction!r}; {names.get('task', 'task')} transcribe for OCR)"


def _length_words(config: TrainerConfig, names: dict[str, str], reads_pages: bool | None) -> str:
    if config.max_length is None:
        if reads_pages is False:
            return ("max_length sized from the data when the examples are encoded (the longest example's prompt + "
                    "document + target + EOS): no target is cut")
        return ("max_length sized from the data when the pages are encoded (the longest example's vision tokens + "
                "prompt + target + EOS): no target is cut")
    return (f"{names.get('max_length', 'max_length')} {config.max_length} (yours): a longer example has its target "
            "cut, with a warning that gives the numbers")


def _words(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)

