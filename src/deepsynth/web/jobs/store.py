"""The jobs' table in ``<state_dir>/jobs.sqlite3`` and the state folder's lock (one server per folder)."""

from __future__ import annotations

import fcntl
import sqlite3
import threading
import time
from pathlib import Path
from typing import IO, Any

from deepsynth.training.errors import ConfigError

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    dataset_id TEXT NOT NULL,
    eval_dataset_id TEXT,
    model_name TEXT,
    preset TEXT,
    pid INTEGER,
    proc_start TEXT,
    phase TEXT,
    step INTEGER NOT NULL DEFAULT 0,
    total_updates INTEGER,
    total_steps INTEGER,
    num_train_samples INTEGER,
    last_loss REAL,
    exit_code INTEGER,
    error TEXT,
    cancel_requested_at REAL,
    killed INTEGER NOT NULL DEFAULT 0
)
"""


class JobError(Exception):
    """A job request that cannot be honoured now; ``status_code`` is the HTTP status (404, 409)."""

    def __init__(self, message: str, status_code: int = 409) -> None:
        super().__init__(message)
        self.status_code = status_code


class StateFolderInUse(ConfigError):
    """Another deepsynth server holds the state folder's lock (bad input: exit 2, one error line)."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__("--state-dir", str(state_dir), "a state folder no other server uses: another deepsynth "
                         "server is using it (stop that server, or pass another --state-dir)")


class JobStore:
    """The jobs' rows: one SQLite table (WAL), used under :attr:`lock` by the supervisor and the routes."""

    def __init__(self, path: Path) -> None:
        self.lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def insert(self, job_id: str, dataset_id: str, eval_dataset_id: str | None, model_name: str | None,
               preset: str | None) -> None:
        """A new queued job."""
        with self.lock:
            self._db.execute(
                "INSERT INTO jobs (id, status, created_at, dataset_id, eval_dataset_id, model_name, preset) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job_id, QUEUED, time.time(), dataset_id, eval_dataset_id, model_name, preset),
            )

    def claim(self, job_id: str) -> bool:
        """Mark a queued job running; False when it is no longer queued (never start a job twice)."""
        cursor = self._db.execute("UPDATE jobs SET status = ?, started_at = ? WHERE id = ? AND status = ?",
                                  (RUNNING, time.time(), job_id, QUEUED))
        return cursor.rowcount == 1

    def row(self, job_id: str) -> sqlite3.Row:
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobError(f"no job {job_id!r}", 404)
        return row

    def rows(self, where: str, params: tuple) -> list[sqlite3.Row]:
        return self._db.execute(f"SELECT * FROM jobs WHERE {where}", params).fetchall()

    def update(self, job_id: str, **values: Any) -> None:
        assignments = ", ".join(f"{name} = ?" for name in values)
        self._db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values.values(), job_id))

    def close(self) -> None:
        with self.lock:
            self._db.close()


def lock_state_folder(state_dir: Path) -> IO[str]:
    """Take the state folder's lock (held while the returned file is open): StateFolderInUse when taken."""
    handle = open(state_dir / "server.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise StateFolderInUse(state_dir) from None
    return handle


def unlock_state_folder(handle: IO[str]) -> None:
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()
