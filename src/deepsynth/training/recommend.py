"""Recommend a preset and training settings for a dataset size: ``deepsynth recommend``, the web
API's recommendation, and the settings the run planner (:mod:`deepsynth.training.plan`) applies for
``--auto`` / ``deepsynth train --data F``.

Update counts follow the trainer's real semantics (transformers' Trainer): gradient accumulation
restarts at every epoch, and the last, shorter accumulation window of an epoch still makes an
update. So an epoch of B batches makes ceil(B / accumulation) updates, and accumulation beyond B
changes nothing — the recommendation caps it at B and says so.

Tiny-data guards (issue #8; the measurements behind each number are in docs/quality.md): without
eval data a few samples are held out for evaluation (:func:`holdout_size`), runs under
``EARLY_STOPPING_BELOW`` samples with held-out data stop early on held-out loss, and a warning says
when the adapter has more than ``PARAMS_PER_TOKEN_WARNING`` trainable parameters per target token.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from deepsynth.training.config import TrainerConfig, build_config
from deepsynth.training.errors import ConfigError
from deepsynth.training.lora_config import get_lora_preset
from deepsynth.training.model_facts import ModelFacts, model_facts
from deepsynth.training.recipes import (
    LEARNING_RATES, RECIPES, Recipe, evidence_scope, learning_rate_note, recipe_optimizer, recipe_training_config,
)
from deepsynth.training.targets import count_trainable_params

MAX_SAMPLES = 10_000_000

# Below this many training samples the recipes run 200-300 epochs over a handful of documents:
# evaluate held-out loss during training and stop when it stops improving.
EARLY_STOPPING_BELOW = 50
EARLY_STOPPING_PATIENCE = 3
EVALS_PER_RUN = 20  # eval_every_updates = ceil(updates / EVALS_PER_RUN)
# Without eval data, hold out max(1, n // HOLDOUT_DIVISOR) samples from HOLDOUT_MIN_SAMPLES on; below
# that every sample is needed for training and the metrics are on the training data (said).
HOLDOUT_MIN_SAMPLES = 6
HOLDOUT_DIVISOR = 5
# Warn when the adapter has more trainable parameters than this per supervised (target) token.
PARAMS_PER_TOKEN_WARNING = 10_000
# Used when the caller does not count target tokens: the bundled French summaries have 72-103
# (mean 86) target tokens with SmolLM2's tokenizer; the warning says the count was assumed.
ASSUMED_TARGET_TOKENS_PER_SAMPLE = 90


@dataclass(frozen=True)
class UpdateEstimate:
    """Micro-steps (forward/backward passes per process) and optimizer updates of a run."""

    batches_per_epoch: int
    total_steps: int
    effective_updates: int


def estimate_updates(
    num_samples: int, batch_size: int, gradient_accumulation_steps: int, num_epochs: int, world_size: int = 1
) -> UpdateEstimate:
    """Exact step and update counts for the trainer's semantics (see module docstring).

    With ``world_size`` processes each sees ceil(num_samples / world_size) samples per epoch, as
    torch's DistributedSampler pads the shards to equal length.
    """
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size),
                        ("gradient_accumulation_steps", gradient_accumulation_steps),
                        ("num_epochs", num_epochs), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(name, value, "an integer > 0")
    per_process = math.ceil(num_samples / world_size)
    batches = math.ceil(per_process / batch_size)
    updates_per_epoch = math.ceil(batches / gradient_accumulation_steps)
    return UpdateEstimate(batches, batches * num_epochs, updates_per_epoch * num_epochs)


def holdout_size(num_samples: int) -> int:
    """Samples to hold out for evaluation when no eval data is given.

    0 below ``HOLDOUT_MIN_SAMPLES`` (one document would be 17-33 % of the data and a one-document
    score is noise), else ``max(1, num_samples // HOLDOUT_DIVISOR)``: 6→1, 10→2, 24→4, 50→10.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples <= 0:
        raise ConfigError("num_samples", num_samples, "an integer > 0")
    if num_samples < HOLDOUT_MIN_SAMPLES:
        return 0
    return max(1, num_samples // HOLDOUT_DIVISOR)


def count_target_tokens(model: str | None, targets: Iterable[str]) -> int:
    """Supervised target tokens of ``targets`` with ``model``'s tokenizer (None: the embedded model).

    What ``deepsynth.data.collate.build_example`` puts in ``labels`` (not -100): each target's tokens
    plus EOS. Only the tokenizer is loaded, not the weights. A target cut by ``max_length`` counts
    fewer in training (build_example warns then), so this is the count of uncut examples.

    Raises:
        ModelLoadError: (a ValueError) when the tokenizer cannot be loaded.
    """
    from deepsynth.models.loading import load_tokenizer

    return target_tokens(load_tokenizer(model), targets)


def target_tokens(tokenizer: Any, targets: Iterable[str]) -> int:
    """:func:`count_target_tokens` with a tokenizer already loaded (the run plan's)."""
    return sum(len(tokenizer(target, add_special_tokens=False)["input_ids"]) + 1 for target in targets)


# The seed's thresholds, on training samples: below 10 tiny_data, below 50 balanced, else high_capacity_moe.
PRESET_THRESHOLDS: tuple[tuple[int, str], ...] = ((10, "tiny_data"), (50, "balanced"))
LARGEST_PRESET = "high_capacity_moe"


def preset_for(num_samples: int) -> str:
    """The seed's thresholds: < 10 tiny_data, < 50 balanced, else high_capacity_moe."""
    for below, name in PRESET_THRESHOLDS:
        if num_samples < below:
            return name
    return LARGEST_PRESET


def preset_reason(num_samples: int) -> str:
    """The threshold range of :func:`preset_for` that ``num_samples`` falls in: "< 10", "10-49" or ">= 50"."""
    lower = None
    for below, _ in PRESET_THRESHOLDS:
        if num_samples < below:
            return f"< {below}" if lower is None else f"{lower}-{below - 1}"
        lower = below
    return f">= {lower}"


@dataclass
class Recommendation:
    """A preset, its LoRA and training settings, exact estimates and warnings.

    ``num_samples`` is all the data given; ``evaluation`` says how it is evaluated:
    ``{"holdout_samples": k, "train_samples": num_samples - k, "eval_on_training_data": bool}``
    (k > 0 only when the recommendation was made without eval data). The settings are for the
    ``train_samples``. ``training_config`` holds the run's length, the optimizer settings (warmup as
    the recipe's ratio) and, below ``EARLY_STOPPING_BELOW`` training samples with held-out data,
    ``eval_every_updates`` and ``early_stopping_patience``.
    """

    num_samples: int
    model: str
    preset_name: str
    lora_config: dict[str, Any]
    training_config: dict[str, Any]
    estimates: dict[str, Any]
    trainable_params_by_group: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    evaluation: dict[str, Any] = field(default_factory=dict)
    # The warnings that state a choice ("evaluation": the hold-out, "early_stopping"), by topic: the
    # run plan states those choices in its own lines and prints only the other warnings.
    decisions: dict[str, str] = field(default_factory=dict, repr=False)
    # What a page costs the model in the resolution mode (VisionTokens.to_dict()); None for a text model.
    vision_tokens: dict[str, Any] | None = None
    # Warnings about the recommended value of one field (field name → warning): the run plan drops the
    # warning when the caller set that field itself (its own value is kept, so the warning is stale).
    field_warnings: dict[str, str] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_samples": self.num_samples,
            "model": self.model,
            "preset_name": self.preset_name,
            "lora_config": self.lora_config,
            "training_config": self.training_config,
            "estimates": self.estimates,
            "trainable_params_by_group": self.trainable_params_by_group,
            "warnings": self.warnings,
            "evaluation": self.evaluation,
            "vision_tokens": self.vision_tokens,
        }

    def overrides(self) -> dict[str, Any]:
        """The TrainerConfig fields this recommendation sets besides the preset's LoRA fields.

        Warmup as the recipe's ratio (``warmup_steps`` None), so a run shortened afterwards still
        warms up over the same share of its updates; early stopping and the hold-out
        (``holdout_samples``) only when the recommendation has them.
        """
        overrides = {**self.training_config, "warmup_steps": None}
        if self.evaluation.get("holdout_samples"):
            overrides["holdout_samples"] = self.evaluation["holdout_samples"]
        return overrides

    def apply(self, config: TrainerConfig, keep: Collection[str] = ()) -> TrainerConfig:
        """``config`` with this recommendation's preset and :meth:`overrides` applied, except the fields in
        ``keep`` (the caller's own values, as in ``config``); its other fields (early stopping and hold-out
        included, when the recommendation has none) stay. What the run plan applies."""
        mine = {name: config.value(name) for name in keep}
        return build_config(config.to_dict(), self.preset_name, {**self.overrides(), **mine},
                            hub_token=config.hub_token)


def recommend(
    num_samples: int,
    model: str | None = None,
    *,
    world_size: int = 1,
    calibrate: bool = False,
    num_train_tokens: int | None = None,
    has_eval_data: bool = True,
    image_mode: str | None = None,
    learning_rates: str = "evidence",
    facts: ModelFacts | None = None,
) -> Recommendation:
    """Recommend a preset and settings for ``num_samples`` training samples on ``model``.

    ``model`` None is the embedded default; ``trainable_params`` is exact. With ``calibrate``, a few real
    training steps are timed here (loading the weights) and ``estimated_time_minutes`` extrapolated from them.

    ``has_eval_data`` False: ``num_samples`` is all the data; :func:`holdout_size` of it is held
    out for evaluation (``evaluation`` says how many; ``apply`` sets ``holdout_samples``) and the
    settings are chosen for the rest. ``num_train_tokens``: supervised target tokens (labels not
    -100) of the ``num_samples`` samples, for the parameters-per-token warning (scaled to the share
    trained on when samples are held out); None assumes ``ASSUMED_TARGET_TOKENS_PER_SAMPLE`` per
    sample and says so. ``image_mode``: the mode whose vision tokens per page are reported (None: the
    model's own); ``facts``: the model in its mode as the caller resolved it (the run plan) instead.
    ``learning_rates``: ``"evidence"`` (the rates our runs support, :data:`deepsynth.training.recipes.RECIPES`)
    or ``"guide"`` (the design guide's); the choice and its reason are a note.
    """
    _check_request(num_samples, num_train_tokens, has_eval_data, learning_rates, world_size)
    facts = facts if facts is not None else model_facts(model, image_mode)
    warnings: list[str] = []
    held_out, num_train_tokens = _evaluation(num_samples, has_eval_data, num_train_tokens, warnings)
    decisions = {"evaluation": warnings[-1]} if warnings else {}
    train_samples = num_samples - held_out
    preset_name = preset_for(train_samples)
    recipe, lora = RECIPES[preset_name], get_lora_preset(preset_name)
    accumulation = _accumulation(recipe, train_samples, world_size, warnings)
    capped = accumulation < recipe.gradient_accumulation_steps
    field_warnings = {"gradient_accumulation_steps": warnings[-1]} if capped else {}
    estimate = estimate_updates(train_samples, recipe.batch_size, accumulation, recipe.num_epochs, world_size)
    report = count_trainable_params(model, lora, resolved=facts.resolved)
    warnings.extend([*report.targets.warnings, *_size_warnings(train_samples)])
    tokens, per_token = _params_per_token(report.trainable, train_samples, num_train_tokens, warnings)
    training_config = recipe_training_config(recipe, accumulation, learning_rates)
    warnings.append(learning_rate_note(preset_name, recipe, learning_rates,
                                        evidence_scope(recipe, train_samples, report.model)))
    decisions["learning_rate"] = warnings[-1]
    if train_samples < EARLY_STOPPING_BELOW and (has_eval_data or held_out > 0):
        training_config.update(_early_stopping(estimate, recipe, train_samples, warnings))
        decisions["early_stopping"] = warnings[-1]
    minutes = _calibrated_minutes(model, lora, recipe, estimate, warnings) if calibrate else None
    return Recommendation(
        num_samples=num_samples, model=report.model, preset_name=preset_name, lora_config=lora.to_dict(),
        training_config=training_config, trainable_params_by_group=report.by_group, warnings=warnings,
        estimates=_estimates(estimate, recipe, report.trainable, tokens, per_token, num_train_tokens is None, minutes),
        evaluation={"holdout_samples": held_out, "train_samples": train_samples,
                    "eval_on_training_data": not (has_eval_data or held_out > 0)},
        decisions=decisions, field_warnings=field_warnings,
        vision_tokens=None if facts.vision_tokens is None else facts.vision_tokens.to_dict(),
    )


def _estimates(estimate: UpdateEstimate, recipe: Recipe, trainable: int, tokens: int, per_token: float,
               tokens_assumed: bool, minutes: float | None) -> dict[str, Any]:
    return {
        "total_steps": estimate.total_steps,
        "effective_updates": estimate.effective_updates,
        "warmup_steps": recipe_optimizer(recipe).resolve_warmup(estimate.effective_updates),
        "trainable_params": trainable,
        "train_tokens": tokens,
        "train_tokens_assumed": tokens_assumed,
        "params_per_train_token": round(per_token, 1),
        # Measured only by calibration (deepsynth recommend --calibrate); never guessed.
        "estimated_time_minutes": minutes,
    }


def _check_request(num_samples: Any, num_train_tokens: Any, has_eval_data: Any, learning_rates: Any,
                   world_size: Any = 1) -> None:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or not 0 < num_samples <= MAX_SAMPLES:
        raise ConfigError("num_samples", num_samples, f"an integer between 1 and {MAX_SAMPLES:,}")
    if num_train_tokens is not None and (isinstance(num_train_tokens, bool) or not isinstance(num_train_tokens, int)
                                         or num_train_tokens <= 0):
        raise ConfigError("num_train_tokens", num_train_tokens, "null or an integer > 0")
    if not isinstance(has_eval_data, bool):
        raise ConfigError("has_eval_data", has_eval_data, "true or false")
    if learning_rates not in LEARNING_RATES:
        raise ConfigError("learning_rates", learning_rates, f"one of {', '.join(LEARNING_RATES)}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ConfigError("world_size", world_size, "an integer >= 1 (training processes)")


def _evaluation(num_samples: int, has_eval_data: bool, num_train_tokens: int | None,
                warnings: list[str]) -> tuple[int, int | None]:
    """(samples held out, target tokens of the samples that remain for training)."""
    held_out = 0 if has_eval_data else holdout_size(num_samples)
    train_samples = num_samples - held_out
    if held_out:
        if num_train_tokens is not None:  # the tokens of the samples that remain for training
            num_train_tokens = max(1, round(num_train_tokens * train_samples / num_samples))
        warnings.append(
            f"no eval data: {held_out} of the {num_samples} samples are held out for evaluation and early stopping "
            f"and never trained on; the settings are for the {train_samples} that remain. Scores on training "
            "samples overstate the gain (in the preset ablation, docs/quality.md, training loss fell 2-5x faster "
            "than held-out loss)"
        )
    elif not has_eval_data:
        warnings.append(
            f"no eval data and only {num_samples} sample(s), too few to hold one out: the before/after metrics "
            "will be computed on the training samples and measure memorisation, not quality; early stopping is "
            "off. Give eval data (even 1-2 documents) for a real score"
        )
    return held_out, num_train_tokens


def _accumulation(recipe: Recipe, train_samples: int, world_size: int, warnings: list[str]) -> int:
    """The recipe's accumulation, capped at the batches of an epoch (accumulation does not span epochs)."""
    batches = math.ceil(math.ceil(train_samples / world_size) / recipe.batch_size)
    accumulation = min(recipe.gradient_accumulation_steps, batches)
    if accumulation < recipe.gradient_accumulation_steps:
        warnings.append(
            f"gradient accumulation set to {accumulation} instead of the preset's {recipe.gradient_accumulation_steps}: "
            f"an epoch has only {batches} batch(es) and accumulation does not span epochs, so each update "
            f"averages the whole epoch ({train_samples} samples)"
        )
    return accumulation


def _size_warnings(train_samples: int) -> list[str]:
    if train_samples < 3:
        return [f"only {train_samples} sample(s): the adapter will memorise them; 3 or more are advised"]
    if train_samples > 1000:
        return ["presets are tuned for 3-50 samples; with this much data consider fewer epochs"]
    return []


def _params_per_token(trainable: int, train_samples: int, num_train_tokens: int | None,
                      warnings: list[str]) -> tuple[int, float]:
    """(training target tokens, trainable parameters per token), warning above ``PARAMS_PER_TOKEN_WARNING``."""
    tokens = num_train_tokens if num_train_tokens is not None else train_samples * ASSUMED_TARGET_TOKENS_PER_SAMPLE
    per_token = trainable / tokens
    if per_token > PARAMS_PER_TOKEN_WARNING:
        counted = "" if num_train_tokens is not None else (
            f" (assumed: {ASSUMED_TARGET_TOKENS_PER_SAMPLE} per sample; pass num_train_tokens, or --train-tokens, "
            "for the real count)")
        warnings.append(
            f"{trainable:,} trainable parameters for {tokens:,} training target tokens{counted}: "
            f"{per_token:,.0f} parameters per token (> {PARAMS_PER_TOKEN_WARNING:,}). The adapter can memorise the "
            "training summaries outright; trust held-out metrics only, keep early stopping on, or pick a smaller "
            "preset (e.g. 'standard' or 'minimal')"
        )
    return tokens, per_token


def eval_every(effective_updates: int) -> int:
    """Optimizer updates between held-out evaluations: about ``EVALS_PER_RUN`` evaluations over the run."""
    return max(1, math.ceil(effective_updates / EVALS_PER_RUN))


def _early_stopping(estimate: UpdateEstimate, recipe: Recipe, train_samples: int,
                    warnings: list[str]) -> dict[str, int]:
    every = eval_every(estimate.effective_updates)
    warnings.append(
        f"early stopping on: held-out loss every {every} update(s), stop after {EARLY_STOPPING_PATIENCE} "
        f"evaluations without improvement and keep the best adapter; the {recipe.num_epochs}-epoch recipe "
        f"over {train_samples} samples is an upper bound, not a target"
    )
    return {"eval_every_updates": every, "early_stopping_patience": EARLY_STOPPING_PATIENCE}


def _calibrated_minutes(model: str | None, lora: Any, recipe: Recipe, estimate: UpdateEstimate,
                        warnings: list[str]) -> float:
    from deepsynth.training.calibrate import measure_seconds_per_step

    seconds = measure_seconds_per_step(model, lora, recipe.batch_size)
    warnings.append(
        f"time estimate measured here: {seconds:.3f} s per forward/backward step x {estimate.total_steps} "
        "steps; training only, evaluation and checkpoint writes come on top"
    )
    return round(seconds * estimate.total_steps / 60, 2)
