"""Dataset routes: list, upload (streamed, size-limited), show and delete uploaded data sets."""

from __future__ import annotations

import shutil
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from deepsynth.web.datasets_store import DatasetStore, human_size
from deepsynth.web.http import DATASET_ID_PATTERN, UploadTooLarge, error, errors, import_libraries, links
from deepsynth.web.jobs.store import JobError
from deepsynth.web.jobs.supervisor import JobManager

router = APIRouter(tags=["datasets"])
# The id form, in the schema only: the store checks it itself (400 naming dataset_id).
DatasetId = Annotated[str, Path(json_schema_extra={"pattern": DATASET_ID_PATTERN})]
# Slack over the file size for the multipart framing.
_FRAMING = 64 * 1024


def store_of(request: Request) -> DatasetStore:
    return request.app.state.store


def jobs_of(request: Request) -> JobManager:
    return request.app.state.jobs


@router.get("/api/datasets", responses=errors())
def list_datasets(store: DatasetStore = Depends(store_of)) -> dict[str, Any]:
    return {"datasets": [info.to_dict() for info in store.list()], "max_upload_bytes": store.max_upload_bytes}


def _limited(request: Request, limit: int) -> Request:
    """The request with a receive that stops reading once the body passes ``limit``."""
    received = 0
    receive = request.receive

    async def counting_receive():
        nonlocal received
        message = await receive()
        received += len(message.get("body", b""))
        if received > limit + _FRAMING:
            raise UploadTooLarge(f"file: the upload is larger than the limit of {human_size(limit)}")
        return message

    return Request(request.scope, receive=counting_receive)


async def _save(store: DatasetStore, upload: UploadFile, name: str | None):
    upload_dir = store.new_upload_dir()
    try:
        with open(upload_dir / "upload", "wb") as out:
            await anyio.to_thread.run_sync(shutil.copyfileobj, upload.file, out)
        if (upload_dir / "upload").stat().st_size > store.max_upload_bytes:
            raise UploadTooLarge(f"file: larger than the limit of {human_size(store.max_upload_bytes)}")
    except BaseException:
        shutil.rmtree(upload_dir, ignore_errors=True)
        raise
    await anyio.to_thread.run_sync(import_libraries)
    return await anyio.to_thread.run_sync(store.add, upload_dir, upload.filename or "", name)


@router.post(
    "/api/datasets", status_code=201,
    summary="Upload a JSONL/JSON/CSV/TSV/Parquet file, or a zip of one data file plus its images",
    responses={**errors(400, 422, 507), 201: {"description": "the dataset, validated", "links": links(
        "dataset", "dataset_id", {"GetDataset": ("get", "/api/datasets/{dataset_id}"),
                                  "DeleteDataset": ("delete", "/api/datasets/{dataset_id}")})}},
    openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {"file": {"type": "string", "format": "binary"},
                       "name": {"type": "string", "description": "display name (default: the file name)"}},
    }}}}},
)
async def upload_dataset(request: Request) -> JSONResponse:
    store: DatasetStore = request.app.state.store
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return error(400, "body: expected multipart/form-data with a 'file' field")
    limit = store.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + _FRAMING:
        return error(413, f"file: the upload is {human_size(int(declared))}; the limit is {human_size(limit)}")
    form = await _limited(request, limit).form(max_files=1, max_fields=5)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            return error(400, "file: expected a file field named 'file'")
        name = form.get("name")
        if name is not None and not isinstance(name, str):
            return error(400, "name: expected text")
        info = await _save(store, upload, name)
    finally:
        await form.close()
    return JSONResponse(info.to_dict(), status_code=201)


@router.get("/api/datasets/{dataset_id}", responses=errors(400, 404))
def get_dataset(dataset_id: DatasetId, store: DatasetStore = Depends(store_of)) -> dict[str, Any]:
    return store.get(dataset_id).to_dict()


@router.delete("/api/datasets/{dataset_id}", responses=errors(400, 404, 409))
def delete_dataset(dataset_id: DatasetId, store: DatasetStore = Depends(store_of),
                   jobs: JobManager = Depends(jobs_of)) -> dict[str, Any]:
    store.get(dataset_id)
    users = jobs.uses_dataset(dataset_id)
    if users:
        raise JobError(f"dataset_id: {dataset_id!r} is used by queued or running job(s) {', '.join(users)}", 409)
    return {"deleted": store.delete(dataset_id).to_dict()}
