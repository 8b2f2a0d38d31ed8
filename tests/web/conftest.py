"""Fixtures of the web tests: the app over a temporary state folder, real uvicorn servers."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

# Make the helper module of this folder importable whatever pytest's import mode is.
sys.path.insert(0, str(Path(__file__).parent))

from web_support import ACCESS_TOKEN, AUTH, BROWSER_ARGS, CHROMIUM, LiveServer, ServeProcess  # noqa: E402

from deepsynth.web.app import create_app  # noqa: E402


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "state"
    yield path
    # Jobs deliberately outlive their server; a failed test must not leave a training run behind.
    database = path / "jobs.sqlite3"
    if database.is_file():
        with sqlite3.connect(database) as connection:
            pids = [row[0] for row in connection.execute("SELECT pid FROM jobs WHERE status = 'running'") if row[0]]
        for pid in pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture
def client(state_dir: Path) -> Iterator[TestClient]:
    """The app with its job supervisor running (lifespan), for plain API tests; sends the token."""
    app = create_app(state_dir, access_token=ACCESS_TOKEN, poll_interval_s=0.1)
    with TestClient(app, headers=AUTH) as test_client:
        yield test_client


@pytest.fixture
def live_server(state_dir: Path) -> Callable[..., LiveServer]:
    """Factory: ``with live_server(**create_app_options) as server:`` (uvicorn on 127.0.0.1)."""
    return lambda **options: LiveServer(state_dir, **options)


@pytest.fixture
def serve_process(state_dir: Path) -> Callable[..., ServeProcess]:
    """Factory: ``with serve_process(*serve_flags, env=...) as server:`` (`deepsynth serve` in a process)."""
    return lambda *args, **options: ServeProcess(state_dir, *args, **options)


@pytest.fixture
def browser():
    """Headless Chromium (playwright); the test is skipped where Debian's chromium is not installed."""
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium (apt-get install -y chromium)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=BROWSER_ARGS)
        try:
            yield instance
        finally:
            instance.close()
