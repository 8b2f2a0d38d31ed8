"""`deepsynth serve` as a user runs it: one server per state folder, and the access token kept out of
logs and of files other users can read (issue 21, items 11 and 12)."""

from __future__ import annotations

import http.client
import os
import pty
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from web_support import files_containing

SERVE = [sys.executable, "-m", "deepsynth.cli", "serve", "--port", "0"]
# The name `token`, percent-encoded and cased in every way the guard (Starlette) or a reader decodes it.
SPELLINGS = ["token", "tok%65n", "%74oken", "%74%6F%6B%65%6E", "t%6fken", "TOKEN", "Token", "token%20"]


def _get(port: int, target: str) -> int:
    """A raw GET of ``target`` exactly as written (no client re-encoding)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", target)
        return connection.getresponse().status
    finally:
        connection.close()


def test_a_second_serve_on_a_used_state_folder_is_one_error_line(serve_process, state_dir):
    with serve_process() as first:
        started = time.monotonic()
        second = subprocess.run([*SERVE, "--state-dir", str(state_dir)], capture_output=True, text=True, timeout=120)
        seconds = time.monotonic() - started
        assert first.http.get("/api/health").status_code == 200  # the first one is unharmed
    assert second.returncode == 2, second.stdout + second.stderr
    assert "Traceback" not in second.stderr + second.stdout, second.stderr
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and errors[0].startswith("error: --state-dir: ") and str(state_dir) in errors[0]
    assert "another deepsynth server" in errors[0]
    assert "DeepSynth web UI" not in second.stdout  # it never listened
    print(f"second serve refused in {seconds:.1f} s")


def test_the_token_parameter_is_hidden_in_the_access_log_however_its_name_is_spelled(serve_process):
    with serve_process() as server:  # the real `deepsynth serve`: access log on (log level info)
        token = server.token
        statuses = {spelling: _get(server.port, f"/?{spelling}={token}") for spelling in SPELLINGS}
        _get(server.port, f"/?a=1&{SPELLINGS[1]}={token}&b=2")
    assert statuses["tok%65n"] == statuses["token"] == 303, statuses  # the guard decodes the name: signs in
    assert token not in server.output, server.output
    assert server.output.count("[hidden]") >= len(SPELLINGS), server.output


def _wait_for(path: Path, text: str, process: subprocess.Popen, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while text not in (content := path.read_text() if path.exists() else ""):
        assert process.poll() is None and time.monotonic() < deadline, content
        time.sleep(0.1)
    return content


def test_serve_redirected_to_a_file_keeps_the_token_out_of_it(state_dir, tmp_path):
    log = tmp_path / "serve.log"
    with open(log, "w") as stream:  # `deepsynth serve > serve.log` under umask 022
        process = subprocess.Popen([*SERVE, "--state-dir", str(state_dir)], stdout=stream, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, preexec_fn=lambda: os.umask(0o022))
    try:
        printed = _wait_for(log, "state folder:", process)
        token_file = state_dir / "access-token"
        assert f"access token: in {token_file} (readable by you only" in printed, printed
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        port = int(printed.split("DeepSynth web UI: http://127.0.0.1:")[1].split("/")[0])
        assert _get(port, f"/?token={token}") == 303  # the file's token signs in
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    assert token not in log.read_text()
    assert stat.S_IMODE(log.stat().st_mode) == 0o644  # the redirected file is world-readable: nothing secret in it
    assert not token_file.exists() and files_containing(state_dir, token) == []  # gone with the server


def test_serve_on_a_terminal_prints_the_sign_in_address_with_the_token(state_dir):
    leader, follower = pty.openpty()
    process = subprocess.Popen([*SERVE, "--state-dir", str(state_dir)], stdout=follower, stderr=subprocess.DEVNULL,
                               stdin=subprocess.DEVNULL)
    os.close(follower)
    printed = b""
    try:
        deadline = time.monotonic() + 60
        while b"state folder:" not in printed and time.monotonic() < deadline:
            printed += os.read(leader, 4096)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
        os.close(leader)
    text = printed.decode()
    assert "/?token=" in text and "access token: in" not in text, text
    assert not (state_dir / "access-token").exists()
