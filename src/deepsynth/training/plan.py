"""The run plan: what a run will do with (config, data) and why, the one planner behind the CLI and the API.

:func:`plan_run` loads the data through the data loader (:func:`deepsynth.data.splits.load_splits`,
the same call the trainer makes), optionally applies the recommendation for its size
(:func:`deepsynth.training.recommend.recommend`), and returns a :class:`RunPlan`: the config the run
will use, the split, the exact update count, the warnings and human-readable lines saying what was
chosen and why. ``deepsynth train`` prints those lines; the web API returns ``RunPlan.to_dict()``.
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
from deepsynth.data.pdf import page_size_for_settings
from deepsynth.models.image_modes import VisionTokens, mode_for_model, processor_settings_for_run, vision_tokens_per_page
from deepsynth.training.config import TrainerConfig, build_config
from deepsynth.training.errors import ConfigError
from deepsynth.training.lora_config import FLAT_FIELDS
from deepsynth.training.recommend import (
    Recommendation, count_target_tokens, estimate_updates, eval_every, preset_reason, recommend,
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
    """What a run will do and why. ``to_dict()`` is JSON-serialisable (the Hub token is never in it).

    ``data``: ``source`` (how the interface names the data), ``num_samples`` (training rows before
    any hold-out), ``train_samples``, ``eval_samples``, ``eval_from`` (``eval_data``, ``eval_split``,
    ``holdout`` or ``training_data``), ``holdout_indices``, ``no_eval_split`` (why the data gave no
    ``eval`` rows, when looked for). ``updates``: ``total_steps``, ``effective_updates``,
    ``warmup_steps``, ``world_size`` (exact, the trainer's semantics). ``train_tokens``: supervised
    target tokens of the training rows (counted for recommendations; None otherwise or when the
    tokenizer could not load). ``kept``: fields the caller set itself, kept over the recommendation.
    ``vision_tokens``: what a page costs in the run's resolution mode
    (:meth:`deepsynth.models.image_modes.VisionTokens.to_dict`; None for a text model or a model that
    cannot be resolved offline). ``lines``: what was chosen and why, one line each, in the caller's
    words (``names``).
    """

    config: TrainerConfig
    data: dict[str, Any]
    updates: dict[str, int]
    recommendation: Recommendation | None = None
    train_tokens: int | None = None
    kept: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    vision_tokens: VisionTokens | None = None

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
    """Plan a run of ``config`` on its data: the one planner (``deepsynth train``; the web API next).

    Args:
        config: the settings so far (a file, a preset, flags, a form).
        rows: training rows as :func:`deepsynth.data.load_documents` accepts them (all of them, before
            any hold-out; ``config.column_mapping`` applies). None: ``config.data_path``, or the
            bundled samples when that is None.
        eval_rows: eval rows; None: ``config.eval_data_path``, else the data's ``eval`` split.
        recommend_settings: apply the recommendation for the number of training rows (``--auto``):
            preset, schedule, early stopping and, without eval data, a hold-out. Target tokens are
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

    Returns:
        a :class:`RunPlan`. Raises DataError (bad data) or ConfigError (bad settings, e.g. a hold-out
        that leaves nothing to train on) before anything is written.
    """
    names = dict(names or {})
    if learning_rates != "evidence" and not recommend_settings:
        # Ignored otherwise: the guide's rates are the recommendation's.
        raise ConfigError(names.get("learning_rates", "learning_rates"), learning_rates,
                          f"it with {names.get('recommend_settings', 'recommend_settings')} only (the guide's rates "
                          f"are the recommendation's); set {names.get('learning_rate', 'learning_rate')} for a rate "
                          "of your own")
    _check_resume(config.resume_from_checkpoint, names)
    label = data_label or config.data_path or (TRANSCRIPTION_SAMPLES if config.task == "transcribe" else BUNDLED_DATA)
    notes: list[str] = []
    pages, reads_pages = _vision_tokens(config, notes)  # a mode the model lacks fails here, before the data loads
    data = _load(config, rows, eval_rows, holdout=None if recommend_settings else config.holdout_samples)
    rec = tokens = None
    if recommend_settings:
        tokens = _count_tokens(config.model_name, data.train["summary"], notes)
        rec = recommend(len(data.train), config.model_name, world_size=world_size, num_train_tokens=tokens,
                        has_eval_data=not data.eval_on_training_data, learning_rates=learning_rates)
        config = _apply(rec, config, keep)
        if config.holdout_samples and data.eval_on_training_data:
            data = hold_out(data, config.holdout_samples, config.seed, config.max_eval_samples)
    updates = _updates(config, len(data.train), world_size)
    if rec is not None:
        config = _size_evaluation(rec, config, keep, updates["effective_updates"])
    kept = {name: _value(config, name) for name in keep if name in _recommended_fields(rec)} if rec else {}
    plan = RunPlan(config, _data_summary(data, label), updates, rec, tokens, kept, _warnings(rec, keep),
                   vision_tokens=pages)
    plan.lines = _lines(plan, data, names, origin, notes, reads_pages)
    return plan


# --- steps ----------------------------------------------------------------------------------------

def _load(config: TrainerConfig, rows: Any, eval_rows: Any, holdout: int | None) -> PreparedData:
    return load_splits(
        rows if rows is not None else config.data_path,
        eval_rows if eval_rows is not None else config.eval_data_path,
        column_mapping=config.column_mapping, max_train_samples=config.max_train_samples,
        max_eval_samples=config.max_eval_samples, holdout_samples=holdout, seed=config.seed, samples=config.task,
        page_size=run_page_size(config),
    )


def _check_resume(choice: str | None, names: Mapping[str, str]) -> None:
    """An explicit checkpoint folder to resume from must be one: refused here, before the model loads and
    the run folder is made (the trainer checks it again when it resumes)."""
    if choice not in (None, "auto", "never") and not (Path(choice) / "trainer_state.json").is_file():
        raise ConfigError(names.get("resume_from_checkpoint", "resume_from_checkpoint"), choice,
                          "'auto', 'never' or a checkpoint-* directory (a folder with trainer_state.json)")


def _vision_tokens(config: TrainerConfig, notes: list[str]) -> tuple[VisionTokens | None, bool | None]:
    """(vision tokens per page of the run's model in its mode, whether the model reads pages: None when unknown).

    ConfigError for a mode or task the model lacks."""
    try:
        resolved, mode = mode_for_model(config.model_name, config.image_mode)
    except ConfigError:
        raise
    except (ValueError, OSError) as error:  # a hub name not cached while offline: the loader will say more
        notes.append(f"vision tokens per page not computed ({error})")
        return None, None
    if mode is None:
        if config.task == "transcribe":
            raise ConfigError("task", config.task, "summarise for a text causal LM (transcription reads page "
                                                   "images: use a DeepSeek-OCR-family model)")
        return None, False
    return vision_tokens_per_page(resolved.family, mode, resolved.config), True


def _count_tokens(model: str | None, summaries: list[str], notes: list[str]) -> int | None:
    from deepsynth.models.loading import ModelLoadError

    try:
        return count_target_tokens(model, summaries)
    except ModelLoadError as error:
        notes.append(f"target tokens not counted ({error}); a typical summary length is assumed")
        return None


def _apply(rec: Recommendation, config: TrainerConfig, keep: Collection[str]) -> TrainerConfig:
    """``config`` with the recommendation applied, except the fields in ``keep``."""
    mine = {name: _value(config, name) for name in keep}
    return build_config(config.to_dict(), rec.preset_name, {**rec.overrides(), **mine}, hub_token=config.hub_token)


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


def _value(config: TrainerConfig, name: str) -> Any:
    return getattr(config.optimizer, name) if hasattr(config.optimizer, name) else getattr(config, name)


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

def _lines(plan: RunPlan, data: PreparedData, names: dict[str, str], origin: str | None,
           notes: list[str], reads_pages: bool | None) -> list[str]:
    config, rec = plan.config, plan.recommendation
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


def run_page_size(config: TrainerConfig) -> Any:
    """The size PDF pages are rendered at for the run's model and resolution mode (before it loads)."""
    return page_size_for_settings(processor_settings_for_run(config.model_name, config.image_mode))
