"""backend="git": git + git-lfs subprocesses, to a local bare repository and to the fake hub over HTTP."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from publishing_support import INTERMEDIATE_FILES, REPO_ID, TOKEN, assert_no_token, published, snapshot

from deepsynth.publishing import PushError, push_adapter
from deepsynth.publishing.common import PushReport
from deepsynth.publishing.git_backend import push_with_git
from deepsynth.publishing.hub import list_publishable_files

HAS_GIT = shutil.which("git") is not None
needs_git_lfs = pytest.mark.skipif(
    not HAS_GIT or subprocess.run(["git", "lfs", "version"], capture_output=True).returncode != 0,
    reason="git and git-lfs are required (apt-get install -y git git-lfs)",
)

FAST = {"retry_base_delay": 0.001}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def bare_repo(path: Path) -> Path:
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(path)], check=True)
    return path


def lfs_pointer_oid(repo: Path, path: str) -> str:
    pointer = git(repo, "cat-file", "-p", f"main:{path}")
    assert pointer.startswith("version https://git-lfs.github.com/spec/v1"), pointer
    return next(line.split(":", 1)[1] for line in pointer.splitlines() if line.startswith("oid sha256:"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@needs_git_lfs
def test_push_to_local_bare_repository_with_lfs(hub_env, make_adapter, tmp_path, monkeypatch):
    folder = make_adapter()
    before = snapshot(folder)
    remote = bare_repo(tmp_path / "remote.git")
    monkeypatch.setenv("DS_PUSH_BACKEND", "git")
    monkeypatch.setenv("DS_GIT_REMOTE", str(remote))

    report = push_adapter(folder, REPO_ID, token=TOKEN, **FAST)

    assert report.ok and report.backend == "git"
    files = published(folder)
    assert set(report.uploaded) == files
    tree = set(git(remote, "ls-tree", "-r", "--name-only", "main").split())
    assert tree == files | {".gitattributes"}
    assert not tree & set(INTERMEDIATE_FILES)
    assert report.revision == git(remote, "rev-parse", "main").strip()
    # Weights and images are LFS pointers in git; their content lives in the bare repo's LFS store.
    for path in ("adapter_model.safetensors", "loss_curve.png"):
        oid = lfs_pointer_oid(remote, path)
        assert oid == sha256(folder / path)
        stored = remote / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
        assert stored.read_bytes() == (folder / path).read_bytes()
    # Small text files are plain blobs, byte for byte.
    assert git(remote, "show", "main:training_config.json") == (folder / "training_config.json").read_text()
    assert "library_name: peft" in git(remote, "show", "main:README.md")
    assert snapshot(folder) == before

    # Pushing the same folder again is a no-op that still succeeds.
    again = push_adapter(folder, REPO_ID, token=TOKEN, **FAST)
    assert again.ok and again.revision == report.revision


@needs_git_lfs
def test_push_over_http_uses_the_token_only_through_the_credential_helper(
    git_hub, make_adapter, tmp_path, caplog, capsys
):
    caplog.set_level(logging.DEBUG)
    folder = make_adapter()
    # A non-LFS-pattern file above the size threshold must be tracked by name.
    (folder / "vocab.txt").write_bytes(os.urandom(4096))
    before = snapshot(folder)
    files, _ = list_publishable_files(folder)
    work_dir = tmp_path / "git-work"
    report = PushReport(repo_id=REPO_ID, backend="git", endpoint=git_hub.url)

    push_with_git(folder, files, report, token=TOKEN, private=True, message="git push test", max_retries=2,
                  base_delay=0.001, work_dir=work_dir, lfs_size_threshold=1024)

    assert report.ok and report.commit_url == f"{git_hub.url}/{REPO_ID}/commit/{report.revision}"
    assert git_hub.repos[REPO_ID].private is True  # created through the API first
    bare = git_hub.bare_repo(REPO_ID)
    assert set(git(bare, "ls-tree", "-r", "--name-only", "main").split()) == set(files) | {".gitattributes"}
    assert git(bare, "log", "-1", "--format=%s", "main").strip() == "git push test"
    # LFS content went through the hub's batch API to its store.
    for path in ("adapter_model.safetensors", "vocab.txt"):
        oid = lfs_pointer_oid(bare, path)
        assert git_hub.lfs_objects[oid] == (folder / path).read_bytes()
    # git and git-lfs authenticated with Basic auth carrying the token...
    basic = f"Basic {base64.b64encode(f'deepsynth:{TOKEN}'.encode()).decode()}"
    assert any(r.authorization == basic for r in git_hub.requests_to("/git-receive-pack"))
    assert any(r.authorization == basic for r in git_hub.requests_to("/info/lfs/objects/batch"))
    # ...yet the token is nowhere on disk (clone, .git/config, hooks, LFS cache), in logs or output.
    out, err = capsys.readouterr()
    # tmp_path holds the adapter, the kept clone, the isolated git/HF homes and the fake hub's repos.
    assert_no_token(paths=(tmp_path,), texts=(json.dumps(report.to_dict()), caplog.text, out, err))
    assert TOKEN not in (work_dir / "repo" / ".git" / "config").read_text()
    assert snapshot(folder) == before


@needs_git_lfs
def test_push_adapter_git_backend_against_the_hub_endpoint(
    git_hub, make_adapter, tmp_path, monkeypatch, caplog, capsys
):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    folder = make_adapter()

    report = push_adapter(folder, REPO_ID, token=TOKEN, backend="git", **FAST)

    assert report.ok and set(report.uploaded) == published(folder)
    assert report.commit_url == f"{git_hub.url}/{REPO_ID}/commit/{report.revision}"
    assert list((tmp_path / "tmp").iterdir()) == []  # the temporary clone is removed
    out, err = capsys.readouterr()
    assert_no_token(paths=(tmp_path,), texts=(json.dumps(report.to_dict()), caplog.text, out, err))


@needs_git_lfs
def test_wrong_token_fails_with_a_scrubbed_message(git_hub, make_adapter, tmp_path):
    wrong = "hf_WrongButDistinctiveToken_55aa"
    git_hub._create_repo(REPO_ID, private=False)
    folder = make_adapter()

    with pytest.raises(PushError) as caught:
        push_adapter(folder, REPO_ID, token=wrong, backend="git", git_remote_url=f"{git_hub.url}/{REPO_ID}", **FAST)

    report = caught.value.report
    assert set(report.failed) == published(folder) and report.uploaded == []
    assert "git clone" in report.error
    for text in (str(caught.value), json.dumps(report.to_dict())):
        assert wrong not in text
    # Authentication failures are not retried.
    assert len([r for r in git_hub.requests_to("/info/refs") if r.authorization]) == 1


@pytest.mark.skipif(not HAS_GIT, reason="git is required")
def test_missing_git_lfs_is_a_clear_error(hub_env, make_adapter, tmp_path, monkeypatch):
    remote = bare_repo(tmp_path / "remote.git")
    folder = make_adapter()
    real_path = os.environ["PATH"]
    only_git = tmp_path / "bin"
    only_git.mkdir()
    (only_git / "git").symlink_to(shutil.which("git"))
    monkeypatch.setenv("PATH", str(only_git))
    monkeypatch.setenv("GIT_EXEC_PATH", str(only_git))  # nor a git-lfs inside git's own exec path

    with pytest.raises(PushError, match="git-lfs") as caught:
        push_adapter(folder, REPO_ID, token=TOKEN, backend="git", git_remote_url=str(remote))

    assert "apt-get install git-lfs" in str(caught.value)
    assert not (folder / "README.md").exists()  # validation happens before anything is written or sent
    unpushed = subprocess.run(["git", "-C", str(remote), "rev-parse", "--verify", "-q", "main"],
                              capture_output=True, env={**os.environ, "PATH": real_path})
    assert unpushed.returncode != 0  # nothing was pushed


@needs_git_lfs
def test_transient_git_error_is_retried(git_hub, make_adapter):
    git_hub._create_repo(REPO_ID, private=False)
    git_hub.fail("git", 503, times=1)

    report = push_adapter(make_adapter(), REPO_ID, token=TOKEN, backend="git",
                          git_remote_url=f"{git_hub.url}/{REPO_ID}", **FAST)

    assert report.ok
    assert git(git_hub.bare_repo(REPO_ID), "rev-parse", "main").strip() == report.revision
