"""The DeepSynth web app: a JSON API over the library plus a one-page UI (``static/``).

Every route calls the same library function as the CLI (presets, ``recommend``,
``count_trainable_params``, ``load_documents``, ``TrainerConfig.from_dict``, ``push_adapter``):
nothing is decided twice. Errors are JSON ``{"error": "<message naming the field>"}`` with a 4xx
status for anything a client sends; the Hub token is never read from or returned to a client.

Security: with an access token (``DEEPSYNTH_ACCESS_TOKEN``), every request must carry it as
``Authorization: Bearer <token>`` or in the session cookie set by ``POST /api/session`` (or by
opening ``/?token=<token>`` once). Requests that change state must come from the app's own origin
(a cross-site form post is refused), and ``allowed_hosts`` (set by :func:`deepsynth.web.server.serve`
on loopback) defeats DNS rebinding.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import shutil
import threading
import time
import uuid
import zipfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, create_model
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from deepsynth.training.config import TrainerConfig
from deepsynth.training.errors import ConfigError
from deepsynth.web.datasets_store import (
    DatasetNotFound,
    DatasetRequestError,
    DatasetStore,
    human_size,
)
from deepsynth.web.jobs import SERVER_FIELDS, TERMINAL, CommandBuilder, JobError, JobManager, train_command, trainer_fields
from deepsynth.web.settings import ACCESS_TOKEN_ENV, DEFAULT_MAX_UPLOAD_BYTES  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
SESSION_COOKIE = "deepsynth_session"
MAX_JSON_BODY = 1024 * 1024
_UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# Model building (meta device) and recommendation share torch state: one at a time.
_MODEL_LOCK = threading.Lock()


class UploadTooLarge(Exception):
    pass


# --------------------------------------------------------------------------------------- requests


class RecommendRequest(BaseModel):
    """Body of ``POST /api/lora/presets/recommended``."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    num_samples: StrictInt = Field(..., description="number of training samples", examples=[12])
    model: StrictStr | None = Field(None, max_length=500, description="model name or directory; null: the embedded model")
    has_eval_data: StrictBool = Field(True, description="false: the samples are all the data (no eval dataset or "
                                      "'eval' split); some are held out for evaluation (see `evaluation`)")
    num_train_tokens: StrictInt | None = Field(None, description="supervised target tokens of the samples; "
                                               "null: assume 90 per sample (said in the warnings)")


class EstimateRequest(BaseModel):
    """Body of ``POST /api/lora/estimate``: LoRA settings (unset ones come from ``preset`` or AdapterSettings)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: StrictStr | None = Field(None, max_length=500, description="model name or directory; null: the embedded model")
    preset: StrictStr | None = Field(None, description="start from this preset's settings")
    rank: StrictInt | None = None
    alpha: StrictInt | StrictFloat | None = None
    dropout: StrictInt | StrictFloat | None = None
    target_modules: list[StrictStr] | None = None
    modules_to_save: list[StrictStr] | None = None
    include_routed_experts: StrictBool | None = None
    bias: StrictStr | None = None
    enabled: StrictBool | None = None
    quantization: StrictStr | None = None


class PushRequest(BaseModel):
    """Body of ``POST /api/jobs/{id}/push``. The token is the server's (HF_TOKEN or `hf auth login`)."""

    model_config = ConfigDict(extra="forbid")
    repo_id: StrictStr = Field(..., max_length=200, examples=["my-org/deepsynth-adapter"])
    private: StrictBool = False


def _job_request_model() -> type[BaseModel]:
    """Documents every TrainerConfig field in OpenAPI; validation itself is TrainerConfig.from_dict's."""
    defaults = TrainerConfig().to_dict()
    attrs: dict[str, Any] = {
        "dataset_id": (StrictStr, Field(..., description="id from GET /api/datasets ('sample': the bundled set)")),
        "eval_dataset_id": (StrictStr | None, Field(None, description="held-out dataset id (optional)")),
    }
    for name in trainer_fields():
        default = defaults.get(name, defaults["optimizer"].get(name) if name != "optimizer" else None)
        attrs[name] = (Any, Field(None, description=f"TrainerConfig.{name} (default {default!r})"))
    return create_model("JobRequest", __config__=ConfigDict(extra="allow", protected_namespaces=()), **attrs)


JobRequest = _job_request_model()


# --------------------------------------------------------------------------------------- helpers


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _validation_message(errors: Sequence[dict[str, Any]]) -> tuple[int, str, list[dict[str, Any]]]:
    cleaned = []
    status = 422
    for error in errors:
        loc = [str(part) for part in error.get("loc", ()) if part not in ("body",)]
        if error.get("type") == "json_invalid":
            status = 400
            cleaned.append({"field": "body", "message": f"the request body is not valid JSON ({error.get('msg')})"})
            continue
        field = ".".join(loc) or "body"
        cleaned.append({"field": field, "message": str(error.get("msg", "invalid"))})
    message = "; ".join(f"{e['field']}: {e['message']}" for e in cleaned) or "invalid request"
    return status, message, cleaned


def _model_call(model_name: str | None, function, /, *args, **kwargs):
    """Run a model-building library call; an unusable model name is the client's error (422)."""
    with _MODEL_LOCK:
        try:
            return function(*args, **kwargs)
        except OSError as error:
            raise ConfigError("model", model_name, f"a model name or local directory ({error.strerror or error})") from None


def _sse(event: str, data: Any, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _login_page() -> str:
    return """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>DeepSynth — sign in</title>
<link rel="stylesheet" href="/static/style.css"></head><body><main class="login">
<h1>DeepSynth</h1><p>This server requires its access token (the value of DEEPSYNTH_ACCESS_TOKEN).</p>
<form id="login-form"><input id="access-token" type="password" autocomplete="current-password" placeholder="access token">
<button id="login-button" type="submit">Sign in</button></form><p id="login-error" class="error"></p>
<script src="/static/login.js"></script></main></body></html>"""


# --------------------------------------------------------------------------------------- the app


def create_app(
    state_dir: Path,
    *,
    access_token: str | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_concurrent_jobs: int = 1,
    cancel_grace_s: float = 30.0,
    poll_interval_s: float = 0.5,
    job_command: CommandBuilder = train_command,
    allowed_hosts: Sequence[str] | None = None,
    stop_jobs_on_shutdown: bool = False,
) -> FastAPI:
    """Build the app over ``state_dir`` (datasets, jobs, jobs.sqlite3).

    The job supervisor starts with the app's lifespan (uvicorn, or ``with TestClient(app)``).
    """
    state_dir = Path(state_dir).expanduser()
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "tmp").mkdir(exist_ok=True)
    store = DatasetStore(state_dir, max_upload_bytes=max_upload_bytes)
    jobs = JobManager(state_dir, store, max_concurrent_jobs=max_concurrent_jobs, cancel_grace_s=cancel_grace_s,
                      poll_interval_s=poll_interval_s, command=job_command)
    hosts = {h.lower().strip("[]") for h in allowed_hosts} if allowed_hosts is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        jobs.start()
        try:
            yield
        finally:
            running = jobs.list(status="running")
            if running and not stop_jobs_on_shutdown:
                logger.warning("%d training job(s) still running; the next server on %s picks them up",
                               len(running), state_dir)
            await anyio.to_thread.run_sync(lambda: jobs.close(stop_running=stop_jobs_on_shutdown))

    app = FastAPI(
        title="DeepSynth",
        summary="LoRA fine-tuning of DeepSeek-OCR-family MoE models on a handful of documents",
        version=_version(),
        lifespan=lifespan,
        # The interactive docs pages load their scripts from a CDN; the schema itself is served.
        docs_url=None,
        redoc_url=None,
    )
    app.state.store = store
    app.state.jobs = jobs
    app.state.state_dir = state_dir

    app.add_middleware(_Guard, access_token=access_token, hosts=hosts)

    def _authorized(request: Request) -> bool:
        return _token_ok(request.headers.get("authorization"), request.cookies.get(SESSION_COOKIE), access_token)

    def _set_session(response: Response) -> None:
        _set_session_cookie(response, access_token)

    # --- error handlers ----------------------------------------------------------------------

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError):
        status, message, details = _validation_message(exc.errors())
        return _error(status, message, details=details)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(DatasetRequestError)
    async def on_dataset_request(request: Request, exc: DatasetRequestError):
        return _error(exc.status_code, str(exc))

    @app.exception_handler(DatasetNotFound)
    async def on_dataset_missing(request: Request, exc: DatasetNotFound):
        return _error(404, str(exc))

    @app.exception_handler(JobError)
    async def on_job_error(request: Request, exc: JobError):
        return _error(exc.status_code, str(exc))

    @app.exception_handler(UploadTooLarge)
    async def on_too_large(request: Request, exc: UploadTooLarge):
        return _error(413, str(exc))

    @app.exception_handler(ValueError)  # ConfigError, DataError and the library's other ValueErrors
    async def on_value_error(request: Request, exc: ValueError):
        return _error(422, str(exc))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception):
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")

    # --- pages -------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/api/health", tags=["server"])
    async def health() -> dict[str, Any]:
        return {"ok": True, "version": _version(), "auth_required": bool(access_token)}

    @app.post("/api/session", tags=["server"], summary="Exchange the access token for a session cookie")
    async def session(request: Request) -> Response:
        if not access_token:
            return JSONResponse({"ok": True, "auth_required": False})
        if not _authorized(request):
            return _error(401, "access token: wrong or missing (send it as 'Authorization: Bearer <token>')")
        response = JSONResponse({"ok": True})
        _set_session(response)
        return response

    @app.get("/api/hub", tags=["server"], summary="Whether a Hub token is configured (never the token)")
    def hub_status() -> dict[str, Any]:
        from deepsynth.publishing.hub import resolve_token

        source = "environment" if os.environ.get("HF_TOKEN") else ("login" if resolve_token() else None)
        return {"token_available": source is not None, "source": source}

    # --- LoRA presets, recommendation, estimates ----------------------------------------------

    @app.get("/api/lora/presets", tags=["lora"])
    def presets() -> dict[str, Any]:
        from deepsynth.training.lora_config import LORA_PRESETS, PRESET_DESCRIPTIONS

        return {"presets": [
            {"name": name, "description": PRESET_DESCRIPTIONS.get(name, ""), "settings": preset.to_dict()}
            for name, preset in LORA_PRESETS.items()
        ]}

    @app.post("/api/lora/presets/recommended", tags=["lora"],
              summary="recommend(num_samples, model, ...).to_dict(), as `deepsynth recommend --json`")
    def recommended(body: RecommendRequest) -> dict[str, Any]:
        from deepsynth.training.recommend import recommend

        return _model_call(body.model, recommend, body.num_samples, model=body.model,
                           has_eval_data=body.has_eval_data, num_train_tokens=body.num_train_tokens).to_dict()

    @app.post("/api/lora/estimate", tags=["lora"], summary="Exact trainable parameters of LoRA settings")
    def estimate(body: EstimateRequest) -> dict[str, Any]:
        from deepsynth.training.lora_config import adapter_settings
        from deepsynth.training.targets import count_trainable_params

        lora = adapter_settings(body.preset, body.model_dump(exclude_none=True, exclude={"model", "preset"}))
        return _model_call(body.model, count_trainable_params, body.model, lora).to_dict()

    @app.get("/api/trainer/defaults", tags=["jobs"], summary="TrainerConfig defaults (the fields a job accepts)")
    def trainer_defaults() -> dict[str, Any]:
        defaults = TrainerConfig().to_dict()
        for name in SERVER_FIELDS:
            defaults.pop(name, None)
        return {"defaults": defaults, "server_fields": sorted(SERVER_FIELDS)}

    # --- datasets ----------------------------------------------------------------------------

    @app.get("/api/datasets", tags=["datasets"])
    def list_datasets() -> dict[str, Any]:
        return {"datasets": [info.to_dict() for info in store.list()],
                "max_upload_bytes": store.max_upload_bytes}

    @app.post(
        "/api/datasets", tags=["datasets"], status_code=201,
        summary="Upload a JSONL/JSON/CSV/TSV/Parquet file, or a zip of one data file plus its images",
        openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary"},
                           "name": {"type": "string", "description": "display name (default: the file name)"}},
        }}}}},
    )
    async def upload_dataset(request: Request) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            return _error(400, "body: expected multipart/form-data with a 'file' field")
        limit = store.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
            return _error(413, f"file: the upload is {human_size(int(declared))}; the limit is {human_size(limit)}")
        received = 0
        receive = request.receive

        async def counting_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit + 64 * 1024:
                raise UploadTooLarge(f"file: the upload is larger than the limit of {human_size(limit)}")
            return message

        limited = Request(request.scope, receive=counting_receive)
        form = await limited.form(max_files=1, max_fields=5)
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                return _error(400, "file: expected a file field named 'file'")
            name = form.get("name")
            if name is not None and not isinstance(name, str):
                return _error(400, "name: expected text")
            upload_dir = store.new_upload_dir()
            try:
                with open(upload_dir / "upload", "wb") as out:
                    await anyio.to_thread.run_sync(shutil.copyfileobj, upload.file, out)
                if (upload_dir / "upload").stat().st_size > limit:
                    raise UploadTooLarge(f"file: larger than the limit of {human_size(limit)}")
            except BaseException:
                shutil.rmtree(upload_dir, ignore_errors=True)
                raise
            info = await anyio.to_thread.run_sync(lambda: store.add(upload_dir, upload.filename or "", name))
        finally:
            await form.close()
        return JSONResponse(info.to_dict(), status_code=201)

    @app.get("/api/datasets/{dataset_id}", tags=["datasets"])
    def get_dataset(dataset_id: str) -> dict[str, Any]:
        return store.get(dataset_id).to_dict()

    @app.delete("/api/datasets/{dataset_id}", tags=["datasets"])
    def delete_dataset(dataset_id: str) -> dict[str, Any]:
        store.get(dataset_id)
        users = jobs.uses_dataset(dataset_id)
        if users:
            raise JobError(f"dataset_id: {dataset_id!r} is used by queued or running job(s) {', '.join(users)}", 409)
        return {"deleted": store.delete(dataset_id).to_dict()}

    # --- jobs --------------------------------------------------------------------------------

    @app.get("/api/jobs", tags=["jobs"])
    def list_jobs() -> dict[str, Any]:
        return {"jobs": jobs.list()}

    @app.post("/api/jobs", tags=["jobs"], status_code=201,
              summary="Queue a training run: any TrainerConfig field plus dataset_id [, eval_dataset_id]")
    def create_job(body: JobRequest) -> JSONResponse:  # type: ignore[valid-type]
        request = body.model_dump(exclude_unset=True)
        return JSONResponse(jobs.submit(request), status_code=201)

    @app.get("/api/jobs/{job_id}", tags=["jobs"])
    def get_job(job_id: str) -> dict[str, Any]:
        return jobs.detail(job_id)

    @app.post("/api/jobs/{job_id}/cancel", tags=["jobs"])
    def cancel_job(job_id: str) -> dict[str, Any]:
        return jobs.cancel(job_id)

    @app.get("/api/jobs/{job_id}/events", tags=["jobs"], summary="Live progress (server-sent events)",
             response_class=StreamingResponse)
    async def job_events(job_id: str, request: Request) -> StreamingResponse:
        jobs.get(job_id)  # 404 before the stream starts
        try:
            skip = int(request.headers.get("last-event-id", "0"))
        except ValueError:
            skip = 0

        async def stream() -> AsyncIterator[str]:
            offset, count, last = 0, 0, None
            last_beat = time.monotonic()
            yield "retry: 2000\n\n"
            while True:
                events, offset = await anyio.to_thread.run_sync(jobs.events, job_id, offset)
                for event in events:
                    count += 1
                    if count > skip:
                        yield _sse("progress", event, count)
                job = await anyio.to_thread.run_sync(jobs.get, job_id)
                snapshot = (job["status"], job["step"], job["phase"], job["total_updates"], job["error"])
                if snapshot != last:
                    last = snapshot
                    yield _sse("status", job)
                if job["status"] in TERMINAL:
                    events, offset = await anyio.to_thread.run_sync(jobs.events, job_id, offset)
                    for event in events:
                        count += 1
                        if count > skip:
                            yield _sse("progress", event, count)
                    yield _sse("end", job)
                    return
                if time.monotonic() - last_beat > 15:
                    last_beat = time.monotonic()
                    yield ": keep-alive\n\n"
                if await request.is_disconnected():
                    return
                await asyncio.sleep(min(poll_interval_s, 0.5))

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/api/jobs/{job_id}/artifacts", tags=["jobs"], summary="Zip of the job's adapter folder",
             response_class=FileResponse)
    def job_artifacts(job_id: str) -> FileResponse:
        from deepsynth.publishing.hub import list_publishable_files

        folder, kind = jobs.adapter_dir(job_id)
        files, _ = list_publishable_files(folder)
        path = state_dir / "tmp" / f"artifacts-{uuid.uuid4().hex}.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for name in files:
                archive.write(folder / name, name)
        suffix = "adapter" if kind == "final" else f"{folder.name}"
        return FileResponse(path, media_type="application/zip", filename=f"deepsynth-{job_id}-{suffix}.zip",
                            background=BackgroundTask(_unlink, path))

    @app.post("/api/jobs/{job_id}/push", tags=["jobs"],
              summary="Push the job's adapter to the Hub with the server's token (HF_TOKEN / hf auth login)")
    def push_job(job_id: str, body: PushRequest) -> JSONResponse:
        from deepsynth.publishing import PushError, push_adapter
        from deepsynth.publishing.hub import validate_hub_repo_id

        validate_hub_repo_id(body.repo_id)  # ValueError → 422
        job = jobs.get(job_id)
        if job["status"] != "succeeded":
            raise JobError(f"job {job_id} is {job['status']}: only a finished (succeeded) job can be pushed", 409)
        folder, _ = jobs.adapter_dir(job_id)
        try:
            report = push_adapter(folder, body.repo_id, private=body.private)
        except PushError as error:
            report = getattr(error, "report", None)
            return _error(502, str(error), report=report.to_dict() if report is not None else None)
        return JSONResponse(report.to_dict())

    return app


def _session_value(access_token: str) -> str:
    """The session cookie's value: derived from the access token, so the cookie never holds the token."""
    return hmac.new(access_token.encode(), b"deepsynth web session", hashlib.sha256).hexdigest()


def _set_session_cookie(response: Response, access_token: str) -> None:
    response.set_cookie(SESSION_COOKIE, _session_value(access_token), httponly=True, samesite="strict", path="/")


def _token_ok(header: str | None, cookie: str | None, access_token: str | None) -> bool:
    """Does the request carry the access token (bearer header) or a session cookie derived from it?"""
    if not access_token:
        return True
    header = header or ""
    if header.lower().startswith("bearer "):
        return hmac.compare_digest(header[7:].strip().encode(), access_token.encode())
    return bool(cookie) and hmac.compare_digest(cookie.encode(), _session_value(access_token).encode())


class _Guard:
    """ASGI middleware: Host allow-list, same-origin check for state changes, access token."""

    def __init__(self, app, *, access_token: str | None, hosts: set[str] | None) -> None:
        self.app = app
        self.access_token = access_token
        self.hosts = hosts

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        response = self.check(request)
        if response is None:
            return await self.app(scope, receive, send)
        await response(scope, receive, send)

    def check(self, request: Request) -> Response | None:
        host = (request.headers.get("host") or "").lower()
        hostname = urlsplit(f"//{host}").hostname or ""
        if self.hosts is not None and hostname not in self.hosts:
            return _error(403, f"host: {hostname!r} is not a name of this server (DNS rebinding protection)")
        if request.method in _UNSAFE_METHODS:
            origin = request.headers.get("origin")
            if origin is not None and (origin == "null" or urlsplit(origin).netloc.lower() != host):
                return _error(403, "origin: cross-site requests are refused")
        length = request.headers.get("content-length", "")
        if (request.url.path != "/api/datasets" and length.isdigit() and int(length) > MAX_JSON_BODY):
            return _error(413, f"body: larger than {MAX_JSON_BODY // 1024} KB")
        if not self.access_token:
            return None
        path = request.url.path
        if path == "/" and "token" in request.query_params:
            if hmac.compare_digest(request.query_params["token"].encode(), self.access_token.encode()):
                response = RedirectResponse("/", status_code=303)
                _set_session_cookie(response, self.access_token)
                return response
            return HTMLResponse(_login_page(), status_code=401)
        if path.startswith("/static/") or path in ("/api/session", "/api/health"):
            return None
        if _token_ok(request.headers.get("authorization"), request.cookies.get(SESSION_COOKIE), self.access_token):
            return None
        if path == "/":
            return HTMLResponse(_login_page(), status_code=401)
        return _error(401, "access token required: send 'Authorization: Bearer <token>' or sign in at /")


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("deepsynth")
    except Exception:
        return "0"
