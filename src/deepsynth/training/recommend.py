"""Recommend a preset and training settings for a dataset size — the one function behind
``deepsynth recommend``, ``--auto``, the web API and the UI's Auto-Configure button.

Update counts follow the trainer's real semantics (transformers' Trainer): gradient accumulation
restarts at every epoch, and the last, shorter accumulation window of an epoch still makes an
update. So an epoch of B batches makes ceil(B / accumulation) updates, and accumulation beyond B
changes nothing — the recommendation caps it at B and says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from deepsynth.training.config import OptimizerConfig, TrainerConfig
from deepsynth.training.errors import ConfigError
from deepsynth.training.lora_config import get_lora_preset
from deepsynth.training.targets import count_trainable_params

MAX_SAMPLES = 10_000_000


@dataclass(frozen=True)
class Recipe:
    """The seed's training settings for one preset."""

    batch_size: int
    gradient_accumulation_steps: int
    num_epochs: int
    learning_rate: float
    weight_decay: float = 0.01
    # The seed asks for warmup over 10-15% of the steps; its absolute counts (50 warmup steps for a
    # run it believed had ~56 updates) came from a wrong update count, so the ratio is what we keep.
    warmup_ratio: float = 0.1
    scheduler_type: str = "cosine"


RECIPES: dict[str, Recipe] = {
    "tiny_data": Recipe(batch_size=1, gradient_accumulation_steps=16, num_epochs=300, learning_rate=5e-5),
    "balanced": Recipe(batch_size=1, gradient_accumulation_steps=16, num_epochs=200, learning_rate=2e-5),
    "high_capacity_moe": Recipe(batch_size=2, gradient_accumulation_steps=16, num_epochs=200, learning_rate=2e-5),
}


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


def preset_for(num_samples: int) -> str:
    """The seed's thresholds: < 10 tiny_data, < 50 balanced, else high_capacity_moe."""
    if num_samples < 10:
        return "tiny_data"
    if num_samples < 50:
        return "balanced"
    return "high_capacity_moe"


@dataclass
class Recommendation:
    """A preset, its LoRA and training settings, exact estimates and warnings."""

    num_samples: int
    model: str
    preset_name: str
    lora_config: dict[str, Any]
    training_config: dict[str, Any]
    estimates: dict[str, Any]
    trainable_params_by_group: dict[str, int]
    warnings: list[str] = field(default_factory=list)

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
        }

    def apply(self, config: TrainerConfig) -> TrainerConfig:
        """``config`` with this recommendation's preset and training settings applied."""
        data = config.with_preset(self.preset_name).to_dict()
        training = dict(self.training_config)
        data.update({k: training.pop(k) for k in ("batch_size", "num_epochs", "gradient_accumulation_steps")})
        data["optimizer"] = training
        return TrainerConfig.from_dict(data, hub_token=config.hub_token)


def recommend(
    num_samples: int, model: str | None = None, *, world_size: int = 1, calibrate: bool = False
) -> Recommendation:
    """Recommend a preset and settings for ``num_samples`` training samples on ``model``.

    ``model`` None is the embedded default. ``trainable_params`` is exact for that model. With
    ``calibrate``, a few real training steps are timed on this machine (loading the model's weights)
    and ``estimated_time_minutes`` is extrapolated from them; otherwise it is None (unknown).
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or not 0 < num_samples <= MAX_SAMPLES:
        raise ConfigError("num_samples", num_samples, f"an integer between 1 and {MAX_SAMPLES:,}")
    preset_name = preset_for(num_samples)
    recipe = RECIPES[preset_name]
    lora = get_lora_preset(preset_name)
    warnings: list[str] = []

    batches = math.ceil(math.ceil(num_samples / world_size) / recipe.batch_size)
    accumulation = min(recipe.gradient_accumulation_steps, batches)
    if accumulation < recipe.gradient_accumulation_steps:
        warnings.append(
            f"gradient accumulation set to {accumulation} instead of the preset's {recipe.gradient_accumulation_steps}: "
            f"an epoch has only {batches} batch(es) and accumulation does not span epochs, so each update "
            f"averages the whole epoch ({num_samples} samples)"
        )
    estimate = estimate_updates(num_samples, recipe.batch_size, accumulation, recipe.num_epochs, world_size)
    optimizer = OptimizerConfig(
        learning_rate=recipe.learning_rate,
        weight_decay=recipe.weight_decay,
        warmup_ratio=recipe.warmup_ratio,
        scheduler_type=recipe.scheduler_type,
    )
    warmup = optimizer.resolve_warmup(estimate.effective_updates)
    report = count_trainable_params(model, lora)
    warnings.extend(report.targets.warnings)
    if num_samples < 3:
        warnings.append(f"only {num_samples} sample(s): the adapter will memorise them; 3 or more are advised")
    if num_samples > 1000:
        warnings.append("presets are tuned for 3-50 samples; with this much data consider fewer epochs")

    training_config = {
        "batch_size": recipe.batch_size,
        "num_epochs": recipe.num_epochs,
        "gradient_accumulation_steps": accumulation,
        "learning_rate": recipe.learning_rate,
        "weight_decay": recipe.weight_decay,
        "warmup_steps": warmup,
        "scheduler_type": recipe.scheduler_type,
    }
    minutes = None
    if calibrate:
        from deepsynth.training.calibrate import measure_seconds_per_step

        seconds = measure_seconds_per_step(model, lora, recipe.batch_size)
        minutes = round(seconds * estimate.total_steps / 60, 2)
        warnings.append(
            f"time estimate measured here: {seconds:.3f} s per forward/backward step x {estimate.total_steps} "
            "steps; training only, evaluation and checkpoint writes come on top"
        )
    estimates = {
        "total_steps": estimate.total_steps,
        "effective_updates": estimate.effective_updates,
        "warmup_steps": warmup,
        "trainable_params": report.trainable,
        # Measured only by calibration (deepsynth recommend --calibrate); never guessed.
        "estimated_time_minutes": minutes,
    }
    return Recommendation(
        num_samples=num_samples,
        model=report.model,
        preset_name=preset_name,
        lora_config=lora.to_dict(),
        training_config=training_config,
        estimates=estimates,
        trainable_params_by_group=report.by_group,
        warnings=warnings,
    )
