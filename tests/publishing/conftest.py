"""Fixtures for the publishing tests: an isolated Hub environment, the fake hub, adapter folders."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
from huggingface_hub import constants

# Make the helper modules of this folder importable whatever pytest's import mode is.
sys.path.insert(0, str(Path(__file__).parent))

from fake_hub import FakeHub  # noqa: E402
from publishing_support import TOKEN, build_adapter  # noqa: E402


@pytest.fixture
def hub_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No real network, no stored login, no leftover push settings.

    huggingface_hub freezes several env vars into ``constants`` at import time, so the constants are
    patched next to the variables.
    """
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)  # also stops the agent-registry fetch
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-home" / "stored_tokens"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_ENDPOINT", "HF_HUB_DISABLE_XET",
                 "DS_PUSH_BACKEND", "DS_GIT_REMOTE", "DS_PUSH_RETRY_DELAY", "GIT_CONFIG_COUNT"):
        monkeypatch.delenv(name, raising=False)
    # git runs with neither the user's global nor the system config (credential helpers, hooks paths).
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


@pytest.fixture
def fake_hub(hub_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with FakeHub(token=TOKEN) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        yield hub


@pytest.fixture
def git_hub(hub_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    """A fake hub that also serves git smart HTTP (through ``git http-backend``)."""
    with FakeHub(token=TOKEN, git_root=tmp_path / "git-root") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        yield hub


@pytest.fixture
def make_adapter(tmp_path: Path) -> Callable[..., Path]:
    """Build a trainer-like output folder; ``adapter_bytes`` sizes adapter_model.safetensors."""
    return partial(build_adapter, tmp_path)
