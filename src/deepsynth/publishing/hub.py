"""Publish a trained DeepSynth LoRA adapter folder to the Hugging Face Hub.

:func:`push_adapter` is the single entry point used by the CLI (``deepsynth push``), the trainer's
``push_to_hub`` and the web UI. It validates its inputs before anything is sent, writes the model
card, then uploads through one of two backends:

- ``"http"`` (default): ``huggingface_hub.HfApi`` (``create_repo`` + ``upload_folder``), retried
  with exponential backoff on transient errors, falling back to one ``upload_file`` per file when
  the folder commit keeps failing, so that everything that can be published is.
- ``"git"``: plain ``git`` + ``git-lfs`` subprocesses (see :mod:`deepsynth.publishing.git_backend`).

Every outcome is a :class:`PushReport`; any failure raises :class:`PushError` carrying the complete
report. Local artifacts are never modified or deleted, with one documented exception: when
``write_card`` is true, the model card is written to ``README.md`` inside the adapter folder before
the upload (a hand-written ``README.md`` is kept, see :func:`~deepsynth.publishing.model_card.write_model_card`).

The token (argument, else ``HF_TOKEN``, else the stored ``hf auth login``) is only ever held in
memory: it is never written to a file, logged, or put into an exception message or a report.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx2  # huggingface_hub's HTTP client (a hard dependency of huggingface_hub 2.x)
import huggingface_hub
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import (
    DEFAULT_IGNORE_PATTERNS,
    HFValidationError,
    build_hf_headers,
    filter_repo_objects,
    get_session,
    validate_repo_id,
)

from deepsynth.publishing.model_card import read_run_json

logger = logging.getLogger(__name__)

T = TypeVar("T")

BACKENDS = ("http", "git")
DEFAULT_BACKEND = "http"

# Files of an adapter output folder that are never published: intermediate checkpoints (weights plus
# optimizer state, often larger than the adapter itself), per-epoch snapshots, tensorboard runs,
# partial/temporary files, run logs (``progress.jsonl`` holds local paths), and Trainer state
# files (``training_args.bin`` pickles the arguments, which may include a hub token). Both backends
# use this list; patterns follow ``huggingface_hub.utils.filter_repo_objects`` (fnmatch on the
# folder-relative posix path, a trailing ``/`` matches everything below a folder).
PUBLISH_IGNORE_PATTERNS: tuple[str, ...] = (
    "checkpoint-*",
    "*/checkpoint-*",
    ".checkpoint-*",  # a checkpoint being deleted (deepsynth.training.checkpoints.remove_checkpoint)
    ".deepsynth-staging/",  # a final save in progress, or one a crash interrupted
    "epoch_*",
    "*/epoch_*",
    "runs/",
    "wandb/",
    "__pycache__/",
    ".ipynb_checkpoints/",
    "*.tmp",
    "*.temp",
    "*.partial",
    "*.incomplete",
    "*.lock",
    "*.log",
    "progress.jsonl",
    "*.pyc",
    ".DS_Store",
    "optimizer.pt",
    "scheduler.pt",
    "scaler.pt",
    "rng_state*.pth",
    "training_args.bin",
    "trainer_state.json",
)

DEFAULT_RETRY_BASE_DELAY = 1.0  # seconds; doubled after each failed attempt
MAX_RETRY_DELAY = 30.0
RETRY_DELAY_ENV = "DS_PUSH_RETRY_DELAY"
BACKEND_ENV = "DS_PUSH_BACKEND"
GIT_REMOTE_ENV = "DS_GIT_REMOTE"

# Statuses that mean "this will not work however often we try": bad or missing credentials,
# no permission, unknown repository. Everything else that is not transient may be specific to one
# file, so it is worth the per-file fallback.
_FATAL_STATUSES = frozenset({401, 403, 404, 407})
_TRANSIENT_STATUSES = frozenset({408, 425, 429})

_REPO_ID_FORM = re.compile(r"^[^/\s]+/[^/\s]+$")
_URL_QUERY = re.compile(r"(https?://[^\s'\"?]+)\?[^\s'\"]*")
_MDN_HINT = re.compile(r" For more information check: https://developer\.mozilla\.org/\S+")


# --------------------------------------------------------------------------------------- results


@dataclass
class PushReport:
    """What a push did. ``failed`` maps a folder-relative path to the (token-free) error message."""

    repo_id: str
    backend: str
    endpoint: str | None = None
    uploaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    commit_url: str | None = None
    revision: str | None = None
    error: str | None = None
    card_written: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


class PushError(RuntimeError):
    """A push failed; ``report`` says what was uploaded and what was not."""

    def __init__(self, message: str, report: PushReport) -> None:
        super().__init__(message)
        self.report = report


# --------------------------------------------------------------------------------------- helpers


def validate_hub_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` if it has the ``org/name`` form the Hub accepts, else raise ValueError."""
    if not isinstance(repo_id, str) or not _REPO_ID_FORM.match(repo_id):
        raise ValueError(f"repo_id: expected 'org/name' (namespace and repository name), got {repo_id!r}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ValueError(f"repo_id: {exc}") from None
    return repo_id


def list_publishable_files(adapter_dir: str | Path) -> tuple[list[str], list[str]]:
    """Split the files of ``adapter_dir`` into (published, ignored) folder-relative posix paths.

    Uses the same listing and the same patterns as ``HfApi.upload_folder`` does with
    ``ignore_patterns=PUBLISH_IGNORE_PATTERNS``, so the report matches what was sent.
    """
    root = Path(adapter_dir).expanduser().resolve()
    every = [p.relative_to(root).as_posix() for p in sorted(root.glob("**/*")) if p.is_file()]
    patterns = [*PUBLISH_IGNORE_PATTERNS, *DEFAULT_IGNORE_PATTERNS]
    published = list(filter_repo_objects(every, ignore_patterns=patterns))
    kept = set(published)
    return published, [path for path in every if path not in kept]


def files_containing(folder: Path, files: list[str], secret: str | None, *, max_bytes: int = 16 * 2**20) -> list[str]:
    """The ``files`` (up to ``max_bytes`` each: configs, logs, text) whose content includes ``secret``."""
    if not secret:
        return []
    needle = secret.encode()
    return [
        path
        for path in files
        if (folder / path).stat().st_size <= max_bytes and needle in (folder / path).read_bytes()
    ]


def resolve_token(token: str | None = None) -> str | None:
    """Explicit token, else ``HF_TOKEN``, else huggingface_hub's stored login, else None."""
    if token:
        return token
    return os.environ.get("HF_TOKEN") or huggingface_hub.get_token() or None


def resolve_endpoint() -> str:
    """The Hub endpoint, from ``HF_ENDPOINT`` read now.

    ``huggingface_hub.constants.ENDPOINT`` is frozen when the library is imported, so a later
    ``HF_ENDPOINT`` (set by a test, a notebook cell or the web UI) would otherwise be ignored.
    """
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def scrub(text: str, secret: str | None) -> str:
    """Remove every spelling of ``secret`` (raw or URL-encoded) from ``text``."""
    if not secret:
        return text
    for spelling in {secret, quote(secret, safe="")}:
        text = text.replace(spelling, "***")
    return text


def _http_status(exc: BaseException) -> int | None:
    for link in _causes(exc):
        if isinstance(link, HfHubHTTPError) and getattr(link, "response", None) is not None:
            return link.response.status_code
    return None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def classify_error(exc: BaseException) -> str:
    """``"transient"`` (retry), ``"fatal"`` (stop at once) or ``"other"`` (may be file-specific)."""
    status = _http_status(exc)
    if status is not None:
        if status in _FATAL_STATUSES:
            return "fatal"
        if status >= 500 or status in _TRANSIENT_STATUSES:
            return "transient"
        return "other"
    if any(isinstance(link, (httpx2.TransportError, ConnectionError, TimeoutError)) for link in _causes(exc)):
        return "transient"
    return "other"


def describe_error(exc: BaseException, token: str | None, *, had_token: bool = True) -> str:
    """One-line, token-free description of ``exc`` (with its root cause and an auth hint)."""
    parts = [f"{type(exc).__name__}: {exc}"]
    root = list(_causes(exc))[-1]
    if root is not exc and str(root) not in str(exc):
        parts.append(f"caused by {type(root).__name__}: {root}")
    status = _http_status(exc)
    if status == 401:
        parts.append(
            "the token was rejected: check it is valid and has write access"
            if had_token
            else "no token found: pass token=..., set HF_TOKEN, or run `hf auth login`"
        )
    elif status == 403:
        parts.append("the token has no write permission on this repository or namespace")
    message = " | ".join(" ".join(part.split()) for part in parts)
    # Presigned storage URLs carry short-lived credentials in their query string: drop it.
    message = _URL_QUERY.sub(r"\1?...", message)
    message = _MDN_HINT.sub("", message)
    return scrub(message, token)


def call_with_retries(
    fn: Callable[[], T],
    *,
    what: str,
    max_retries: int,
    base_delay: float,
    sleep: Callable[[float], None] = time.sleep,
    classify: Callable[[BaseException], str] = classify_error,
) -> T:
    """Call ``fn``; on a transient error retry up to ``max_retries`` times with exponential backoff.

    Fatal and other errors are raised at once: retrying a 401 only delays the message the user
    needs, and a file-specific rejection is handled by the caller's fallback.
    """
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            if classify(exc) != "transient" or attempt >= max_retries:
                raise
            delay = min(base_delay * (2**attempt), MAX_RETRY_DELAY)
            attempt += 1
            logger.warning("%s failed (transient), retry %d/%d in %.2fs", what, attempt, max_retries, delay)
            sleep(delay)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _fail(report: PushReport, message: str, files: list[str] | None = None, *, detail: str = "") -> PushError:
    """Complete ``report`` for a failure and build the error to raise.

    ``files`` not uploaded yet are marked failed with ``message``; ``detail`` only goes into the
    exception text (the report already holds it per file).
    """
    report.error = message
    for path in files or []:
        if path not in report.uploaded:
            report.failed.setdefault(path, message)
    text = f"push to {report.repo_id} failed: {message}" + (f"; {detail}" if detail else "")
    return PushError(text, report)


# --------------------------------------------------------------------------------------- Xet policy

# `huggingface_hub` decides to use Xet storage only from whether `hf_xet` is installed and from
# `constants.HF_HUB_DISABLE_XET` (frozen at import): it never asks the server. A Hub-compatible
# server without Xet (an on-premise mirror, the tests' fake hub) would then fail every LFS upload,
# so we ask the server for a Xet write token first and turn Xet off for this push if none is offered.
_XET_LOCK = threading.RLock()


def hub_offers_xet(endpoint: str, repo_id: str, token: str | None) -> bool:
    """Whether ``endpoint`` hands out Xet write tokens for ``repo_id`` (and Xet is usable here)."""
    if _env_true("HF_HUB_DISABLE_XET") or constants.HF_HUB_DISABLE_XET:
        return False
    if importlib.util.find_spec("hf_xet") is None:
        return False
    url = f"{endpoint}/api/models/{repo_id}/xet-write-token/{constants.DEFAULT_REVISION}"
    try:
        response = get_session().get(url, headers=build_hf_headers(token=token), timeout=30)
    except httpx2.TransportError:
        return True  # cannot tell: keep the library's default and let the upload report the real error
    if response.status_code in (404, 405, 501):
        return False
    if response.status_code == 200:
        return constants.HUGGINGFACE_HEADER_X_XET_ENDPOINT in response.headers
    return True


@contextmanager
def _xet_allowed(allowed: bool) -> Iterator[None]:
    # The flag is process-wide: hold a lock so concurrent pushes (web UI) do not undo each other.
    with _XET_LOCK:
        previous = constants.HF_HUB_DISABLE_XET
        constants.HF_HUB_DISABLE_XET = previous or not allowed
        try:
            yield
        finally:
            constants.HF_HUB_DISABLE_XET = previous


# --------------------------------------------------------------------------------------- entry point


def push_adapter(
    adapter_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    backend: str | None = None,
    commit_message: str | None = None,
    max_retries: int = 4,
    write_card: bool = True,
    retry_base_delay: float | None = None,
    git_remote_url: str | None = None,
) -> PushReport:
    """Publish the adapter in ``adapter_dir`` to the Hub repository ``repo_id``.

    Args:
        adapter_dir: trainer output folder; must contain ``adapter_config.json``. Intermediate
            files (:data:`PUBLISH_IGNORE_PATTERNS`) are not published.
        repo_id: ``org/name``. The repository is created if missing (``private`` only applies then).
        token: Hub token; default ``HF_TOKEN``, then the stored ``hf auth login``.
        backend: ``"http"`` or ``"git"``; default ``$DS_PUSH_BACKEND`` or ``"http"``.
        commit_message: default names the base model and preset.
        max_retries: retries of each request on transient errors (HTTP 5xx/429, timeouts,
            connection errors). 4xx errors such as 401/403/404 fail at once.
        write_card: write the model card to ``adapter_dir/README.md`` before uploading (the only
            change ever made to the folder; a hand-written README.md is kept).
        retry_base_delay: first backoff delay in seconds (doubled each retry); default
            ``$DS_PUSH_RETRY_DELAY`` or 1.0.
        git_remote_url: ``"git"`` backend only: push there instead of ``{endpoint}/{repo_id}``
            (a local bare repository in tests); default ``$DS_GIT_REMOTE``.

    Returns:
        The :class:`PushReport` of a complete push.

    Raises:
        PushError: invalid arguments, missing tools, or any file not published; ``.report`` is
            complete when it is raised.
    """
    backend_name = (backend or os.environ.get(BACKEND_ENV) or DEFAULT_BACKEND).strip().lower()
    endpoint = resolve_endpoint()
    report = PushReport(repo_id=str(repo_id), backend=backend_name, endpoint=endpoint)
    folder = Path(adapter_dir).expanduser()

    # 1. Everything that can be checked locally is checked before any request is sent.
    if backend_name not in BACKENDS:
        raise _fail(report, f"backend: unknown {backend_name!r}; expected one of {', '.join(BACKENDS)}")
    try:
        validate_hub_repo_id(repo_id)
    except ValueError as exc:
        raise _fail(report, str(exc)) from None
    if not folder.is_dir():
        raise _fail(report, f"adapter_dir: {str(folder)!r} is not a directory")
    if not (folder / "adapter_config.json").is_file():
        message = f"adapter_dir: {str(folder)!r} has no adapter_config.json (not a PEFT adapter folder)"
        raise _fail(report, message)
    if max_retries < 0:
        raise _fail(report, f"max_retries: must be >= 0, got {max_retries}")
    base_delay = _resolve_retry_delay(retry_base_delay)

    remote_override = git_remote_url or os.environ.get(GIT_REMOTE_ENV) or None
    uses_hub_api = backend_name == "http" or remote_override is None
    if uses_hub_api and constants.HF_HUB_OFFLINE:
        raise _fail(report, "huggingface_hub offline mode is enabled (HF_HUB_OFFLINE): unset it to push")
    if backend_name == "git":
        from deepsynth.publishing import git_backend

        problem = git_backend.missing_git_tools()
        if problem:
            raise _fail(report, problem)

    resolved_token = resolve_token(token)

    # 2. Model card, then the file list (so README.md is part of it).
    if write_card:
        from deepsynth.publishing.model_card import CARD_MARKER, write_model_card

        try:
            card = write_model_card(folder, repo_id=repo_id)
            report.card_written = CARD_MARKER in card.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            message = f"could not write the model card into {str(folder)!r} ({exc}); pass write_card=False"
            raise _fail(report, message) from None
    files, report.ignored = list_publishable_files(folder)
    leaking = files_containing(folder, files, resolved_token)
    if leaking:
        # Last line of defence: a config or log that captured the token must not go public.
        raise _fail(report, f"refusing to publish: the Hub token appears in {', '.join(leaking)}", files)
    message = commit_message or default_commit_message(folder)
    logger.info("Pushing %d file(s) from %s to %s via %s", len(files), folder, repo_id, backend_name)

    # 3. Upload.
    if backend_name == "http":
        _push_http(
            folder, files, report, token=resolved_token, private=private, message=message,
            max_retries=max_retries, base_delay=base_delay,
        )
    else:
        from deepsynth.publishing import git_backend

        git_backend.push_with_git(
            folder, files, report, token=resolved_token, private=private, message=message,
            max_retries=max_retries, base_delay=base_delay, remote_url=remote_override,
        )
    logger.info("Pushed %d file(s) to %s (%s)", len(report.uploaded), repo_id, report.commit_url or report.revision)
    return report


def _resolve_retry_delay(value: float | None) -> float:
    if value is not None:
        return max(0.0, float(value))
    raw = os.environ.get(RETRY_DELAY_ENV)
    if raw is None:
        return DEFAULT_RETRY_BASE_DELAY
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise ValueError(f"{RETRY_DELAY_ENV}: got {raw!r}, expected a number of seconds") from None


def default_commit_message(adapter_dir: Path) -> str:
    """``Upload DeepSynth LoRA adapter (preset X, base org/model)`` from the folder's metadata."""
    config, metrics = read_run_json(adapter_dir / "training_config.json"), read_run_json(adapter_dir / "metrics.json")
    preset = metrics.get("preset") or config.get("preset")
    base = metrics.get("base_model") or config.get("model_name")
    details = []
    if isinstance(preset, str) and preset:
        details.append(f"preset {preset}")
    if isinstance(base, str) and base:
        details.append(f"base {base}")
    return "Upload DeepSynth LoRA adapter" + (f" ({', '.join(details)})" if details else "")


# --------------------------------------------------------------------------------------- HTTP backend


def _push_http(
    folder: Path,
    files: list[str],
    report: PushReport,
    *,
    token: str | None,
    private: bool,
    message: str,
    max_retries: int,
    base_delay: float,
) -> None:
    """create_repo + upload_folder, then per-file upload_file for whatever the folder commit could not do."""
    assert report.endpoint is not None
    api = HfApi(endpoint=report.endpoint, token=token, library_name="deepsynth")
    repo_id = report.repo_id

    def retried(fn: Callable[[], T], what: str) -> T:
        return call_with_retries(fn, what=what, max_retries=max_retries, base_delay=base_delay)

    def describe(exc: BaseException) -> str:
        return describe_error(exc, token, had_token=token is not None)

    try:
        retried(lambda: api.create_repo(repo_id, private=private, exist_ok=True), f"create_repo({repo_id})")
    except Exception as exc:
        raise _fail(report, f"could not create or access the repository: {describe(exc)}", files) from None

    with _xet_allowed(hub_offers_xet(report.endpoint, repo_id, token)):
        try:
            info = retried(
                lambda: api.upload_folder(
                    repo_id=repo_id,
                    folder_path=folder,
                    commit_message=message,
                    # A fresh list each call: upload_folder extends the list it is given.
                    ignore_patterns=list(PUBLISH_IGNORE_PATTERNS),
                ),
                f"upload_folder({repo_id})",
            )
        except Exception as exc:
            folder_error = describe(exc)
            if classify_error(exc) == "fatal":
                raise _fail(report, f"upload refused: {folder_error}", files) from None
            logger.warning("Folder commit to %s failed (%s); uploading file by file", repo_id, folder_error)
        else:
            report.uploaded = list(files)
            report.commit_url, report.revision = info.commit_url, info.oid
            return

        # Per-file fallback: one commit per file, so one bad file cannot block the others.
        fatal: str | None = None
        for path in files:
            if fatal is not None:
                report.failed[path] = fatal
                continue
            try:
                info = retried(
                    lambda path=path: api.upload_file(
                        path_or_fileobj=str(folder / path),
                        path_in_repo=path,
                        repo_id=repo_id,
                        commit_message=f"{message} [{path}]",
                    ),
                    f"upload_file({path})",
                )
            except Exception as exc:
                report.failed[path] = describe(exc)
                if classify_error(exc) == "fatal":
                    fatal = report.failed[path]
            else:
                report.uploaded.append(path)
                report.commit_url, report.revision = info.commit_url, info.oid

    if report.failed:
        summary = "; ".join(f"{path}: {error}" for path, error in report.failed.items())
        raise _fail(
            report,
            f"{len(report.failed)} of {len(files)} file(s) not uploaded",
            detail=f"folder commit failed ({folder_error}), then per file: {summary}",
        )
