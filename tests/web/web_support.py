"""Helpers of the web tests: fast job settings, the access token, real uvicorn servers (in a thread, or
`deepsynth serve` in its own process), a file scanner."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
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

# Debian's headless Chromium, driven by playwright in the browser tests (skipped where it is missing).
CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]

# Distinctive values that must never appear in any file or response.
HUB_TOKEN = "hf_webLeakCanary7Qz9XpL2mN4vB8rT"
# The access token of the in-process test apps; scripts send it as a bearer header.
ACCESS_TOKEN = "web-test-access-token-5Kq8Zr3Wv"
AUTH = {"Authorization": f"Bearer {ACCESS_TOKEN}"}

JSONL_ROWS = (
    b'{"text": "Le conseil municipal a vote le budget 2025.", "summary": "Budget 2025 vote."}\n'
    b'{"text": "La bibliotheque ferme en aout pour travaux.", "summary": "Fermeture estivale."}\n'
    b'{"text": "Un nouveau marche ouvre le samedi matin.", "summary": "Nouveau marche."}\n'
)


# A stand-in trainer for servers whose jobs only need to exist: it writes what a finished run leaves
# (an adapter config, metrics, a 'done' progress event) and exits at once, so no job outlives a test.
STUB_TRAINER = (
    "import os, sys\n"
    "out = sys.argv[1]\n"
    "os.makedirs(out, exist_ok=True)\n"
    "open(os.path.join(out, 'adapter_config.json'), 'w').write('{\"r\": 8}')\n"
    "open(os.path.join(out, 'metrics.json'), 'w').write('{}')\n"
    "open(os.path.join(out, 'progress.jsonl'), 'w').write('{\"event\": \"done\"}\\n')\n"
)
# `serve()` itself (prints the sign-in address, random token per launch) with the stand-in trainer:
# python -c STUB_SERVE STATE_DIR [JSON of more serve() options]
STUB_SERVE = (
    "import json, sys\n"
    "from deepsynth.web.server import serve\n"
    f"TRAINER = {STUB_TRAINER!r}\n"
    "def stub(config, data, eval_data, output):\n"
    "    return [sys.executable, '-c', TRAINER, str(output)]\n"
    "options = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}\n"
    "options = {'poll_interval_s': 0.1, 'log_level': 'warning', **options}\n"
    "serve('127.0.0.1', 0, sys.argv[1], job_command=stub, **options)\n"
)


def assert_error(response, status: int, *words: str) -> str:
    """The API's one error message for ``response``, asserting its status and that it names ``words``."""
    assert response.status_code == status, (response.status_code, response.text)
    message = response.json()["error"]
    for word in words:
        assert word in message, (word, message)
    return message


def stub_serve_command() -> list[str]:
    """The command line of a real server (uvicorn, `serve()`) whose jobs finish at once (STUB_TRAINER)."""
    return [sys.executable, "-c", STUB_SERVE]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Server:
    """What both kinds of test server offer: ``http`` (authenticated) and waiting for a job."""

    http: httpx.Client

    def wait_job(self, job_id: str, until: Callable[[dict[str, Any]], bool], timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.http.get(f"/api/jobs/{job_id}").json()
            if until(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} did not reach the expected state in {timeout} s: {job}")
            time.sleep(0.2)


class LiveServer(_Server):
    """The app served by uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, state_dir: Path, **options: Any) -> None:
        self.state_dir = state_dir
        options.setdefault("poll_interval_s", 0.2)
        options.setdefault("cancel_grace_s", 10.0)
        options.setdefault("access_token", ACCESS_TOKEN)
        self.headers = {"Authorization": f"Bearer {options['access_token']}"}
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
        self.http = httpx.Client(base_url=self.url, timeout=60, headers=self.headers)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.http.close()
        self.server.should_exit = True
        self.thread.join(timeout=30)


class ServeProcess(_Server):
    """``deepsynth serve --port 0`` in its own process, as a user runs it; reads the address it prints.

    ``args`` are more ``serve`` flags (or, with ``command``, the arguments of that command line instead);
    ``env`` is added to this process's environment (a None value removes the variable). The token is
    the one in the printed ``?token=`` URL (``login_url``), else the one in the token file the server
    named (``token_file``: its output is a pipe, not a terminal), else ``token``; ``http`` sends it as a
    bearer header.
    """

    URL_LINE = re.compile(r"DeepSynth web UI: (http://127\.0\.0\.1:(\d+)/(\?token=(\S+))?)")
    TOKEN_FILE_LINE = re.compile(r"  access token: in (\S+) \(readable by you only")

    def __init__(self, state_dir: Path, *args: str, env: dict[str, str | None] | None = None, token: str | None = None,
                 command: Sequence[str] | None = None) -> None:
        self.state_dir = state_dir
        default = [sys.executable, "-m", "deepsynth.cli", "serve", "--port", "0", "--state-dir", str(state_dir)]
        self.argv = [*(command or default), *args]
        self.env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}  # None: unset
        self.token = token
        self.lines: list[str] = []

    def __enter__(self) -> "ServeProcess":
        self.process = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 60
        # The address, then (output not a terminal, per-launch token) where the token is, then the state folder.
        while not ((match := next(filter(None, map(self.URL_LINE.search, list(self.lines))), None))
                   and "  state folder: " in self.output):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("deepsynth serve did not print its address:\n" + self.output)
            time.sleep(0.05)
        self.printed_url = self.login_url = match.group(1)
        self.port = int(match.group(2))
        self.url = f"http://127.0.0.1:{self.port}"
        self.token_file = None
        if match.group(4):
            from urllib.parse import unquote

            self.token = unquote(match.group(4))
        elif found := self.TOKEN_FILE_LINE.search(self.output):
            from urllib.parse import quote

            self.token_file = Path(found.group(1))
            self.token = self.token_file.read_text().strip()
            self.login_url = f"{self.url}/?token={quote(self.token, safe='')}"  # what the user opens
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.Client(base_url=self.url, timeout=60, headers=headers)
        return self

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int:
        """SIGINT (Ctrl-C), as a user stops it; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(timeout=10)

    def __exit__(self, *exc: Any) -> None:
        if hasattr(self, "http"):
            self.http.close()
        self.returncode = self.stop()


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
