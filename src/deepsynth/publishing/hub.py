"""Publish a LoRA adapter folder to the Hugging Face Hub: the entry point, its checks and the backend table.

:func:`push_adapter` is the single entry point used by the CLI (``deepsynth push``), the trainer's
``push_to_hub`` and the web UI. It validates its inputs before anything is sent, writes the model
card, then uploads through one of two backends:

- ``"http"`` (default): ``huggingface_hub.HfApi`` (see :mod:`deepsynth.publishing.http_backend`);
- ``"git"``: plain ``git`` + ``git-lfs`` subprocesses (see :mod:`deepsynth.publishing.git_backend`).

Every outcome is a :class:`PushReport`; any failure raises :class:`PushError` carrying the complete
report. Local artifacts are never modified or deleted, with one documented exception: when
``write_card`` is true, the model card is written to ``README.md`` inside the adapter folder before
the upload (a hand-written ``README.md`` is kept, see :func:`~deepsynth.publishing.model_card.write_model_card`).

The token (argument, else ``HF_TOKEN``, else the stored ``hf auth login``) is only ever held in
memory: it is never written to a file, logged, or put into an exception message or a report.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, HFValidationError, filter_repo_objects, validate_repo_id

from deepsynth.publishing.common import PUBLISH_IGNORE_PATTERNS, PushReport, fail
from deepsynth.publishing.git_backend import missing_git_tools, push_with_git
from deepsynth.publishing.http_backend import push_with_http
from deepsynth.publishing.model_card import CARD_MARKER, read_run_json, write_model_card

logger = logging.getLogger(__name__)

# Backend name → the function that uploads ``files`` of a checked folder and completes the report.
BACKENDS: dict[str, Callable[..., None]] = {"http": push_with_http, "git": push_with_git}
DEFAULT_BACKEND = "http"

DEFAULT_RETRY_BASE_DELAY = 1.0  # seconds; doubled after each failed attempt
RETRY_DELAY_ENV = "DS_PUSH_RETRY_DELAY"
BACKEND_ENV = "DS_PUSH_BACKEND"
GIT_REMOTE_ENV = "DS_GIT_REMOTE"

_REPO_ID_FORM = re.compile(r"^[^/\s]+/[^/\s]+$")


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


# --------------------------------------------------------------------------------------- entry point


def push_adapter(
    adapter_dir: str | Path, repo_id: str, *, private: bool = False, token: str | None = None,
    backend: str | None = None, commit_message: str | None = None, max_retries: int = 4, write_card: bool = True,
    retry_base_delay: float | None = None, git_remote_url: str | None = None,
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

    Returns the :class:`PushReport` of a complete push. Raises :class:`PushError` on invalid
    arguments, missing tools, or any file not published; its ``.report`` is complete.
    """
    backend_name = (backend or os.environ.get(BACKEND_ENV) or DEFAULT_BACKEND).strip().lower()
    report = PushReport(repo_id=str(repo_id), backend=backend_name, endpoint=resolve_endpoint())
    folder = Path(adapter_dir).expanduser()
    remote_url = git_remote_url or os.environ.get(GIT_REMOTE_ENV) or None
    # 1. Everything that can be checked locally is checked before any request is sent.
    _check_arguments(report, repo_id, folder, max_retries)
    base_delay = _resolve_retry_delay(retry_base_delay)
    _check_tools(report, remote_url)
    resolved_token = resolve_token(token)
    # 2. Model card, then the file list (so README.md is part of it).
    if write_card:
        report.card_written = _write_card(report, folder)
    files = _files_to_publish(report, folder, resolved_token)
    message = commit_message or default_commit_message(folder)
    logger.info("Pushing %d file(s) from %s to %s via %s", len(files), folder, repo_id, backend_name)
    # 3. Upload.
    BACKENDS[backend_name](
        folder, files, report, token=resolved_token, private=private, message=message,
        max_retries=max_retries, base_delay=base_delay, remote_url=remote_url,
    )
    logger.info("Pushed %d file(s) to %s (%s)", len(report.uploaded), repo_id, report.commit_url or report.revision)
    return report


def _check_arguments(report: PushReport, repo_id: str, folder: Path, max_retries: int) -> None:
    """The backend name, the repository id, the adapter folder and ``max_retries``; PushError naming the bad one."""
    if report.backend not in BACKENDS:
        raise fail(report, f"backend: unknown {report.backend!r}; expected one of {', '.join(BACKENDS)}", invalid=True)
    try:
        validate_hub_repo_id(repo_id)
    except ValueError as exc:
        raise fail(report, str(exc), invalid=True) from None
    if not folder.is_dir():
        raise fail(report, f"adapter_dir: {str(folder)!r} is not a directory", invalid=True)
    if not (folder / "adapter_config.json").is_file():
        message = f"adapter_dir: {str(folder)!r} has no adapter_config.json (not a PEFT adapter folder)"
        raise fail(report, message, invalid=True)
    if max_retries < 0:
        raise fail(report, f"max_retries: must be >= 0, got {max_retries}", invalid=True)


def _check_tools(report: PushReport, remote_url: str | None) -> None:
    """The Hub must be reachable (not offline) unless git pushes elsewhere; the git backend needs git + git-lfs."""
    uses_hub_api = report.backend == "http" or remote_url is None
    if uses_hub_api and constants.HF_HUB_OFFLINE:
        raise fail(report, "huggingface_hub offline mode is enabled (HF_HUB_OFFLINE): unset it to push")
    if report.backend == "git":
        problem = missing_git_tools()
        if problem:
            raise fail(report, problem)


def _write_card(report: PushReport, folder: Path) -> bool:
    """Write the model card into ``folder``; whether the README is ours (a hand-written one is kept)."""
    try:
        card = write_model_card(folder, repo_id=report.repo_id)
        return CARD_MARKER in card.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        message = f"could not write the model card into {str(folder)!r} ({exc}); pass write_card=False"
        raise fail(report, message) from None


def _files_to_publish(report: PushReport, folder: Path, token: str | None) -> list[str]:
    """The publishable files (the ignored ones go to the report); refuses any that holds the token."""
    files, report.ignored = list_publishable_files(folder)
    leaking = files_containing(folder, files, token)
    if leaking:
        # Last line of defence: a config or log that captured the token must not go public.
        raise fail(report, f"refusing to publish: the Hub token appears in {', '.join(leaking)}", files)
    return files


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

