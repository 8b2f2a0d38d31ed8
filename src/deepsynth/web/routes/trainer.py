"""Trainer routes: the fields a job accepts (from TrainerConfig's field metadata), their defaults, the run plan."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from deepsynth.models.image_modes import all_mode_names
from deepsynth.training.config import (
    DTYPES, SCHEDULER_TYPES, TASKS, TrainerConfig, build_config, check_value_kinds, config_fields,
)
from deepsynth.training.errors import ConfigError
from deepsynth.training.lora_config import BIAS_CHOICES, LORA_PRESETS, QUANTIZATION_CHOICES
from deepsynth.web.http import DATASET_ID_PATTERN, whole_numbers_as_ints, errors, import_libraries, model_call
from deepsynth.web.routes.lora import MODEL_HELP, MODEL_SCHEMA
from deepsynth.web.jobs import RESUME_CHOICES, SERVER_FIELDS

router = APIRouter(tags=["jobs"])

# Fields whose values are one of the config's own constants (the form shows a select).
CHOICES: dict[str, tuple] = {
    "scheduler_type": SCHEDULER_TYPES, "dtype": DTYPES, "lora_bias": BIAS_CHOICES,
    "lora_quantization": QUANTIZATION_CHOICES, "preset": (None, *LORA_PRESETS), "resume_from_checkpoint": RESUME_CHOICES,
    # Every family's modes: which of them the chosen model has is the plan's to say (it names the model's modes).
    "task": TASKS, "image_mode": (None, *all_mode_names()),
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


class PlanRequest(BaseModel):
    """Body of ``POST /api/trainer/plan``: the data, and the settings so far (a preset, form edits)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    dataset_id: StrictStr = Field(..., description="id from GET /api/datasets ('sample': the bundled set)",
                                  examples=["sample"], pattern=DATASET_ID_PATTERN)
    eval_dataset_id: StrictStr | None = Field(None, description="held-out dataset id (optional)",
                                              pattern=DATASET_ID_PATTERN)
    model: StrictStr | None = Field(None, max_length=500, description=MODEL_HELP, json_schema_extra=MODEL_SCHEMA)
    preset: Literal[tuple(LORA_PRESETS)] | None = Field(  # type: ignore[valid-type]
        None, description="start from this preset's LoRA settings")
    overrides: dict[str, Any] = Field(default_factory=dict, description="TrainerConfig fields the user set "
                                      "(kept over the recommendation; optimizer fields flat)")
    recommend: StrictBool = Field(True, description="apply the recommendation for the data's size (`train --auto`)")


@router.post("/api/trainer/plan", responses=errors(400, 404, 422),
             summary="plan_run(...).to_dict() for a dataset: the settings, split, exact update count and warnings")
def plan(body: PlanRequest, request: Request) -> dict[str, Any]:
    import_libraries()
    from deepsynth.training.plan import plan_run

    store, models = request.app.state.store, request.app.state.models
    for name in sorted(set(body.overrides) & set(SERVER_FIELDS)):
        raise ConfigError(f"overrides.{name}", "<set>", SERVER_FIELDS[name])
    model = models.check(body.model, "model")
    overrides = whole_numbers_as_ints(body.overrides)
    check_value_kinds(dict(overrides))
    paths = {"data_path": str(store.data_path(body.dataset_id)),
             "eval_data_path": str(store.data_path(body.eval_dataset_id)) if body.eval_dataset_id else None}
    config = build_config(None, body.preset, {**overrides, "model_name": model, **paths})
    label = store.name_of(body.dataset_id) or body.dataset_id
    result = model_call(model, plan_run, config, recommend_settings=body.recommend, keep=tuple(overrides),
                        origin="the web form", data_label=label).to_dict()
    for name in SERVER_FIELDS:  # the server's own paths are no business of the page
        result["config"].pop(name, None)
    return result
