"""What both publishing backends share: the push report and its error, retries, error classification, token scrubbing.

Neither backend imports the other nor the entry point (:mod:`deepsynth.publishing.hub`): they all
build on this module.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import httpx2  # huggingface_hub's HTTP client (a hard dependency of huggingface_hub 2.x)
from huggingface_hub.errors import HfHubHTTPError

logger = logging.getLogger(__name__)

T = TypeVar("T")

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

MAX_RETRY_DELAY = 30.0  # seconds; the backoff doubles up to this

# Statuses that mean "this will not work however often we try": bad or missing credentials,
# no permission, unknown repository. Everything else that is not transient may be specific to one
# file, so it is worth the per-file fallback.
_FATAL_STATUSES = frozenset({401, 403, 404, 407})
_TRANSIENT_STATUSES = frozenset({408, 425, 429})

_URL_QUERY = re.compile(r"(https?://[^\s'\"?]+)\?[^\s'\"]*")
_MDN_HINT = re.compile(r" For more information check: https://developer\.mozilla\.org/\S+")


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


class PushArgumentError(PushError):
    """A push refused before anything was sent: a bad argument (repo id, adapter folder, backend)."""


def fail(report: PushReport, message: str, files: list[str] | None = None, *, detail: str = "",
         invalid: bool = False) -> PushError:
    """Complete ``report`` for a failure and build the error to raise.

    ``files`` not uploaded yet are marked failed with ``message``; ``detail`` only goes into the
    exception text (the report already holds it per file). ``invalid``: a bad argument
    (:class:`PushArgumentError`).
    """
    report.error = message
    for path in files or []:
        if path not in report.uploaded:
            report.failed.setdefault(path, message)
    text = f"push to {report.repo_id} failed: {message}" + (f"; {detail}" if detail else "")
    return (PushArgumentError if invalid else PushError)(text, report)


def scrub(text: str, secret: str | None) -> str:
    """Remove every spelling of ``secret`` (raw or URL-encoded) from ``text``."""
    if not secret:
        return text
    for spelling in {secret, quote(secret, safe="")}:
        text = text.replace(spelling, "***")
    return text


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _http_status(exc: BaseException) -> int | None:
    for link in _causes(exc):
        if isinstance(link, HfHubHTTPError) and getattr(link, "response", None) is not None:
            return link.response.status_code
    return None


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


def create_repo(report: PushReport, files: list[str], *, token: str | None, private: bool,
                retried: Callable[[Callable[[], T], str], T]) -> None:
    """Create ``report.repo_id`` on the Hub if missing (``private`` applies then); raise PushError if refused."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=report.endpoint, token=token, library_name="deepsynth")
    repo_id = report.repo_id
    try:
        retried(lambda: api.create_repo(repo_id, private=private, exist_ok=True), f"create_repo({repo_id})")
    except Exception as exc:
        detail = describe_error(exc, token, had_token=token is not None)
        raise fail(report, f"could not create or access the repository: {detail}", files) from None
