"""The training processes of jobs: their command line, their start in a session of their own, and /proc.

A process is recognised by its pid *and* its start time (from ``/proc/<pid>/stat``), so that a recycled
pid is never mistaken for a job's process; signals go to its whole process group.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from deepsynth.web.settings import ACCESS_TOKEN_ENV

CommandBuilder = Callable[[Path, Path, "Path | None", Path], Sequence[str]]


def train_command(config_path: Path, data_path: Path, eval_data_path: Path | None, output_dir: Path) -> list[str]:
    """The command line of one training process (the ``deepsynth train`` CLI)."""
    command = [sys.executable, "-m", "deepsynth.cli", "train", "--config", str(config_path), "--data", str(data_path)]
    if eval_data_path is not None:
        command += ["--eval-data", str(eval_data_path)]
    return command + ["--output-dir", str(output_dir)]


def start_process(command: Sequence[str], job_dir: Path, hub_token: str | None) -> subprocess.Popen:
    """Start ``command`` in ``job_dir``, in its own session, its output appended to ``train.log``.

    The server's access token is not passed on; the Hub token reaches the process only through its
    environment (``HF_TOKEN``).
    """
    env = {k: v for k, v in os.environ.items() if k != ACCESS_TOKEN_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    if hub_token:
        env["HF_TOKEN"] = hub_token
    with open(job_dir / "train.log", "ab") as log:
        return subprocess.Popen(list(command), cwd=job_dir, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of ``pid`` from /proc, or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rfind(")") + 2:].split()
    return rest[0], rest[19]


def process_start_time(pid: int) -> str | None:
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def process_alive(pid: int | None, start_time: str | None) -> bool:
    """Is ``pid`` still the process we started (same start time), and not a zombie?"""
    if not pid:
        return False
    if Path("/proc").is_dir() and Path("/proc/self/stat").exists():
        stat = _proc_stat(pid)
        if stat is None:
            return False
        state, started = stat
        if state == "Z":
            try:  # reap it if it is our child
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            return False
        return start_time is None or started == start_time
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group ``pid`` leads (started with start_new_session), else to ``pid``."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass
