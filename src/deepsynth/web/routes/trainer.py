"""Trainer routes: the fields a job accepts (from TrainerConfig's field metadata), their defaults, the run plan."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from deepsynth.training.boundary import config_from_request
from deepsynth.training.config import TrainerConfig
from deepsynth.training.lora_config import LORA_PRESETS
from deepsynth.web.fields import form_fields
from deepsynth.web.http import DATASET_ID_PATTERN, errors, import_libraries, model_call, whole_numbers_as_ints
from deepsynth.web.jobs.requests import SERVER_FIELDS, dataset_path, refuse_server_fields
from deepsynth.web.routes.lora import MODEL_HELP, MODEL_SCHEMA

router = APIRouter(tags=["jobs"])


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
    return {"fields": form_fields(), "server_fields": dict(SERVER_FIELDS)}


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
    refuse_server_fields(body.overrides, prefix="overrides.")
    model = models.check(body.model, "model")
    overrides = whole_numbers_as_ints(body.overrides)
    paths = {"model_name": model, "data_path": str(dataset_path(store, body.dataset_id, "dataset_id")),
             "eval_data_path": str(dataset_path(store, body.eval_dataset_id, "eval_dataset_id"))
             if body.eval_dataset_id else None}
    config = config_from_request(overrides, preset=body.preset, server_fields=paths)
    label = store.name_of(body.dataset_id) or body.dataset_id
    result = model_call(model, plan_run, config, recommend_settings=body.recommend, keep=tuple(overrides),
                        origin="the web form", data_label=label).to_dict()
    for name in SERVER_FIELDS:  # the server's own paths are no business of the page
        result["config"].pop(name, None)
    return result
