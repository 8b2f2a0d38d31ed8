"""push_adapter over HTTP against the fake hub (real huggingface_hub client, real sockets)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import pytest
from huggingface_hub import constants
from publishing_support import (
    BIG_ADAPTER_BYTES,
    INTERMEDIATE_FILES,
    REPO_ID,
    TOKEN,
    assert_no_token,
    published,
    snapshot,
)

from deepsynth.publishing import PushError, PushReport, push_adapter
from deepsynth.publishing.common import PUBLISH_IGNORE_PATTERNS
from deepsynth.publishing.http_backend import hub_offers_xet
from deepsynth.publishing.hub import list_publishable_files, resolve_token

FAST = {"retry_base_delay": 0.001}


def test_push_uploads_publishable_files_including_a_17mb_adapter(fake_hub, make_adapter):
    folder = make_adapter(adapter_bytes=BIG_ADAPTER_BYTES)
    before = snapshot(folder)
    # HF_ENDPOINT was set after huggingface_hub was imported: only a call-time read can see it.
    assert constants.ENDPOINT != fake_hub.url

    report = push_adapter(folder, REPO_ID, token=TOKEN, **FAST)

    assert isinstance(report, PushReport) and report.ok
    expected = published(folder)
    assert "README.md" in expected and "adapter_model.safetensors" in expected
    assert set(report.uploaded) == expected and report.failed == {}
    remote = fake_hub.files(REPO_ID)
    assert set(remote) == expected
    for path, content in remote.items():
        assert content == (folder / path).read_bytes(), path
    # Intermediates stay local and are reported as such.
    assert set(report.ignored) == set(INTERMEDIATE_FILES)
    assert not any(path.startswith(("checkpoint-", "epoch_", "runs/")) for path in remote)
    # One folder commit, weights through LFS, presigned-style upload without credentials.
    (commit,) = fake_hub.commits
    assert "adapter_model.safetensors" in commit.lfs_paths and "loss_curve.png" in commit.lfs_paths
    assert commit.summary == "Upload DeepSynth LoRA adapter (preset attention_experts, base deepseek-ai/DeepSeek-OCR-2)"
    assert report.revision == commit.oid and report.commit_url == f"{fake_hub.url}/{REPO_ID}/commit/{commit.oid}"
    api_calls = [r for r in fake_hub.requests if not r.path.startswith("/__lfs/")]
    assert api_calls and all(r.authorization == f"Bearer {TOKEN}" for r in api_calls)
    assert all(r.authorization is None for r in fake_hub.requests_to("/__lfs/upload/"))
    # Local artifacts untouched; the card was written.
    assert snapshot(folder) == before
    assert report.card_written and (folder / "README.md").read_text().startswith("---\n")
    assert report.to_dict()["ok"] is True and json.dumps(report.to_dict())
    # Xet is switched off only for the duration of the push.
    assert constants.HF_HUB_DISABLE_XET is False


def test_commit_500_once_is_retried(fake_hub, make_adapter):
    folder = make_adapter()
    fake_hub.fail("commit", 500, times=1)

    report = push_adapter(folder, REPO_ID, token=TOKEN, **FAST)

    assert report.ok
    assert len(fake_hub.requests_to("/commit/main")) == 2
    assert len(fake_hub.commits) == 1
    assert set(fake_hub.files(REPO_ID)) == published(folder)


def test_401_fails_at_once_without_retries(fake_hub, make_adapter):
    folder = make_adapter()
    before = snapshot(folder)
    started = time.monotonic()

    with pytest.raises(PushError) as caught:
        push_adapter(folder, REPO_ID, token="hf_wrong", max_retries=4, retry_base_delay=5)

    assert time.monotonic() - started < 4  # no backoff sleep happened
    assert len(fake_hub.requests_to("/api/repos/create")) == 1
    assert not fake_hub.requests_to("/preupload/") and not fake_hub.requests_to("/commit/")
    report = caught.value.report
    assert not report.ok and report.uploaded == []
    assert set(report.failed) == published(folder)
    assert "401" in report.error and "token was rejected" in report.error
    assert "401" in str(caught.value)
    assert snapshot(folder) == before


def test_missing_token_is_explained(fake_hub, make_adapter):
    with pytest.raises(PushError, match="no token found"):
        push_adapter(make_adapter(), REPO_ID, **FAST)


def test_large_file_always_failing_falls_back_to_per_file_uploads(fake_hub, make_adapter):
    folder = make_adapter(adapter_bytes=BIG_ADAPTER_BYTES)
    before = snapshot(folder)
    big_oid = hashlib.sha256((folder / "adapter_model.safetensors").read_bytes()).hexdigest()
    fake_hub.fail("lfs_upload", 413, times=None, match=big_oid)

    with pytest.raises(PushError) as caught:
        push_adapter(folder, REPO_ID, token=TOKEN, **FAST)

    report = caught.value.report
    others = published(folder) - {"adapter_model.safetensors"}
    assert set(report.failed) == {"adapter_model.safetensors"}
    assert "413" in report.failed["adapter_model.safetensors"]
    assert set(report.uploaded) == others
    remote = fake_hub.files(REPO_ID)
    assert set(remote) == others
    assert all(remote[path] == (folder / path).read_bytes() for path in others)
    assert "adapter_model.safetensors" in str(caught.value) and "1 of" in report.error
    assert report.revision == fake_hub.commits[-1].oid
    assert snapshot(folder) == before


def test_transient_errors_exhaust_retries_then_report_every_file(fake_hub, make_adapter):
    folder = make_adapter()
    fake_hub.fail("commit", 503, times=None)

    with pytest.raises(PushError) as caught:
        push_adapter(folder, REPO_ID, token=TOKEN, max_retries=1, **FAST)

    files = published(folder)
    # Folder commit: 1 try + 1 retry; then per file: 1 try + 1 retry each.
    assert len(fake_hub.requests_to("/commit/main")) == 2 + 2 * len(files)
    assert set(caught.value.report.failed) == files and caught.value.report.uploaded == []


@pytest.mark.parametrize(
    ("repo_id", "fragment"),
    [("no-namespace", "repo_id"), ("a/b/c", "repo_id"), ("org/bad--name", "repo_id"), ("", "repo_id")],
)
def test_invalid_repo_id_is_rejected_before_any_request(fake_hub, make_adapter, repo_id, fragment):
    with pytest.raises(PushError, match=fragment) as caught:
        push_adapter(make_adapter(), repo_id, token=TOKEN)
    assert fake_hub.requests == []
    assert caught.value.report.error


def test_invalid_folder_and_backend_are_rejected_before_any_request(fake_hub, make_adapter, tmp_path):
    with pytest.raises(PushError, match="not a directory"):
        push_adapter(tmp_path / "missing", REPO_ID, token=TOKEN)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PushError, match="adapter_config.json"):
        push_adapter(empty, REPO_ID, token=TOKEN)
    with pytest.raises(PushError, match="backend"):
        push_adapter(make_adapter(), REPO_ID, token=TOKEN, backend="ftp")
    assert fake_hub.requests == []
    assert not (empty / "README.md").exists()


def test_private_flag_and_env_token(fake_hub, make_adapter, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    report = push_adapter(make_adapter(), REPO_ID, private=True, commit_message="custom message", **FAST)
    assert report.ok and fake_hub.repos[REPO_ID].private is True
    assert fake_hub.commits[0].summary == "custom message"


def test_token_resolution_order(hub_env, monkeypatch):
    stored = Path(constants.HF_TOKEN_PATH)
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_text("hf_stored_login")
    assert resolve_token() == "hf_stored_login"
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    assert resolve_token() == "hf_from_env"
    assert resolve_token("hf_explicit") == "hf_explicit"


def test_no_token_anywhere_after_success_and_failure(fake_hub, make_adapter, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    good, bad = make_adapter("good"), make_adapter("bad")
    ok_report = push_adapter(good, REPO_ID, token=TOKEN, **FAST)
    oid = hashlib.sha256((bad / "adapter_model.safetensors").read_bytes()).hexdigest()
    fake_hub.fail("lfs_upload", 400, times=None, match=oid)
    fake_hub.fail("commit", 502, times=1)
    with pytest.raises(PushError) as caught:
        push_adapter(bad, REPO_ID, token=TOKEN, **FAST)
    out, err = capsys.readouterr()
    assert caplog.text  # debug logging was on, so this scan means something
    assert_no_token(
        paths=(tmp_path,),  # both adapters and the isolated HF home
        texts=(
            json.dumps(ok_report.to_dict()),
            json.dumps(caught.value.report.to_dict()),
            str(caught.value),
            repr(caught.value),
            caplog.text,
            out,
            err,
        ),
    )


def test_xet_is_not_used_when_the_hub_does_not_offer_it(fake_hub):
    assert hub_offers_xet(fake_hub.url, REPO_ID, TOKEN) is False


def test_publishable_files_skip_intermediates(make_adapter):
    folder = make_adapter()
    (folder / "runs" / "nested").mkdir()
    (folder / "runs" / "nested" / "x.json").write_text("{}")
    (folder / "notes" / "checkpoint-3").mkdir(parents=True)
    (folder / "notes" / "checkpoint-3" / "w.bin").write_bytes(b"x")
    kept, ignored = list_publishable_files(folder)
    assert "adapter_model.safetensors" in kept and "training_config.json" in kept
    assert set(INTERMEDIATE_FILES) | {"runs/nested/x.json", "notes/checkpoint-3/w.bin"} == set(ignored)
    assert "checkpoint-*" in PUBLISH_IGNORE_PATTERNS


def test_write_card_false_publishes_the_folder_as_is(fake_hub, make_adapter):
    folder = make_adapter()
    report = push_adapter(folder, REPO_ID, token=TOKEN, write_card=False, **FAST)
    assert report.ok and not report.card_written
    assert not (folder / "README.md").exists() and "README.md" not in fake_hub.files(REPO_ID)


def test_offline_mode_is_reported_before_any_request(fake_hub, make_adapter, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PushError, match="HF_HUB_OFFLINE"):
        push_adapter(make_adapter(), REPO_ID, token=TOKEN)
    assert fake_hub.requests == []


def test_a_file_holding_the_token_is_never_published(fake_hub, make_adapter):
    folder = make_adapter()
    (folder / "notes.txt").write_text(f"pushed with {TOKEN}\n")
    with pytest.raises(PushError, match="notes.txt") as caught:
        push_adapter(folder, REPO_ID, token=TOKEN)
    assert TOKEN not in str(caught.value)
    assert fake_hub.requests == []
    with pytest.raises(AssertionError, match="notes.txt"):  # the leak scanner used above does see tokens
        assert_no_token(paths=(folder,))
