"""Job routes: queue a training run, list, show, cancel, stream progress, download and push its adapter."""

from __future__ import annotations

import asyncio
import time
import uuid
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr
from starlette.background import BackgroundTask

from deepsynth.training.boundary import describe_error
from deepsynth.web.fields import job_request_model
from deepsynth.web.http import (
    HUB_ID_PATTERN, SSE_EVENT, error, errors, import_libraries, links, sse, whole_numbers_as_ints,
)
from deepsynth.web.jobs.store import TERMINAL, JobError
from deepsynth.web.jobs.supervisor import JobManager
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


JobRequest = job_request_model()


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
    except PushError as exc:  # described as the CLI describes it, with what was uploaded and what failed
        described = describe_error(exc, paths=False)
        report = getattr(exc, "report", None)
        return error(described.http_status, described.message, report=report.to_dict() if report is not None else None)
    return JSONResponse(report.to_dict())


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
