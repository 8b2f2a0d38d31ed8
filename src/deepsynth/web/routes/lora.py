"""LoRA routes: the presets, the recommendation for a data size, exact trainable-parameter estimates."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, StringConstraints, WithJsonSchema

from deepsynth.training.lora_config import BIAS_CHOICES, LORA_PRESETS, QUANTIZATION_CHOICES

from deepsynth.web.http import COMMON_TARGETS, HUB_ID_PATTERN, errors, import_libraries, model_call, whole_int
from deepsynth.web.model_policy import ModelPolicy

router = APIRouter(tags=["lora"])
# The schema promises Hub ids (what every server accepts); the pattern is the schema's only: a server also
# takes its own --model names and state-folder paths, which ModelPolicy checks (400 when refused).
MODEL_SCHEMA = {"pattern": HUB_ID_PATTERN}
MAX_SAMPLES = 10_000_000  # deepsynth.training.recommend.MAX_SAMPLES (that module imports torch; a test compares)
# The schema's names are those every model has; the server also takes a model's own (its router...).
TARGET_NAME = WithJsonSchema({"type": "string", "enum": COMMON_TARGETS})
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


def _nullable_number(**bounds: float) -> dict[str, Any]:
    return {"anyOf": [{"type": "number", **bounds}, {"type": "null"}], "default": None}


class EstimateRequest(BaseModel):
    """Body of ``POST /api/lora/estimate``: LoRA settings (unset ones come from ``preset`` or AdapterSettings)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: StrictStr | None = Field(None, max_length=500, description=MODEL_HELP, json_schema_extra=MODEL_SCHEMA)
    preset: Literal[tuple(LORA_PRESETS)] | None = Field(None, description="start from this preset's settings")  # type: ignore[valid-type]
    rank: whole_int(1) | None = None  # type: ignore[valid-type]
    alpha: Annotated[StrictInt | StrictFloat | None, WithJsonSchema(_nullable_number(exclusiveMinimum=0))] = Field(
        None, gt=0)
    dropout: Annotated[StrictInt | StrictFloat | None, WithJsonSchema(_nullable_number(minimum=0, exclusiveMaximum=1))] = (
        Field(None, ge=0, lt=1))
    target_modules: list[Annotated[StrictStr, StringConstraints(pattern=r"\S"), TARGET_NAME]] | None = Field(
        None, min_length=1)
    modules_to_save: list[Annotated[StrictStr, StringConstraints(pattern=r"\S"), TARGET_NAME]] | None = None
    include_routed_experts: StrictBool | None = None
    bias: Literal[BIAS_CHOICES] | None = None  # type: ignore[valid-type]
    enabled: StrictBool | None = None
    quantization: Literal[tuple(q for q in QUANTIZATION_CHOICES if q)] | None = None  # type: ignore[valid-type]


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
    lora = adapter_settings(body.preset, body.model_dump(exclude_none=True, exclude={"model", "preset"}))
    return model_call(model, count_trainable_params, model, lora).to_dict()
