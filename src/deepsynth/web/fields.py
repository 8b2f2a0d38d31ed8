"""The web's field models, all generated from the boundary's one field list (``request_fields()``).

From it come: the job request (``POST /api/jobs``, and the plan's ``overrides``), the estimate request
(``POST /api/lora/estimate``: the LoRA fields under their AdapterSettings names), and the form's
fields (``GET /api/trainer/fields``, from which app.js builds its inputs and its LoRA name map).
Each field's JSON type comes from TrainerConfig's (or OptimizerConfig's) annotation, its choices and
bounds from :data:`CHOICES` and :data:`FIELD_RULES`: what validation accepts, so that the OpenAPI
schema says what the server takes (schemathesis' ST202 checks it; tests/web/test_web_openapi.py
checks each bound against TrainerConfig itself).
"""

from __future__ import annotations

from dataclasses import fields as dataclass_fields
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, StrictStr, TypeAdapter, create_model

from deepsynth.models.image_modes import all_mode_names
from deepsynth.training.boundary import lora_fields, request_fields
from deepsynth.training.config import DTYPES, SCHEDULER_TYPES, TASKS, OptimizerConfig, TrainerConfig
from deepsynth.training.lora_config import BIAS_CHOICES, LORA_PRESETS, QUANTIZATION_CHOICES
from deepsynth.web.http import COMMON_TARGETS, DATASET_ID_PATTERN, HUB_ID_PATTERN
from deepsynth.web.jobs.requests import RESUME_CHOICES, SERVER_FIELDS

# Fields whose values are one of the config's own constants (the form shows a select).
CHOICES: dict[str, tuple] = {
    "scheduler_type": SCHEDULER_TYPES, "dtype": DTYPES, "lora_bias": BIAS_CHOICES,
    "lora_quantization": QUANTIZATION_CHOICES, "preset": (None, *LORA_PRESETS), "resume_from_checkpoint": RESUME_CHOICES,
    # Every family's modes: which of them the chosen model has is the plan's to say (it names the model's modes).
    "task": TASKS, "image_mode": (None, *all_mode_names()),
}

_POSITIVE = {"minimum": 1}
_UNIT = {"minimum": 0, "exclusiveMaximum": 1}
_NAMES = {"minItems": 1, "items": {"type": "string", "enum": COMMON_TARGETS}}  # the server takes more
# What TrainerConfig.validate (and OptimizerConfig's, AdapterSettings') accept, as JSON Schema.
FIELD_RULES: dict[str, dict[str, Any]] = {
    **dict.fromkeys(("batch_size", "num_epochs", "gradient_accumulation_steps", "save_total_limit", "max_new_tokens",
                     "expert_dropout_min_keep", "lora_rank", "max_train_samples", "max_eval_samples",
                     "holdout_samples", "max_length", "checkpoint_every_updates", "eval_every_updates",
                     "early_stopping_patience"), _POSITIVE),
    **dict.fromkeys(("gate_dropout_rate", "expert_dropout_rate", "lora_dropout", "warmup_ratio"), _UNIT),
    **dict.fromkeys(("router_aux_loss_coef", "no_repeat_ngram_size", "weight_decay", "warmup_steps"), {"minimum": 0}),
    "learning_rate": {"exclusiveMinimum": 0}, "lora_alpha": {"exclusiveMinimum": 0},
    "lora_target_modules": _NAMES, "lora_modules_to_save": {"items": _NAMES["items"]},
    # The schema names Hub ids (the embedded deepsynth/tiny-ocr2 is one); the server also takes its --model
    # names and folders under its state folder.
    "model_name": {"pattern": HUB_ID_PATTERN},
    "hub_model_id": {"pattern": HUB_ID_PATTERN},
}
# Nullable by type, refused as null: no LoRA target at all (LoRA on, nothing to save) is an error.
NOT_NULL = {"lora_target_modules"}


def _present(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": [name], "properties": {name: schema}}


# Rules between fields (TrainerConfig.validate, OptimizerConfig.validate): "if A is set, B must be".
CROSS_FIELD_RULES = [
    {"if": _present("early_stopping_patience", {"type": "integer"}),
     "then": _present("eval_every_updates", {"type": "integer"})},
    {"if": _present("push_to_hub", {"const": True}), "then": _present("hub_model_id", {"type": "string"})},
    {"if": _present("lora_quantization", {"type": "string"}), "then": {"properties": {"use_lora": {"const": True}}}},
    {"if": _present("warmup_steps", {"type": "integer"}), "then": {"properties": {"warmup_ratio": {"type": "null"}}}},
]


def _hints() -> dict[str, Any]:
    return {**get_type_hints(OptimizerConfig), **get_type_hints(TrainerConfig)}


def field_schema(name: str, hint: Any) -> dict[str, Any]:
    """The JSON type of one field (from its annotation), its choices and its bounds."""
    kind = TypeAdapter(hint).json_schema()
    if name in CHOICES:
        kind = {"enum": list(CHOICES[name])}
    if name in NOT_NULL and "anyOf" in kind:  # null is its type's, but validation refuses it (see NOT_NULL)
        kind = next(option for option in kind["anyOf"] if option.get("type") != "null")
    rules = FIELD_RULES.get(name)
    if rules is None:
        return kind
    if "anyOf" in kind:  # a nullable field: the bounds apply to its non-null kind
        return {"anyOf": [{**option, **rules} if option.get("type") != "null" else option for option in kind["anyOf"]]}
    return {**kind, **rules}


def _optimizer_schema(hints: dict[str, Any]) -> dict[str, Any]:
    names = [f.name for f in dataclass_fields(OptimizerConfig)]
    return {"type": "object", "additionalProperties": False,
            "properties": {name: field_schema(name, hints[name]) for name in names},
            "allOf": [rule for rule in CROSS_FIELD_RULES if "warmup_steps" in rule["if"]["required"]]}


def _dataset_ids() -> dict[str, Any]:
    return {
        "dataset_id": (StrictStr, Field(..., description="id from GET /api/datasets ('sample': the bundled set)",
                                        examples=["sample"], pattern=DATASET_ID_PATTERN)),
        "eval_dataset_id": (StrictStr | None, Field(None, description="held-out dataset id (optional)",
                                                    pattern=DATASET_ID_PATTERN)),
    }


def job_request_model() -> type[BaseModel]:
    """``POST /api/jobs``'s body: every field a client sets (optimizer fields flat, or a whole ``optimizer``).

    Documents each field in OpenAPI; validation itself is the boundary's (config_from_request), so
    an unknown field is refused (422, naming it), which the schema says with ``additionalProperties``.
    """
    hints = _hints()
    attrs: dict[str, Any] = _dataset_ids()
    for field in request_fields(exclude=SERVER_FIELDS):
        attrs[field.name] = (Any, Field(None, description=f"TrainerConfig.{field.name} (default {field.info.default!r})",
                                        json_schema_extra=field_schema(field.name, hints[field.name])))
    attrs["optimizer"] = (Any, Field(None, description="OptimizerConfig fields as one object (flat ones go over it)",
                                     json_schema_extra=_optimizer_schema(hints)))
    config = ConfigDict(extra="allow", protected_namespaces=(),
                        json_schema_extra={"additionalProperties": False, "allOf": CROSS_FIELD_RULES})
    return create_model("JobRequest", __config__=config, **attrs)


def estimate_fields() -> dict[str, str]:
    """The estimate request's field names (AdapterSettings') → the form's (TrainerConfig's flat LoRA names)."""
    return {field.lora_name: field.name for field in lora_fields()}


def estimate_request_model(model_field: tuple, preset_field: tuple) -> type[BaseModel]:
    """``POST /api/lora/estimate``'s body: the model, a preset, and every LoRA field under its AdapterSettings
    name (``rank``, ``enabled``, ``quantization``…), each nullable: null or unset takes the preset's value."""
    hints = _hints()
    attrs: dict[str, Any] = {"model": model_field, "preset": preset_field}
    for field in lora_fields():
        kind = field_schema(field.name, hints[field.name])
        nullable = kind if "anyOf" in kind else {"anyOf": [kind, {"type": "null"}]}
        attrs[field.lora_name] = (Any, Field(None, description=f"TrainerConfig.{field.name}; null: the preset's",
                                             json_schema_extra=nullable))
    return create_model("EstimateRequest", __config__=ConfigDict(extra="forbid", protected_namespaces=()), **attrs)


# Where the form places a field (layout only; every field is offered): the LoRA block, the training
# block, or "advanced" for the rest.
_TRAINING = {"batch_size", "num_epochs", "gradient_accumulation_steps", "max_train_samples", "max_eval_samples",
             "holdout_samples"}


def _group(name: str, nested_in: str | None, lora_name: str | None) -> str:
    if name in ("model_name", "preset") or lora_name is not None:
        return "lora"
    return "training" if nested_in == "optimizer" or name in _TRAINING else "advanced"


def form_fields() -> list[dict[str, Any]]:
    """Every field a job request (and so the web form) sets: name, kind, default, help, choices, group, and
    ``lora_name``, the field's name in a preset's settings and in the estimate request (app.js maps by it)."""
    return [
        {"name": field.name, "kind": field.info.kind, "optional": field.info.optional,
         "default": list(field.info.default) if isinstance(field.info.default, tuple) else field.info.default,
         "help": field.info.help, "choices": list(CHOICES[field.name]) if field.name in CHOICES else None,
         "group": _group(field.name, field.info.nested_in, field.lora_name), "nested_in": field.info.nested_in,
         "lora_name": field.lora_name}
        for field in request_fields(exclude=SERVER_FIELDS)
    ]
