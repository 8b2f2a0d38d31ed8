"""Trainer routes: the fields a job accepts, derived from TrainerConfig's field metadata, and their defaults."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from deepsynth.training.config import DTYPES, SCHEDULER_TYPES, TrainerConfig, config_fields
from deepsynth.training.lora_config import BIAS_CHOICES, LORA_PRESETS, QUANTIZATION_CHOICES
from deepsynth.web.http import errors
from deepsynth.web.jobs import RESUME_CHOICES, SERVER_FIELDS

router = APIRouter(tags=["jobs"])

# Fields whose values are one of the config's own constants (the form shows a select).
CHOICES: dict[str, tuple] = {
    "scheduler_type": SCHEDULER_TYPES, "dtype": DTYPES, "lora_bias": BIAS_CHOICES,
    "lora_quantization": QUANTIZATION_CHOICES, "preset": (None, *LORA_PRESETS), "resume_from_checkpoint": RESUME_CHOICES,
}
# Where the form places a field (layout only; every field is offered): the LoRA block, the training
# block, or "advanced" for the rest.
_TRAINING = {"batch_size", "num_epochs", "gradient_accumulation_steps", "max_train_samples", "max_eval_samples",
             "holdout_samples"}


def _group(name: str, nested_in: str | None) -> str:
    if name == "model_name" or name.startswith("lora_") or name in ("use_lora", "preset"):
        return "lora"
    return "training" if nested_in == "optimizer" or name in _TRAINING else "advanced"


def job_fields() -> list[dict[str, Any]]:
    """Every field a job request (and so the web form) sets, from TrainerConfig's metadata."""
    return [
        {"name": info.name, "kind": info.kind, "optional": info.optional,
         "default": list(info.default) if isinstance(info.default, tuple) else info.default,
         "help": info.help, "choices": list(CHOICES[info.name]) if info.name in CHOICES else None,
         "group": _group(info.name, info.nested_in), "nested_in": info.nested_in}
        for info in config_fields() if info.name not in SERVER_FIELDS
    ]


@router.get("/api/trainer/defaults", summary="TrainerConfig defaults (the fields a job accepts)",
            responses=errors())
def trainer_defaults() -> dict[str, Any]:
    defaults = TrainerConfig().to_dict()
    for name in SERVER_FIELDS:
        defaults.pop(name, None)
    return {"defaults": defaults, "server_fields": sorted(SERVER_FIELDS)}


@router.get("/api/trainer/fields", responses=errors(),
            summary="Every field a job accepts: name, kind, default, help, choices (the web form is built from it)")
def trainer_fields() -> dict[str, Any]:
    return {"fields": job_fields(), "server_fields": dict(SERVER_FIELDS)}
