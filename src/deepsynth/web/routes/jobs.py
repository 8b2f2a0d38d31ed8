"""Job routes: queue a training run, list, show, cancel, stream progress, download and push its adapter."""

from __future__ import annotations

import asyncio
import time
import uuid
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from dataclasses import fields as dataclass_fields
from typing import Any, get_type_hints

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, TypeAdapter, create_model
from starlette.background import BackgroundTask

from deepsynth.training.config import OptimizerConfig, TrainerConfig
from deepsynth.web.http import (
    COMMON_TARGETS, DATASET_ID_PATTERN, HUB_ID_PATTERN, SSE_EVENT, error, errors, import_libraries, links, sse,
    whole_numbers_as_ints,
)
from deepsynth.web.routes.trainer import CHOICES
from deepsynth.web.jobs import TERMINAL, JobError, JobManager, trainer_fields
from deepsynth.web.model_policy import ModelPolicy
from deepsynth.web.routes.datasets import jobs_of
from deepsynth.web.routes.lora import models_of

router = APIRouter(tags=["jobs"])


class PushRequest(BaseModel):
    """Body of ``POST /api/jobs/{id}/push``. The token is the server's (HF_TOKEN or `hf auth login`)."""

    model_config = ConfigDict(extra="forbid")
    # The pattern is the schema's promise (ids it generates are accepted); validate_hub_repo_id, a little
    # wider (e.g. 'org/my.model'), is what the server enforces.
    repo_id: StrictStr = Field(..., max_length=200, examples=["my-org/deepsynth-adapter"],
                               json_schema_extra={"pattern": HUB_ID_PATTERN})
    private: StrictBool = False


# What TrainerConfig.validate (and OptimizerConfig's, AdapterSettings') accept, as JSON Schema, so that
# the schema says what the server accepts (schemathesis' positive_data_acceptance, ST202, checks it;
# tests/web/test_web_openapi.py checks each bound against TrainerConfig itself).
_POSITIVE = {"minimum": 1}
_UNIT = {"minimum": 0, "exclusiveMaximum": 1}
_NAMES = {"minItems": 1, "items": {"type": "string", "enum": COMMON_TARGETS}}  # the server takes more
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


def _field_schema(name: str, hint: Any) -> dict[str, Any]:
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
            "properties": {name: _field_schema(name, hints[name]) for name in names},
            "allOf": [rule for rule in CROSS_FIELD_RULES if "warmup_steps" in rule["if"]["required"]]}


def _job_request_model() -> type[BaseModel]:
    """Documents every TrainerConfig field in OpenAPI; validation itself is TrainerConfig.from_dict's.

    Each field's JSON type comes from TrainerConfig's (or OptimizerConfig's) annotation, its choices
    and bounds from CHOICES and FIELD_RULES (what validation accepts); an unknown field is refused
    (422, naming it), which the schema says with ``additionalProperties: false``.
    """
    defaults = TrainerConfig().to_dict()
    hints = {**get_type_hints(OptimizerConfig), **get_type_hints(TrainerConfig)}
    attrs: dict[str, Any] = {
        "dataset_id": (StrictStr, Field(..., description="id from GET /api/datasets ('sample': the bundled set)",
                                        examples=["sample"], pattern=DATASET_ID_PATTERN)),
        "eval_dataset_id": (StrictStr | None, Field(None, description="held-out dataset id (optional)",
                                                    pattern=DATASET_ID_PATTERN)),
    }
    for name in trainer_fields():
        default = defaults.get(name, defaults["optimizer"].get(name) if name != "optimizer" else None)
        kind = _optimizer_schema(hints) if name == "optimizer" else _field_schema(name, hints[name])
        attrs[name] = (Any, Field(None, description=f"TrainerConfig.{name} (default {default!r})",
                                  json_schema_extra=kind))
    config = ConfigDict(extra="allow", protected_namespaces=(),
                        json_schema_extra={"additionalProperties": False, "allOf": CROSS_FIELD_RULES})
    return create_model("JobRequest", __config__=config, **attrs)


JobRequest = _job_request_model()


@router.get("/api/jobs", responses=errors())
def list_jobs(jobs: JobManager = Depends(jobs_of)) -> dict[str, Any]:
    return {"jobs": jobs.list()}


@router.post("/api/jobs", status_code=201, responses={**errors(400, 404, 422, 507), 201: {
                 "description": "the queued job", "links": links("job", "job_id", {
                     "GetJob": ("get", "/api/jobs/{job_id}"), "CancelJob": ("post", "/api/jobs/{job_id}/cancel"),
                     "ResumeJob": ("post", "/api/jobs/{job_id}/resume"),
                     "JobEvents": ("get", "/api/jobs/{job_id}/events"),
                     "JobArtifacts": ("get", "/api/jobs/{job_id}/artifacts"),
                     "PushJob": ("post", "/api/jobs/{job_id}/push")})}},
             summary="Queue a training run: any TrainerConfig field plus dataset_id [, eval_dataset_id]")
def create_job(body: JobRequest, jobs: JobManager = Depends(jobs_of),  # type: ignore[valid-type]
               models: ModelPolicy = Depends(models_of)) -> JSONResponse:
    request = whole_numbers_as_ints(body.model_dump(exclude_unset=True))
    if "model_name" in request:
        import_libraries()  # the model rule names the embedded model (deepsynth.models.tiny)
        request["model_name"] = models.check(request["model_name"], "model_name")
    return JSONResponse(jobs.submit(request), status_code=201)


@router.get("/api/jobs/{job_id}", responses=errors(404))
def get_job(job_id: str, jobs: JobManager = Depends(jobs_of)) -> dict[str, Any]:
    return jobs.detail(job_id)


@router.post("/api/jobs/{job_id}/cancel", responses=errors(404, 409))
def cancel_job(job_id: str, jobs: JobManager = Depends(jobs_of)) -> dict[str, Any]:
    return jobs.cancel(job_id)


@router.post("/api/jobs/{job_id}/resume", responses=errors(404, 409, 507),
             summary="Queue a failed or cancelled job again: it continues from its newest complete checkpoint")
def resume_job(job_id: str, jobs: JobManager = Depends(jobs_of)) -> dict[str, Any]:
    import_libraries()  # the checkpoint checks import torch and transformers: once, by one thread
    return jobs.resume(job_id)


async def _new_events(jobs: JobManager, job_id: str, offset: int, count: int, skip: int):
    """SSE lines of the progress events after ``offset``; returns (lines, offset, count)."""
    events, offset = await anyio.to_thread.run_sync(jobs.events, job_id, offset)
    lines = []
    for event in events:
        count += 1
        if count > skip:
            lines.append(sse("progress", event, count))
    return lines, offset, count


async def _stream(request: Request, jobs: JobManager, job_id: str, skip: int) -> AsyncIterator[str]:
    offset, count, last = 0, 0, None
    last_beat = time.monotonic()
    poll = min(jobs.poll_interval_s, 0.5)
    yield "retry: 2000\n\n"
    while True:
        lines, offset, count = await _new_events(jobs, job_id, offset, count, skip)
        for line in lines:
            yield line
        job = await anyio.to_thread.run_sync(jobs.get, job_id)
        snapshot = (job["status"], job["step"], job["phase"], job["total_updates"], job["error"])
        if snapshot != last:
            last = snapshot
            yield sse("status", job)
        if job["status"] in TERMINAL:
            lines, offset, count = await _new_events(jobs, job_id, offset, count, skip)
            for line in lines:
                yield line
            yield sse("end", job)
            return
        if time.monotonic() - last_beat > 15:
            last_beat = time.monotonic()
            yield ": keep-alive\n\n"
        if await request.is_disconnected():
            return
        await asyncio.sleep(poll)


@router.get("/api/jobs/{job_id}/events", summary="Live progress (server-sent events)",
            response_class=StreamingResponse, responses={
                200: {"description": "progress, status and end events",
                      "content": {"text/event-stream": {"schema": SSE_EVENT}}}, **errors(404)})
async def job_events(job_id: str, request: Request) -> StreamingResponse:
    jobs: JobManager = request.app.state.jobs
    jobs.get(job_id)  # 404 before the stream starts
    try:
        skip = int(request.headers.get("last-event-id", "0"))
    except ValueError:
        skip = 0
    return StreamingResponse(_stream(request, jobs, job_id, skip), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/api/jobs/{job_id}/artifacts", summary="Zip of the job's adapter folder",
            response_class=FileResponse, responses={
                200: {"description": "the adapter's publishable files",
                      "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}},
                **errors(404, 409, 507)})
def job_artifacts(job_id: str, request: Request) -> FileResponse:
    from deepsynth.publishing.hub import list_publishable_files

    folder, kind = request.app.state.jobs.adapter_dir(job_id)
    files, _ = list_publishable_files(folder)
    path = request.app.state.state_dir / "tmp" / f"artifacts-{uuid.uuid4().hex}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in files:
            archive.write(folder / name, name)
    suffix = "adapter" if kind == "final" else f"{folder.name}"
    return FileResponse(path, media_type="application/zip", filename=f"deepsynth-{job_id}-{suffix}.zip",
                        background=BackgroundTask(_unlink, path))


@router.post("/api/jobs/{job_id}/push", responses=errors(400, 404, 409, 422, 502),
             summary="Push the job's adapter to the Hub with the server's token (HF_TOKEN / hf auth login)")
def push_job(job_id: str, body: PushRequest, jobs: JobManager = Depends(jobs_of)) -> JSONResponse:
    from deepsynth.publishing import PushError, push_adapter
    from deepsynth.publishing.hub import validate_hub_repo_id

    validate_hub_repo_id(body.repo_id)  # ValueError → 422
    job = jobs.get(job_id)
    if job["status"] != "succeeded":
        raise JobError(f"job {job_id} is {job['status']}: only a finished (succeeded) job can be pushed", 409)
    folder, _ = jobs.adapter_dir(job_id)
    try:
        report = push_adapter(folder, body.repo_id, private=body.private)
    except PushError as exc:
        report = getattr(exc, "report", None)
        return error(502, str(exc), report=report.to_dict() if report is not None else None)
    return JSONResponse(report.to_dict())


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
