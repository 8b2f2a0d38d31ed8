"""The DeepSynth web app: a JSON API over the library plus a one-page UI (``static/``).

Every route calls the same library function as the CLI (presets, ``recommend``,
``count_trainable_params``, ``load_documents``, ``TrainerConfig.from_dict``, ``push_adapter``):
nothing is decided twice. Errors are JSON ``{"error": "<message naming the field>"}`` with a 4xx
status for anything a client sends; the Hub token is never read from or returned to a client.

Security, as Jupyter does it: the app always has an access token (``deepsynth serve`` makes a random
one per launch unless one is configured). Every ``/api/`` request must carry it as
``Authorization: Bearer <token>``, or the session cookie a browser gets by opening ``/?token=<token>``
once (or by ``POST /api/session`` with the bearer header); without it the answer is 401. The cookie is
HttpOnly, SameSite=Strict and holds an HMAC of the token, never the token. Open without the token: the
page ``/`` itself (a sign-in form until the cookie is set), the static assets and ``/openapi.json``
(the same for every install; no state). Requests that change state must come from the app's own
origin (a cross-site form post is refused, 403), and ``allowed_hosts`` (set by
:func:`deepsynth.web.server.serve` on loopback) defeats DNS rebinding (403).
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
from typing import Any, get_type_hints
from urllib.parse import urlsplit

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    create_model,
)
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from deepsynth.training.config import OptimizerConfig, TrainerConfig
from deepsynth.training.errors import ConfigError
from deepsynth.web.datasets_store import (
    DatasetNotFound,
    DatasetRequestError,
    DatasetStore,
    human_size,
)
from deepsynth.web.jobs import SERVER_FIELDS, TERMINAL, CommandBuilder, JobError, JobManager, train_command, trainer_fields
from deepsynth.web.model_policy import ModelNotAllowed, ModelPolicy
from deepsynth.web.settings import ACCESS_TOKEN_ENV, DEFAULT_MAX_UPLOAD_BYTES, MIN_TOKEN_LENGTH  # noqa: F401

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
# The cookie's name carries a fingerprint of the token: two servers on one host (cookies ignore the
# port) keep their own sessions instead of overwriting each other's.
SESSION_COOKIE = "deepsynth_session"
MAX_JSON_BODY = 1024 * 1024
_UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# Model building (meta device) and recommendation share torch state: one at a time.
_MODEL_LOCK = threading.Lock()
# transformers is imported lazily, and two request threads importing it at once leave one with a
# half-initialised module: in a fresh `deepsynth serve`, the page's first estimate next to an upload
# (datasets' hashing looks for transformers' tokenizer class) gave HTTP 500 "module 'transformers' has
# no attribute 'PreTrainedTokenizerBase'". So it is imported once, by one thread (_import_libraries).
_IMPORT_LOCK = threading.Lock()
_imported = False


class UploadTooLarge(Exception):
    pass


class ErrorBody(BaseModel):
    """Every error answer: one message naming the field, file or row and what was expected."""

    error: str = Field(..., description="what was wrong, naming the field/file/row and what is expected")
    details: list[dict[str, str]] | None = Field(None, description="validation errors: [{field, message}]")
    report: dict[str, Any] | None = Field(None, description="push failures: what was uploaded and what failed")


_ERROR_MEANINGS = {
    400: "Bad request: a body that is not valid JSON or multipart, a bad id or name, a model name the "
         "server does not accept",
    401: "Access token missing or wrong (send 'Authorization: Bearer <token>')",
    403: "Refused: a Host that is not this server's (DNS rebinding) or a cross-site Origin",
    404: "No such dataset or job",
    409: "Conflict with the job's or dataset's state",
    413: "Body or upload larger than the server's limit",
    422: "A field with a wrong type or value (the message names it)",
    502: "The Hugging Face Hub refused or failed the push (the report says what was uploaded)",
}


# One server-sent event of /api/jobs/{id}/events (OpenAPI 3.1: the schema of an event stream is that
# of each event). `data` is JSON: a progress.jsonl line, or the job as GET /api/jobs/{id} gives it.
_SSE_EVENT = {
    "type": "object", "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["progress", "status", "end"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "id": {"type": "string", "description": "progress events: their number (send it back as Last-Event-ID)"},
        "retry": {"type": "integer"},
    },
}


def _links(name: str, field: str, operations: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """OpenAPI links from a created resource (its ``id``) to the routes that take it as ``field``."""
    return {label: {"operationRef": "#/paths/" + path.replace("/", "~1") + "/" + method,
                    "parameters": {field: "$response.body#/id"}, "description": f"this {name}"}
            for label, (method, path) in operations.items()}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` of a route: the errors it gives, plus those every /api route can give."""
    every = {401, 403, 413}  # no token; a foreign Host or Origin; a body over the limit
    return {code: {"model": ErrorBody, "description": _ERROR_MEANINGS[code]} for code in sorted({*every, *codes})}


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
    """Documents every TrainerConfig field in OpenAPI; validation itself is TrainerConfig.from_dict's.

    Each field's JSON type comes from TrainerConfig's (or OptimizerConfig's) annotation; an unknown
    field is refused (422, naming it), which the schema says with ``additionalProperties: false``.
    """
    defaults = TrainerConfig().to_dict()
    hints = {**get_type_hints(OptimizerConfig), **get_type_hints(TrainerConfig)}
    attrs: dict[str, Any] = {
        "dataset_id": (StrictStr, Field(..., description="id from GET /api/datasets ('sample': the bundled set)",
                                        examples=["sample"])),
        "eval_dataset_id": (StrictStr | None, Field(None, description="held-out dataset id (optional)")),
    }
    for name in trainer_fields():
        default = defaults.get(name, defaults["optimizer"].get(name) if name != "optimizer" else None)
        kind = {"type": "object"} if name == "optimizer" else TypeAdapter(hints[name]).json_schema()
        attrs[name] = (Any, Field(None, description=f"TrainerConfig.{name} (default {default!r})",
                                  json_schema_extra=kind))
    config = ConfigDict(extra="allow", protected_namespaces=(), json_schema_extra={"additionalProperties": False})
    return create_model("JobRequest", __config__=config, **attrs)


JobRequest = _job_request_model()


# --------------------------------------------------------------------------------------- helpers


def _error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


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
    """Run a model-building library call; an unusable model name is the client's error (422).

    The caller has already checked ``model_name`` against the server's ModelPolicy (400 if refused).
    """
    with _MODEL_LOCK:
        try:
            return function(*args, **kwargs)
        except OSError as error:
            raise ConfigError("model", model_name, f"a model name or local directory ({error.strerror or error})") from None


def _import_libraries() -> None:
    """Import transformers and the model code once; other threads wait until that is complete."""
    global _imported
    with _IMPORT_LOCK:
        if not _imported:
            import transformers

            import deepsynth.models.resolver
            import deepsynth.training.recommend
            import deepsynth.training.targets  # noqa: F401

            transformers.PreTrainedTokenizerBase  # noqa: B018 (a lazy attribute: this imports it)
            _imported = True


def _sse(event: str, data: Any, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _login_page() -> str:
    return """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>DeepSynth — sign in</title>
<link rel="stylesheet" href="/static/style.css"></head><body><main class="login">
<h1>DeepSynth</h1><p>Open the address <code>deepsynth serve</code> printed (it ends in <code>?token=…</code>),
or paste its access token (or your DEEPSYNTH_ACCESS_TOKEN) here.</p>
<form id="login-form"><input id="access-token" type="password" autocomplete="current-password" placeholder="access token">
<button id="login-button" type="submit">Sign in</button></form><p id="login-error" class="error"></p>
<script src="/static/login.js"></script></main></body></html>"""


# --------------------------------------------------------------------------------------- the app


def create_app(
    state_dir: Path,
    *,
    access_token: str,
    allowed_models: Sequence[str] = (),
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_concurrent_jobs: int = 1,
    cancel_grace_s: float = 30.0,
    poll_interval_s: float = 0.5,
    job_command: CommandBuilder = train_command,
    allowed_hosts: Sequence[str] | None = None,
    stop_jobs_on_shutdown: bool = False,
) -> FastAPI:
    """Build the app over ``state_dir`` (datasets, jobs, jobs.sqlite3).

    ``access_token`` (required, at least 16 characters) guards every API route; ``allowed_models``
    are the models clients may name besides Hub ids and folders in ``state_dir`` (see ModelPolicy).
    The job supervisor starts with the app's lifespan (uvicorn, or ``with TestClient(app)``).
    """
    if not isinstance(access_token, str) or len(access_token) < MIN_TOKEN_LENGTH:
        raise ConfigError("access_token", "<hidden>", f"a string of at least {MIN_TOKEN_LENGTH} characters")
    state_dir = Path(state_dir).expanduser()
    # A new state folder is private (0700): its datasets, logs and adapters are the owner's alone.
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (state_dir / "tmp").mkdir(exist_ok=True)
    store = DatasetStore(state_dir, max_upload_bytes=max_upload_bytes)
    jobs = JobManager(state_dir, store, max_concurrent_jobs=max_concurrent_jobs, cancel_grace_s=cancel_grace_s,
                      poll_interval_s=poll_interval_s, command=job_command)
    hosts = {h.lower().strip("[]") for h in allowed_hosts} if allowed_hosts is not None else None
    models = ModelPolicy(state_dir, allowed_models)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        jobs.start()
        # In the background, so the server answers at once; a request that needs them waits for it.
        threading.Thread(target=_import_libraries, name="deepsynth-imports", daemon=True).start()
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
    app.state.models = models

    app.add_middleware(_Guard, access_token=access_token, hosts=hosts)

    def _set_session(response: Response) -> None:
        _set_session_cookie(response, access_token)

    # --- error handlers ----------------------------------------------------------------------

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError):
        status, message, details = _validation_message(exc.errors())
        return _error(status, message, details=details)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 405:  # RFC 9110: a 405 lists the methods the resource has
            allowed = ", ".join(_allowed_methods(app, request.url.path))
            return _error(405, f"method: {request.method} is not allowed here; allowed: {allowed}",
                          headers={"Allow": allowed})
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(ModelNotAllowed)
    async def on_model_refused(request: Request, exc: ModelNotAllowed):
        return _error(exc.status_code, str(exc))

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

    @app.get("/api/health", tags=["server"], responses=_errors(),
             summary="Liveness probe; like every /api route it needs the access token")
    async def health() -> dict[str, Any]:
        return {"ok": True, "version": _version()}

    @app.post("/api/session", tags=["server"], summary="Exchange the access token for a session cookie",
              responses=_errors())
    async def session(request: Request) -> Response:
        # The guard has checked the bearer header (or an existing session cookie) already.
        response = JSONResponse({"ok": True})
        _set_session(response)
        return response

    @app.get("/api/hub", tags=["server"], summary="Whether a Hub token is configured (never the token)",
             responses=_errors())
    def hub_status() -> dict[str, Any]:
        from deepsynth.publishing.hub import resolve_token

        source = "environment" if os.environ.get("HF_TOKEN") else ("login" if resolve_token() else None)
        return {"token_available": source is not None, "source": source}

    # --- LoRA presets, recommendation, estimates ----------------------------------------------

    @app.get("/api/lora/presets", tags=["lora"], responses=_errors())
    def presets() -> dict[str, Any]:
        from deepsynth.training.lora_config import LORA_PRESETS, PRESET_DESCRIPTIONS

        return {"presets": [
            {"name": name, "description": PRESET_DESCRIPTIONS.get(name, ""), "settings": preset.to_dict()}
            for name, preset in LORA_PRESETS.items()
        ]}

    @app.post("/api/lora/presets/recommended", tags=["lora"], responses=_errors(400, 422),
              summary="recommend(num_samples, model, ...).to_dict(), as `deepsynth recommend --json`")
    def recommended(body: RecommendRequest) -> dict[str, Any]:
        _import_libraries()
        from deepsynth.training.recommend import recommend

        model = models.check(body.model, "model")
        return _model_call(model, recommend, body.num_samples, model=model,
                           has_eval_data=body.has_eval_data, num_train_tokens=body.num_train_tokens).to_dict()

    @app.post("/api/lora/estimate", tags=["lora"], summary="Exact trainable parameters of LoRA settings",
              responses=_errors(400, 422))
    def estimate(body: EstimateRequest) -> dict[str, Any]:
        _import_libraries()
        from deepsynth.training.lora_config import adapter_settings
        from deepsynth.training.targets import count_trainable_params

        model = models.check(body.model, "model")
        lora = adapter_settings(body.preset, body.model_dump(exclude_none=True, exclude={"model", "preset"}))
        return _model_call(model, count_trainable_params, model, lora).to_dict()

    @app.get("/api/trainer/defaults", tags=["jobs"], summary="TrainerConfig defaults (the fields a job accepts)",
             responses=_errors())
    def trainer_defaults() -> dict[str, Any]:
        defaults = TrainerConfig().to_dict()
        for name in SERVER_FIELDS:
            defaults.pop(name, None)
        return {"defaults": defaults, "server_fields": sorted(SERVER_FIELDS)}

    # --- datasets ----------------------------------------------------------------------------

    @app.get("/api/datasets", tags=["datasets"], responses=_errors())
    def list_datasets() -> dict[str, Any]:
        return {"datasets": [info.to_dict() for info in store.list()],
                "max_upload_bytes": store.max_upload_bytes}

    @app.post(
        "/api/datasets", tags=["datasets"], status_code=201,
        summary="Upload a JSONL/JSON/CSV/TSV/Parquet file, or a zip of one data file plus its images",
        responses={**_errors(400, 422), 201: {"description": "the dataset, validated", "links": _links(
            "dataset", "dataset_id", {"GetDataset": ("get", "/api/datasets/{dataset_id}"),
                                      "DeleteDataset": ("delete", "/api/datasets/{dataset_id}")})}},
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
            await anyio.to_thread.run_sync(_import_libraries)
            info = await anyio.to_thread.run_sync(store.add, upload_dir, upload.filename or "", name)
        finally:
            await form.close()
        return JSONResponse(info.to_dict(), status_code=201)

    @app.get("/api/datasets/{dataset_id}", tags=["datasets"], responses=_errors(400, 404))
    def get_dataset(dataset_id: str) -> dict[str, Any]:
        return store.get(dataset_id).to_dict()

    @app.delete("/api/datasets/{dataset_id}", tags=["datasets"], responses=_errors(400, 404, 409))
    def delete_dataset(dataset_id: str) -> dict[str, Any]:
        store.get(dataset_id)
        users = jobs.uses_dataset(dataset_id)
        if users:
            raise JobError(f"dataset_id: {dataset_id!r} is used by queued or running job(s) {', '.join(users)}", 409)
        return {"deleted": store.delete(dataset_id).to_dict()}

    # --- jobs --------------------------------------------------------------------------------

    @app.get("/api/jobs", tags=["jobs"], responses=_errors())
    def list_jobs() -> dict[str, Any]:
        return {"jobs": jobs.list()}

    @app.post("/api/jobs", tags=["jobs"], status_code=201, responses={**_errors(400, 422), 201: {
                  "description": "the queued job", "links": _links("job", "job_id", {
                      "GetJob": ("get", "/api/jobs/{job_id}"), "CancelJob": ("post", "/api/jobs/{job_id}/cancel"),
                      "JobEvents": ("get", "/api/jobs/{job_id}/events"),
                      "JobArtifacts": ("get", "/api/jobs/{job_id}/artifacts"),
                      "PushJob": ("post", "/api/jobs/{job_id}/push")})}},
              summary="Queue a training run: any TrainerConfig field plus dataset_id [, eval_dataset_id]")
    def create_job(body: JobRequest) -> JSONResponse:  # type: ignore[valid-type]
        request = body.model_dump(exclude_unset=True)
        if "model_name" in request:
            _import_libraries()  # the model rule names the embedded model (deepsynth.models.resolver)
            request["model_name"] = models.check(request["model_name"], "model_name")
        return JSONResponse(jobs.submit(request), status_code=201)

    @app.get("/api/jobs/{job_id}", tags=["jobs"], responses=_errors(404))
    def get_job(job_id: str) -> dict[str, Any]:
        return jobs.detail(job_id)

    @app.post("/api/jobs/{job_id}/cancel", tags=["jobs"], responses=_errors(404, 409))
    def cancel_job(job_id: str) -> dict[str, Any]:
        return jobs.cancel(job_id)

    @app.get("/api/jobs/{job_id}/events", tags=["jobs"], summary="Live progress (server-sent events)",
             response_class=StreamingResponse, responses={
                 200: {"description": "progress, status and end events",
                       "content": {"text/event-stream": {"schema": _SSE_EVENT}}}, **_errors(404)})
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
             response_class=FileResponse, responses={
                 200: {"description": "the adapter's publishable files",
                       "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}},
                 **_errors(404, 409)})
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

    @app.post("/api/jobs/{job_id}/push", tags=["jobs"], responses=_errors(400, 404, 409, 422, 502),
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

    app.openapi = lambda: _openapi(app)
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, with its stock 422 replaced by our error body, or dropped where it cannot occur.

    FastAPI documents a 422 of its own shape on every route with parameters; ours is ``ErrorBody``
    and only routes with a request body give it (a path parameter is any string).
    """
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        for operation in (op for ops in schema["paths"].values() for op in ops.values()):
            stock = operation["responses"].get("422", {})
            if "HTTPValidationError" in json.dumps(stock):
                if "requestBody" in operation:
                    operation["responses"]["422"] = {"description": _ERROR_MEANINGS[422], "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
                else:
                    del operation["responses"]["422"]
        schema["components"]["securitySchemes"] = {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "the access token `deepsynth serve` printed (…/?token=<token>) or DEEPSYNTH_ACCESS_TOKEN; "
                           "a browser that opened /?token=<token> sends an HttpOnly session cookie instead"}}
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                operation["security"] = [{"bearer": []}]
        for name in ("HTTPValidationError", "ValidationError"):
            if name not in json.dumps(schema["paths"]):
                schema["components"]["schemas"].pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


def _session_value(access_token: str) -> str:
    """The session cookie's value: derived from the access token, so the cookie never holds the token."""
    return hmac.new(access_token.encode(), b"deepsynth web session", hashlib.sha256).hexdigest()


def _cookie_name(access_token: str) -> str:
    return f"{SESSION_COOKIE}_{_session_value(access_token)[:12]}"


def _set_session_cookie(response: Response, access_token: str) -> None:
    response.set_cookie(_cookie_name(access_token), _session_value(access_token), httponly=True,
                        samesite="strict", path="/")


def _token_ok(request: Request, access_token: str) -> bool:
    """Does the request carry the access token (bearer header) or the session cookie derived from it?"""
    header = request.headers.get("authorization") or ""
    if header[:7].lower() == "bearer ":
        return hmac.compare_digest(header[7:].strip().encode(), access_token.encode())
    cookie = request.cookies.get(_cookie_name(access_token))
    return bool(cookie) and hmac.compare_digest(cookie.encode(), _session_value(access_token).encode())


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route serves at ``path`` (routes of one path are separate objects in Starlette)."""
    if path.startswith("/static/"):
        return ["GET", "HEAD"]
    methods: set[str] = set()
    for route in app.routes:
        if isinstance(route, Route) and route.path_regex.match(path):
            methods |= route.methods or set()
    return sorted(methods)


class _Guard:
    """ASGI middleware: Host allow-list, same-origin check for state changes, access token on /api/."""

    def __init__(self, app, *, access_token: str, hosts: set[str] | None) -> None:
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
        path = request.url.path
        if path == "/" and "token" in request.query_params:
            return self.sign_in(request.query_params["token"])
        if _token_ok(request, self.access_token):
            return self.size_check(request)
        if path == "/":
            return HTMLResponse(_login_page(), status_code=401, headers={"Cache-Control": "no-store"})
        if path.startswith("/static/") or path == "/openapi.json":
            return self.size_check(request)  # the same for every install: no state, no secret
        # Anything else needs the token (deny by default), and its body is never read without it.
        return _error(401, "access token required: send 'Authorization: Bearer <token>', or open the address "
                           "`deepsynth serve` printed (…/?token=…) in the browser")

    def sign_in(self, token: str) -> Response:
        """``/?token=…``: set the session cookie and drop the token from the address bar."""
        if not hmac.compare_digest(token.encode(), self.access_token.encode()):
            return HTMLResponse(_login_page(), status_code=401, headers={"Cache-Control": "no-store"})
        response = RedirectResponse("/", status_code=303, headers={"Referrer-Policy": "no-referrer",
                                                                   "Cache-Control": "no-store"})
        _set_session_cookie(response, self.access_token)
        return response

    @staticmethod
    def size_check(request: Request) -> Response | None:
        length = request.headers.get("content-length", "")
        if request.url.path != "/api/datasets" and length.isdigit() and int(length) > MAX_JSON_BODY:
            return _error(413, f"body: larger than {MAX_JSON_BODY // 1024} KB")
        return None


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
