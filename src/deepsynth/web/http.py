"""HTTP plumbing shared by the web app's routers: the error body and handlers, OpenAPI helpers, locks."""

from __future__ import annotations

import errno
import json
import logging
import threading
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, Field, Strict, WithJsonSchema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from deepsynth.errors import ModelNotFoundError
from deepsynth.training.boundary import describe_error
from deepsynth.web.datasets_store import DatasetNotFound, DatasetRequestError
from deepsynth.web.jobs.store import JobError
from deepsynth.web.model_policy import ModelNotAllowed

logger = logging.getLogger("deepsynth.web.app")

# Model building (meta device) and recommendation share torch state: one at a time.
_MODEL_LOCK = threading.Lock()
# transformers is imported lazily, and two request threads importing it at once leave one with a
# half-initialised module: in a fresh `deepsynth serve`, the page's first estimate next to an upload
# (datasets' hashing looks for transformers' tokenizer class) gave HTTP 500 "module 'transformers' has
# no attribute 'PreTrainedTokenizerBase'". So it is imported once, by one thread (import_libraries).
_IMPORT_LOCK = threading.Lock()
_imported = False


# A Hugging Face Hub id the schema promises the server accepts: two names of letters, digits and _,
# joined by up to three single '-' (or '.' before a digit: 'Qwen2.5'), never '--', '..' or a '.git' end, at
# most 95 characters each (huggingface_hub.utils.validate_repo_id accepts every one).
_HUB_NAME = r"[A-Za-z0-9_]{1,23}(?:-[A-Za-z0-9_]{1,23}|\.[0-9][A-Za-z0-9_]{0,22}){0,3}"
HUB_ID_PATTERN = rf"^{_HUB_NAME}/{_HUB_NAME}$"
DATASET_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,79}$"  # deepsynth.web.datasets_store's id form


# LoRA target names every supported model has (attention and dense MLP projections): what the schema
# promises; a server also takes the names a given model adds (its router, its experts).
COMMON_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _whole(value: Any) -> Any:
    """2.0 → 2: JSON Schema counts a number with no fraction as an integer, so the API does too."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def whole_int(minimum: int, maximum: int | None = None) -> Any:
    """An integer field in [minimum, maximum]: 2.0 taken as 2, True and "2" refused; its schema says so."""
    bounds = {"minimum": minimum, **({"maximum": maximum} if maximum is not None else {})}
    return Annotated[int, BeforeValidator(_whole), Strict(), Field(ge=minimum, le=maximum),
                     WithJsonSchema({"type": "integer", **bounds})]


def _integer_fields() -> set[str]:
    import typing

    from deepsynth.training.config import OptimizerConfig, TrainerConfig

    hints = {**typing.get_type_hints(OptimizerConfig), **typing.get_type_hints(TrainerConfig)}
    return {name for name, hint in hints.items() if int in (set(typing.get_args(hint)) or {hint})}


def whole_numbers_as_ints(data: dict[str, Any]) -> dict[str, Any]:
    """A job request or plan overrides with 2.0 given as 2 in the integer fields (and in ``optimizer``)."""
    names = _integer_fields()
    fixed = {key: _whole(value) if key in names else value for key, value in data.items()}
    if isinstance(fixed.get("optimizer"), dict):
        fixed["optimizer"] = whole_numbers_as_ints(fixed["optimizer"])
    return fixed


class ModelNotFound(Exception):
    """A well-formed model name that names no model here (not on the Hub, offline, no such folder): 404."""

    status_code = 404


class UploadTooLarge(Exception):
    """A body or upload over the server's limit: 413."""

    status_code = 413


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
    404: "No such dataset, job or model",
    409: "Conflict with the job's or dataset's state",
    413: "Body or upload larger than the server's limit",
    422: "A field with a wrong type or value (the message names it)",
    502: "The Hugging Face Hub refused or failed the push (the report says what was uploaded)",
    507: "The server's disk is full: nothing was kept (free space on the server and retry)",
}


# One server-sent event of /api/jobs/{id}/events (OpenAPI 3.1: the schema of an event stream is that
# of each event). `data` is JSON: a progress.jsonl line, or the job as GET /api/jobs/{id} gives it.
SSE_EVENT = {
    "type": "object", "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["progress", "status", "end"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "id": {"type": "string", "description": "progress events: their number (send it back as Last-Event-ID)"},
        "retry": {"type": "integer"},
    },
}


def links(name: str, field: str, operations: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """OpenAPI links from a created resource (its ``id``) to the routes that take it as ``field``."""
    return {label: {"operationRef": "#/paths/" + path.replace("/", "~1") + "/" + method,
                    "parameters": {field: "$response.body#/id"}, "description": f"this {name}"}
            for label, (method, path) in operations.items()}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` of a route: the errors it gives, plus those every /api route can give."""
    every = {401, 403, 413}  # no token; a foreign Host or Origin; a body over the limit
    return {code: {"model": ErrorBody, "description": _ERROR_MEANINGS[code]} for code in sorted({*every, *codes})}


def error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    """The API's one error shape: ``{"error": "<message naming the field>", ...}``."""
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def validation_message(errors: Sequence[dict[str, Any]]) -> tuple[int, str, list[dict[str, Any]]]:
    cleaned = []
    status = 422
    for item in errors:
        loc = [str(part) for part in item.get("loc", ()) if part not in ("body",)]
        if item.get("type") == "json_invalid":
            status = 400
            cleaned.append({"field": "body", "message": f"the request body is not valid JSON ({item.get('msg')})"})
            continue
        field = ".".join(loc) or "body"
        cleaned.append({"field": field, "message": str(item.get("msg", "invalid"))})
    message = "; ".join(f"{e['field']}: {e['message']}" for e in cleaned) or "invalid request"
    return status, message, cleaned


def model_call(model_name: str | None, function, /, *args, **kwargs):
    """Run a model-building library call; an unusable model name is the client's error (422).

    The caller has already checked ``model_name`` against the server's ModelPolicy (400 if refused).
    """
    with _MODEL_LOCK:
        try:
            return function(*args, **kwargs)
        except OSError as exc:
            if is_disk_full(exc):
                raise
            raise ModelNotFound(f"model: {model_name!r} was not found: not a model on the Hub (or the server is "
                                f"offline) nor a model folder ({exc.strerror or _first_line(exc)})") from None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


async def _on_error(request: Request, exc: Exception):
    """Any error, as :func:`deepsynth.training.boundary.describe_error` reads it (the CLI's reading too)."""
    described = describe_error(exc, paths=False)  # the server's folders are no business of a client
    if described.kind == "internal":
        return await _on_unexpected(request, exc)
    if described.kind == "disk_full":  # a job's folder, an artifact zip, a dataset: nothing half-written is kept
        logger.warning("disk full on %s %s: %s", request.method, request.url.path, exc)
    return error(described.http_status, described.message)


def import_libraries() -> None:
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


def sse(event: str, data: Any, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _routes(routes) -> list[Route]:
    """Every Route, also inside included routers (FastAPI >= 0.165 keeps them as one entry each)."""
    found: list[Route] = []
    for route in routes:
        if isinstance(route, Route):
            found.append(route)
        elif hasattr(route, "original_router"):  # our routers have no prefix: paths are as declared
            found.extend(_routes(route.original_router.routes))
    return found


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route serves at ``path`` (routes of one path are separate objects in Starlette)."""
    if path.startswith("/static/"):
        return ["GET", "HEAD"]
    methods: set[str] = set()
    for route in _routes(app.routes):
        if route.path_regex.match(path):
            methods |= route.methods or set()
    return sorted(methods)


async def _on_validation(request: Request, exc: RequestValidationError):
    status, message, details = validation_message(exc.errors())
    return error(status, message, details=details)


async def _on_http(request: Request, exc: StarletteHTTPException):
    if exc.status_code == 405:  # RFC 9110: a 405 lists the methods the resource has
        allowed = ", ".join(_allowed_methods(request.app, request.url.path))
        return error(405, f"method: {request.method} is not allowed here; allowed: {allowed}",
                     headers={"Allow": allowed})
    return error(exc.status_code, str(exc.detail))


async def _on_unexpected(request: Request, exc: Exception):
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    return error(500, f"internal error ({type(exc).__name__}); see the server log")


def add_error_handlers(app: FastAPI) -> None:
    """Every error becomes ``{"error": ...}``: a 4xx for what a client sent, 500 (logged) otherwise."""
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    # Each described by the boundary: the web's own errors say their status; ConfigError, DataError and the
    # library's other ValueErrors are 422; a full disk 507.
    for kind in (ModelNotAllowed, DatasetRequestError, DatasetNotFound, JobError, UploadTooLarge, ModelNotFound,
                 ModelNotFoundError, OSError, ValueError):
        app.add_exception_handler(kind, _on_error)
    app.add_exception_handler(Exception, _on_unexpected)


def _plan_overrides_schema(schemas: dict[str, Any]) -> None:
    """PlanRequest.overrides takes the fields (and rules) of a job request, but its dataset ids."""
    job, plan = schemas.get("JobRequest"), schemas.get("PlanRequest")
    if job is None or plan is None:
        return
    fields = {k: v for k, v in job["properties"].items() if k not in ("dataset_id", "eval_dataset_id", "preset")}
    plan["properties"]["overrides"] = {**plan["properties"]["overrides"], "properties": fields,
                                       "additionalProperties": False, "allOf": job.get("allOf", [])}


def openapi(app: FastAPI) -> dict[str, Any]:
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
        _plan_overrides_schema(schema["components"]["schemas"])
        for name in ("HTTPValidationError", "ValidationError"):
            if name not in json.dumps(schema["paths"]):
                schema["components"]["schemas"].pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


