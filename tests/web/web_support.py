"""Helpers of the web tests: fast job settings, a real uvicorn server, a file scanner."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2 as httpx
import uvicorn

from deepsynth.web.app import create_app

# A real `deepsynth train` run on the embedded model that takes seconds, not minutes.
FAST_JOB: dict[str, Any] = {
    "max_train_samples": 2,
    "max_eval_samples": 1,
    "num_epochs": 2,
    "gradient_accumulation_steps": 1,
    "max_new_tokens": 4,
}
# A long one (to cancel, queue behind, or restart around): a checkpoint after every update.
SLOW_JOB: dict[str, Any] = {**FAST_JOB, "num_epochs": 500, "checkpoint_every_updates": 1, "save_total_limit": 1}

# Distinctive values that must never appear in any file or response.
HUB_TOKEN = "hf_webLeakCanary7Qz9XpL2mN4vB8rT"

JSONL_ROWS = (
    b'{"text": "Le conseil municipal a vote le budget 2025.", "summary": "Budget 2025 vote."}\n'
    b'{"text": "La bibliotheque ferme en aout pour travaux.", "summary": "Fermeture estivale."}\n'
    b'{"text": "Un nouveau marche ouvre le samedi matin.", "summary": "Nouveau marche."}\n'
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """The app served by uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, state_dir: Path, **options: Any) -> None:
        self.state_dir = state_dir
        options.setdefault("poll_interval_s", 0.2)
        options.setdefault("cancel_grace_s", 10.0)
        self.app = create_app(state_dir, **options)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        self.http = httpx.Client(base_url=self.url, timeout=60)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.http.close()
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def wait_job(self, job_id: str, until: Callable[[dict[str, Any]], bool], timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.http.get(f"/api/jobs/{job_id}").json()
            if until(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} did not reach the expected state in {timeout} s: {job}")
            time.sleep(0.2)


def files_containing(root: Path, needle: str) -> list[str]:
    """Every file under ``root`` whose bytes contain ``needle``."""
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if needle.encode() in path.read_bytes():
                    hits.append(str(path))
            except OSError:
                continue
    return hits
