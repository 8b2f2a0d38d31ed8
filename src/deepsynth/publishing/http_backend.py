"""``backend="http"``: publish an adapter through ``huggingface_hub.HfApi``, with retries and a per-file fallback.

``create_repo`` + ``upload_folder`` (one commit), retried with exponential backoff on transient
errors; when the folder commit keeps failing for a reason that may be file-specific, one
``upload_file`` commit per file, so that everything that can be published is.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx2  # huggingface_hub's HTTP client (a hard dependency of huggingface_hub 2.x)
from huggingface_hub import HfApi, constants
from huggingface_hub.utils import build_hf_headers, get_session

from deepsynth.publishing.common import (
    PUBLISH_IGNORE_PATTERNS,
    PushReport,
    call_with_retries,
    classify_error,
    create_repo,
    describe_error,
    fail,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


# --------------------------------------------------------------------------------------- Xet policy

# `huggingface_hub` decides to use Xet storage only from whether `hf_xet` is installed and from
# `constants.HF_HUB_DISABLE_XET` (frozen at import): it never asks the server. A Hub-compatible
# server without Xet (an on-premise mirror, the tests' fake hub) would then fail every LFS upload,
# so we ask the server for a Xet write token first and turn Xet off for this push if none is offered.
_XET_LOCK = threading.RLock()


def hub_offers_xet(endpoint: str, repo_id: str, token: str | None) -> bool:
    """Whether ``endpoint`` hands out Xet write tokens for ``repo_id`` (and Xet is usable here)."""
    if os.environ.get("HF_HUB_DISABLE_XET", "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return False
    if constants.HF_HUB_DISABLE_XET or importlib.util.find_spec("hf_xet") is None:
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


# --------------------------------------------------------------------------------------- upload


@dataclass
class _Upload:
    """One push in progress: where from, where to, and how to retry and describe failures."""

    api: HfApi
    folder: Path
    files: list[str]
    report: PushReport
    token: str | None
    message: str
    max_retries: int
    base_delay: float

    def retried(self, fn: Callable[[], T], what: str) -> T:
        return call_with_retries(fn, what=what, max_retries=self.max_retries, base_delay=self.base_delay)

    def describe(self, exc: BaseException) -> str:
        return describe_error(exc, self.token, had_token=self.token is not None)


def push_with_http(
    folder: Path,
    files: list[str],
    report: PushReport,
    *,
    token: str | None,
    private: bool,
    message: str,
    max_retries: int,
    base_delay: float,
    remote_url: str | None = None,  # noqa: ARG001 - the git backend's option; the table passes it to both
) -> None:
    """create_repo + upload_folder, then per-file upload_file for whatever the folder commit could not do."""
    assert report.endpoint is not None
    api = HfApi(endpoint=report.endpoint, token=token, library_name="deepsynth")
    upload = _Upload(api, folder, files, report, token, message, max_retries, base_delay)
    create_repo(report, files, token=token, private=private, retried=upload.retried)
    with _xet_allowed(hub_offers_xet(report.endpoint, report.repo_id, token)):
        folder_error = _upload_folder(upload)
        if folder_error is None:
            return
        _upload_each_file(upload)
    if report.failed:
        summary = "; ".join(f"{path}: {error}" for path, error in report.failed.items())
        raise fail(
            report,
            f"{len(report.failed)} of {len(files)} file(s) not uploaded",
            detail=f"folder commit failed ({folder_error}), then per file: {summary}",
        )


def _upload_folder(upload: _Upload) -> str | None:
    """Every file in one commit: None when it worked, else why not (a fatal refusal raises PushError)."""
    report, repo_id = upload.report, upload.report.repo_id
    try:
        info = upload.retried(
            lambda: upload.api.upload_folder(
                repo_id=repo_id,
                folder_path=upload.folder,
                commit_message=upload.message,
                # A fresh list each call: upload_folder extends the list it is given.
                ignore_patterns=list(PUBLISH_IGNORE_PATTERNS),
            ),
            f"upload_folder({repo_id})",
        )
    except Exception as exc:
        folder_error = upload.describe(exc)
        if classify_error(exc) == "fatal":
            raise fail(report, f"upload refused: {folder_error}", upload.files) from None
        logger.warning("Folder commit to %s failed (%s); uploading file by file", repo_id, folder_error)
        return folder_error
    report.uploaded = list(upload.files)
    report.commit_url, report.revision = info.commit_url, info.oid
    return None


def _upload_each_file(upload: _Upload) -> None:
    """One commit per file, so one bad file cannot block the others; after a fatal error, the rest fail with it."""
    report = upload.report
    fatal: str | None = None
    for path in upload.files:
        if fatal is not None:
            report.failed[path] = fatal
            continue
        try:
            info = upload.retried(
                lambda path=path: upload.api.upload_file(
                    path_or_fileobj=str(upload.folder / path),
                    path_in_repo=path,
                    repo_id=report.repo_id,
                    commit_message=f"{upload.message} [{path}]",
                ),
                f"upload_file({path})",
            )
        except Exception as exc:
            report.failed[path] = upload.describe(exc)
            if classify_error(exc) == "fatal":
                fatal = report.failed[path]
        else:
            report.uploaded.append(path)
            report.commit_url, report.revision = info.commit_url, info.oid
