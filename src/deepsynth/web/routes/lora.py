"""LoRA routes: the presets, the recommendation for a data size, exact trainable-parameter estimates."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from deepsynth.training.errors import ConfigError
from deepsynth.training.lora_config import FLAT_FIELDS, LORA_PRESETS
from deepsynth.web.fields import estimate_fields, estimate_request_model
from deepsynth.web.http import (
    HUB_ID_PATTERN, errors, import_libraries, model_call, whole_int, whole_numbers_as_ints,
)
from deepsynth.web.model_policy import ModelPolicy

router = APIRouter(tags=["lora"])
# The schema promises Hub ids (what every server accepts); the pattern is the schema's only: a server also
# takes its own --model names and state-folder paths, which ModelPolicy checks (400 when refused).
MODEL_SCHEMA = {"pattern": HUB_ID_PATTERN}
MAX_SAMPLES = 10_000_000  # deepsynth.training.recommend.MAX_SAMPLES (that module imports torch; a test compares)
MODEL_HELP = ("a Hub model id (org/name); the server also accepts its `--model` names and model folders in its "
              "state folder; null: the embedded model")


def models_of(request: Request) -> ModelPolicy:
    return request.app.state.models


class RecommendRequest(BaseModel):
    """Body of ``POST /api/lora/presets/recommended``."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    num_samples: whole_int(1, MAX_SAMPLES) = Field(..., description="number of training samples",  # type: ignore[valid-type]
                                      examples=[12])
    model: StrictStr | None = Field(None, max_length=500, description=MODEL_HELP, json_schema_extra=MODEL_SCHEMA)
    has_eval_data: StrictBool = Field(True, description="false: the samples are all the data (no eval dataset or "
                                      "'eval' split); some are held out for evaluation (see `evaluation`)")
    num_train_tokens: whole_int(1) | None = Field(  # type: ignore[valid-type]
        None, description="supervised target tokens of the samples; "
                                               "null: assume 90 per sample (said in the warnings)")
    learning_rates: Literal["evidence", "guide"] = Field(
        "evidence", description="'evidence': the learning rates our full-length runs support; 'guide': the design "
        "guide's (the recommendation's notes say which and why)")


EstimateRequest = estimate_request_model(
    (StrictStr | None, Field(None, max_length=500, description=MODEL_HELP, json_schema_extra=MODEL_SCHEMA)),
    (Literal[tuple(LORA_PRESETS)] | None, Field(None, description="start from this preset's settings")),  # type: ignore[valid-type]
)


@router.get("/api/lora/presets", responses=errors())
def presets() -> dict[str, Any]:
    from deepsynth.training.lora_config import LORA_PRESETS, PRESET_DESCRIPTIONS

    return {"presets": [
        {"name": name, "description": PRESET_DESCRIPTIONS.get(name, ""), "settings": preset.to_dict()}
        for name, preset in LORA_PRESETS.items()
    ]}


@router.post("/api/lora/presets/recommended", responses=errors(400, 404, 422),
             summary="recommend(num_samples, model, ...).to_dict(), as `deepsynth recommend --json`")
def recommended(body: RecommendRequest, models: ModelPolicy = Depends(models_of)) -> dict[str, Any]:
    import_libraries()
    from deepsynth.training.recommend import recommend

    model = models.check(body.model, "model")
    return model_call(model, recommend, body.num_samples, model=model,
                      has_eval_data=body.has_eval_data, num_train_tokens=body.num_train_tokens,
                      learning_rates=body.learning_rates).to_dict()


@router.post("/api/lora/estimate", summary="Exact trainable parameters of LoRA settings",
             responses=errors(400, 404, 422))
def estimate(body: EstimateRequest, models: ModelPolicy = Depends(models_of)) -> dict[str, Any]:
    import_libraries()
    from deepsynth.training.lora_config import adapter_settings
    from deepsynth.training.targets import count_trainable_params

    model = models.check(body.model, "model")
    lora = adapter_settings(body.preset, _estimate_settings(body.model_dump(exclude={"model", "preset"})))
    return model_call(model, count_trainable_params, model, lora).to_dict()


def _estimate_settings(values: dict[str, Any]) -> dict[str, Any]:
    """The LoRA settings an estimate request sets (null: the preset's), checked by kind as a job's are:
    ConfigError naming the request's field."""
    from deepsynth.training.config import check_value_kinds

    flat_names = estimate_fields()
    flat = whole_numbers_as_ints({flat_names[name]: value for name, value in values.items() if value is not None})
    try:
        check_value_kinds(dict(flat))
    except ConfigError as error:
        raise ConfigError(FLAT_FIELDS.get(error.field, error.field), error.value, error.expected) from None
    return {FLAT_FIELDS[name]: value for name, value in flat.items()}
