"""``backend="git"``: publish an adapter with plain ``git`` and ``git-lfs`` subprocesses.

Used where the HTTP API is not an option (corporate proxies that only allow git, mirrors). It
clones the repository into a temporary folder, tracks weights and other large or binary files
with LFS, copies the publishable files (same ignore list as the HTTP backend), commits and pushes.

The token never touches disk or argv: git and git-lfs get it from a credential helper declared
through ``GIT_CONFIG_*`` environment variables of the child processes only. The helper answers
only for the remote's own host and ignores ``store``/``erase``, and every other configured helper
is disabled for these commands, so no credential store ever sees the token. Every message that
leaves this module is scrubbed of it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from deepsynth.publishing.common import PushReport, call_with_retries, classify_error, create_repo, fail, scrub

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Always stored with LFS (binary); any other file above LFS_SIZE_THRESHOLD is tracked by name.
LFS_TRACK_PATTERNS: tuple[str, ...] = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.png", "*.jpg", "*.jpeg")
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # the Hub rejects plain git blobs above 10 MB
BRANCH = "main"
GIT_TIMEOUT_S = 3600

INSTALL_HINT = (
    "install it (Debian/Ubuntu: `apt-get install git-lfs`; macOS: `brew install git-lfs`; "
    "others: https://git-lfs.com), or push with backend='http'"
)

# Variables the credential helper reads; set only in the environment of our git children.
_PASSWORD_VAR = "DEEPSYNTH_GIT_PASSWORD"
_USERNAME_VAR = "DEEPSYNTH_GIT_USERNAME"
_HOST_VAR = "DEEPSYNTH_GIT_HOST"
# A shell function: answer `get` for our host only; ignore `store` and `erase`.
_CREDENTIAL_HELPER = (
    '!f() { test "$1" = get || exit 0; host=; '
    'while IFS= read -r line; do case "$line" in host=*) host="${line#host=}";; esac; done; '
    f'test "$host" = "${_HOST_VAR}" || exit 0; '
    f"printf 'username=%s\\npassword=%s\\n' \"${_USERNAME_VAR}\" \"${_PASSWORD_VAR}\"; }}; f"
)

_TRANSIENT_GIT = re.compile(
    r"HTTP 5\d\d|error: 5\d\d|returned error: 5\d\d|\b429\b|timed out|Could not resolve host|"
    r"Connection (?:refused|reset|timed out)|RPC failed|early EOF|unexpected disconnect|"
    r"remote end hung up|Failed to connect",
    re.IGNORECASE,
)


class GitCommandError(RuntimeError):
    """A git command failed; the message is already scrubbed of the token."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def missing_git_tools(env: Mapping[str, str] | None = None) -> str | None:
    """A message saying which of git / git-lfs is missing and how to install it, or None."""
    env = dict(os.environ if env is None else env)
    git = shutil.which("git", path=env.get("PATH"))
    if git is None:
        return "backend 'git' needs the `git` executable on PATH: install git, or push with backend='http'"
    probe = subprocess.run([git, "lfs", "version"], env=env, capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"backend 'git' requires git-lfs, which is not installed: {INSTALL_HINT}"
    return None


def push_with_git(
    folder: Path,
    files: list[str],
    report: PushReport,
    *,
    token: str | None,
    private: bool,
    message: str,
    max_retries: int,
    base_delay: float,
    remote_url: str | None = None,
    work_dir: Path | None = None,
    lfs_size_threshold: int = LFS_SIZE_THRESHOLD,
) -> None:
    """Push ``files`` of ``folder`` to the repository of ``report`` with git + git-lfs.

    Without ``remote_url`` the repository is created through the Hub API if missing and the
    remote is ``{endpoint}/{repo_id}``. ``work_dir`` (kept afterwards, for inspection) replaces the
    temporary clone folder, which is otherwise removed. Completes ``report`` or raises PushError.
    """
    assert report.endpoint is not None
    on_hub = remote_url is None
    remote = remote_url or f"{report.endpoint}/{report.repo_id}"

    def retried(fn: Callable[[], T], what: str) -> T:
        return call_with_retries(fn, what=what, max_retries=max_retries, base_delay=base_delay, classify=_classify)

    if on_hub:
        create_repo(report, files, token=token, private=private, retried=retried)
    owned = work_dir is None
    root = Path(tempfile.mkdtemp(prefix="deepsynth-git-push-")) if owned else Path(work_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        revision = _commit_and_push(folder, files, root / "repo", remote, token, message=message,
                                    lfs_size_threshold=lfs_size_threshold, retried=retried, label=report.repo_id)
    except (GitCommandError, OSError) as exc:
        raise fail(report, scrub(f"git backend: {exc}", token), files) from None
    finally:
        if owned:
            shutil.rmtree(root, ignore_errors=True)
    report.uploaded = list(files)
    report.revision = revision
    report.commit_url = f"{report.endpoint}/{report.repo_id}/commit/{revision}" if on_hub else None


# --------------------------------------------------------------------------------------- steps


def _commit_and_push(folder: Path, files: list[str], clone: Path, remote: str, token: str | None, *, message: str,
                     lfs_size_threshold: int, retried: Callable, label: str) -> str:
    """Clone ``remote``, copy ``files`` in (LFS-tracked as needed), commit and push; the pushed revision."""
    env = _git_env(remote, token, hooks_dir=clone / ".git" / "hooks")
    retried(lambda: _clone(remote, clone, env, token), "git clone")
    _prepare(clone, env, token)
    for path in files:
        target = clone / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / path, target)  # content only: the source is never touched
    _track_lfs(clone, files, env, token, lfs_size_threshold)
    _git(["add", "-A"], clone, env, token)
    if _git(["status", "--porcelain"], clone, env, token).strip():
        _git(["commit", "-q", "-m", message], clone, env, token)
        retried(lambda: _git(["push", "origin", f"HEAD:refs/heads/{BRANCH}"], clone, env, token), "git push")
    else:
        logger.info("%s already holds these files: nothing to push", label)
    return _git(["rev-parse", "HEAD"], clone, env, token).strip()


def _clone(remote: str, clone: Path, env: dict[str, str], token: str | None) -> None:
    if clone.exists():
        shutil.rmtree(clone)  # a previous, failed attempt of this same push
    # Shallow: only the tip is needed to commit on top of it. Local paths ignore --depth (and say so).
    depth = [] if _is_local(remote) else ["--depth", "1"]
    _git(["clone", "-q", *depth, remote, str(clone)], clone.parent, env, token)


def _prepare(clone: Path, env: dict[str, str], token: str | None) -> None:
    if _git(["rev-parse", "--verify", "-q", "HEAD"], clone, env, token, check=False) == "":
        # Empty repository: start the Hub's default branch.
        _git(["symbolic-ref", "HEAD", f"refs/heads/{BRANCH}"], clone, env, token)
    _git(["lfs", "install", "--local"], clone, env, token)


def _track_lfs(clone: Path, files: list[str], env: dict[str, str], token: str | None, threshold: int) -> None:
    _git(["lfs", "track", "--", *LFS_TRACK_PATTERNS], clone, env, token)
    large = [
        path
        for path in files
        if (clone / path).stat().st_size > threshold and not any(Path(path).match(p) for p in LFS_TRACK_PATTERNS)
    ]
    if large:
        _git(["lfs", "track", "--filename", "--", *large], clone, env, token)


# --------------------------------------------------------------------------------------- plumbing


def _git_env(remote: str, token: str | None, *, hooks_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    for leaky in ("GIT_ASKPASS", "SSH_ASKPASS", _PASSWORD_VAR, _USERNAME_VAR, _HOST_VAR):
        env.pop(leaky, None)
    # Fail instead of prompting; do not download existing LFS files of the remote on clone.
    env.update({"GIT_TERMINAL_PROMPT": "0", "GCM_INTERACTIVE": "never", "GIT_LFS_SKIP_SMUDGE": "1"})
    config = [
        # Forget every configured credential helper for these commands (they could store the
        # token), then add ours when there is a token.
        ("credential.helper", ""),
        # LFS hooks must land in (and be read from) this clone, whatever core.hooksPath says.
        ("core.hooksPath", str(hooks_dir)),
        ("commit.gpgsign", "false"),
        # The Hub has no LFS locking API: skip the lock check before each push.
        ("lfs.locksverify", "false"),
    ]
    if token:
        config.append(("credential.helper", _CREDENTIAL_HELPER))
        env[_PASSWORD_VAR] = token
        env[_USERNAME_VAR] = "deepsynth"
        env[_HOST_VAR] = urlsplit(remote).netloc.rpartition("@")[2]
    if not _has_identity(env):
        config += [("user.name", "DeepSynth"), ("user.email", "deepsynth@users.noreply.huggingface.co")]
    start = int(env.get("GIT_CONFIG_COUNT", "0") or 0)
    for offset, (key, value) in enumerate(config):
        env[f"GIT_CONFIG_KEY_{start + offset}"] = key
        env[f"GIT_CONFIG_VALUE_{start + offset}"] = value
    env["GIT_CONFIG_COUNT"] = str(start + len(config))
    return env


def _has_identity(env: dict[str, str]) -> bool:
    if env.get("GIT_AUTHOR_EMAIL") and env.get("GIT_COMMITTER_EMAIL"):
        return True
    probe = subprocess.run(["git", "config", "--get", "user.email"], env=env, capture_output=True, text=True)
    return probe.returncode == 0 and bool(probe.stdout.strip())


def _git(args: list[str], cwd: Path, env: dict[str, str], token: str | None, *, check: bool = True) -> str:
    """Run ``git *args``; return stdout, or raise GitCommandError with a token-free message."""
    logger.debug("git %s (in %s)", " ".join(args), cwd)
    try:
        proc = subprocess.run(
            ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise GitCommandError(f"`git {args[0]}` timed out after {GIT_TIMEOUT_S}s", transient=True) from None
    if proc.returncode != 0:
        if not check:
            return ""
        output = " ".join((proc.stderr or proc.stdout).split())
        text = scrub(f"`git {args[0]}` failed (exit {proc.returncode}): {output}", token)
        raise GitCommandError(text, transient=bool(_TRANSIENT_GIT.search(output)))
    return proc.stdout


def _classify(exc: BaseException) -> str:
    if isinstance(exc, GitCommandError):
        return "transient" if exc.transient else "other"
    return classify_error(exc)


def _is_local(remote: str) -> bool:
    return "://" not in remote or remote.startswith("file://")
