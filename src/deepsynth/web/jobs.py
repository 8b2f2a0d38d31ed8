"""Training jobs of the web app: one OS process per run, state in SQLite, a supervisor thread.

A job is a folder ``<state_dir>/jobs/<id>/`` holding ``config.yaml`` (``TrainerConfig.to_dict()``,
exactly what the training process loads), ``train.log`` (its stdout/stderr) and ``output/`` (the
trainer's output folder, with ``progress.jsonl`` and ``metrics.json``). The process is

    python -m deepsynth.cli train --config <job>/config.yaml --data <file> [--eval-data <file>]
                                  --output-dir <job>/output

started in its own session (so it survives a server restart and its whole process group can be
signalled). Its row in ``<state_dir>/jobs.sqlite3`` records status, pid (with the process start
time, so a recycled pid is never mistaken for it) and the progress read from ``progress.jsonl``.

Life cycle: ``queued`` → ``running`` → ``succeeded`` | ``failed`` | ``cancelled``. At most
``max_concurrent_jobs`` (default 1) run at once; the others wait in creation order. Cancelling sends
SIGTERM to the process group, then SIGKILL after ``cancel_grace_s``; the output folder (and so the
last checkpoint) is kept. On start-up a job still marked running is adopted if its process is alive,
and otherwise finished from what its progress file says (failed, naming its last step, unless the
trainer reported completion): a job is never started twice. ``progress.jsonl`` is read with its
schema (:mod:`deepsynth.training.progress`); why a job failed is its ``error`` event (written by the
trainer, or by the CLI for a failure before the trainer started), never a line the process printed.

The Hub token reaches the training process only through its environment (``HF_TOKEN``): it is not a
field of the saved config, the database or any message.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from deepsynth.training.config import OptimizerConfig, TrainerConfig, build_config, check_value_kinds
from deepsynth.training.errors import ConfigError
from deepsynth.training.progress import Eval, Log, Phase, read_events, summarise, typed_events
from deepsynth.web.datasets_store import DatasetStore
from deepsynth.web.settings import ACCESS_TOKEN_ENV

logger = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
# Request fields the server sets itself: each job writes to its own folder, data come from datasets.
SERVER_FIELDS = {
    "output_dir": "set by the server: each job writes to its own folder (download it from /api/jobs/{id}/artifacts)",
    "data_path": "set by the server from dataset_id (upload files through /api/datasets)",
    "eval_data_path": "set by the server from eval_dataset_id (upload files through /api/datasets)",
    "hub_token": "never accepted from a client: the server passes HF_TOKEN (or your `hf auth login`) to the trainer",
}
RESUME_CHOICES = (None, "auto", "never")
CHECKPOINT_MARKER = "deepsynth-complete.json"  # deepsynth.training.checkpoints.MARKER (that module imports torch)

CommandBuilder = Callable[[Path, Path, "Path | None", Path], Sequence[str]]


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


def train_command(config_path: Path, data_path: Path, eval_data_path: Path | None, output_dir: Path) -> list[str]:
    """The command line of one training process (the ``deepsynth train`` CLI)."""
    command = [sys.executable, "-m", "deepsynth.cli", "train", "--config", str(config_path), "--data", str(data_path)]
    if eval_data_path is not None:
        command += ["--eval-data", str(eval_data_path)]
    return command + ["--output-dir", str(output_dir)]


def trainer_fields() -> list[str]:
    """Every field a job request may set: TrainerConfig's, plus the optimizer's given flat."""
    names = [f.name for f in fields(TrainerConfig) if f.name not in SERVER_FIELDS and f.name != "optimizer"]
    return names + ["optimizer"] + [f.name for f in fields(OptimizerConfig)]


# --------------------------------------------------------------------------------------- processes


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


def _signal_group(pid: int, sig: int) -> None:
    try:
        if os.getpgid(pid) == pid:  # started with start_new_session: the whole group
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------------------- manager

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
_SUMMARY_COLUMNS = ("phase", "step", "total_updates", "total_steps", "num_train_samples", "last_loss")


class JobManager:
    """Queue, run, watch and cancel training processes; all state in ``<state_dir>/jobs.sqlite3``."""

    def __init__(
        self,
        state_dir: Path,
        datasets: DatasetStore,
        *,
        max_concurrent_jobs: int = 1,
        cancel_grace_s: float = 30.0,
        poll_interval_s: float = 0.5,
        command: CommandBuilder = train_command,
        token_provider: Callable[[], str | None] | None = None,
    ) -> None:
        if max_concurrent_jobs < 1:
            raise ConfigError("max_concurrent_jobs", max_concurrent_jobs, "an integer >= 1")
        self.state_dir = Path(state_dir)
        self.jobs_dir = self.state_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.datasets = datasets
        self.max_concurrent_jobs = max_concurrent_jobs
        self.cancel_grace_s = cancel_grace_s
        self.poll_interval_s = poll_interval_s
        self.command = command
        self.token_provider = token_provider or _default_token
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._children: dict[str, subprocess.Popen] = {}
        self._offsets: dict[str, int] = {}
        self._summaries: dict[str, dict[str, Any]] = {}
        self._lock_file = None
        self._db = sqlite3.connect(self.state_dir / "jobs.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Take the state folder's lock, recover jobs left running, start the supervisor."""
        self.lock()
        self.recover()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="deepsynth-jobs", daemon=True)
        self._thread.start()

    def lock(self) -> None:
        """Take the state folder's lock (once): StateFolderInUse when another server holds it."""
        if self._lock_file is not None:
            return
        handle = open(self.state_dir / "server.lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise StateFolderInUse(self.state_dir) from None
        self._lock_file = handle

    def close(self, *, stop_running: bool = False) -> None:
        """Stop supervising. Running processes go on (the next server adopts them) unless ``stop_running``."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if stop_running:
            for job in self.list(status=RUNNING):
                self.cancel(job["id"])
            deadline = time.monotonic() + self.cancel_grace_s
            while self.list(status=RUNNING) and time.monotonic() < deadline:
                self.tick()
                time.sleep(0.1)
            for job in self.list(status=RUNNING):
                if job.get("pid"):
                    _signal_group(job["pid"], signal.SIGKILL)
            time.sleep(0.2)
            self.tick()
        with self._lock:
            self._db.close()
            if self._lock_file is not None:
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
                self._lock_file.close()
                self._lock_file = None

    def recover(self) -> None:
        """Settle the jobs a previous server left running: adopt live processes, finish the others."""
        with self._lock:
            for row in self._rows("status = ?", (RUNNING,)):
                job_id = row["id"]
                self._refresh_progress(job_id)
                if process_alive(row["pid"], row["proc_start"]):
                    logger.info("job %s: adopting its running process %s", job_id, row["pid"])
                    continue
                self._finish(job_id, exit_code=None, restarted=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the supervisor must outlive any one bad job
                logger.exception("job supervisor tick failed")
            self._wake.wait(self.poll_interval_s)
            self._wake.clear()

    def tick(self) -> None:
        """One supervision pass: read progress, reap finished processes, escalate cancels, start queued jobs."""
        with self._lock:
            for row in self._rows("status = ?", (RUNNING,)):
                job_id = row["id"]
                self._refresh_progress(job_id)
                child = self._children.get(job_id)
                if child is not None:
                    exit_code = child.poll()
                    alive = exit_code is None
                else:
                    exit_code, alive = None, process_alive(row["pid"], row["proc_start"])
                if alive:
                    if (row["cancel_requested_at"] and not row["killed"]
                            and time.time() - row["cancel_requested_at"] > self.cancel_grace_s):
                        logger.warning("job %s: still running %.0f s after SIGTERM; sending SIGKILL",
                                       job_id, self.cancel_grace_s)
                        _signal_group(row["pid"], signal.SIGKILL)
                        self._update(job_id, killed=1)
                    continue
                self._children.pop(job_id, None)
                self._finish(job_id, exit_code=exit_code)
            running = len(self._rows("status = ?", (RUNNING,)))
            if running < self.max_concurrent_jobs and not self._stop.is_set():
                for row in self._rows("status = ? ORDER BY created_at, rowid", (QUEUED,))[
                        : self.max_concurrent_jobs - running]:
                    self._launch(row["id"])

    # --- requests ----------------------------------------------------------------------------

    def submit(self, request: dict[str, Any]) -> dict[str, Any]:
        """Validate a job request (TrainerConfig fields + dataset_id [+ eval_dataset_id]) and queue it."""
        if not isinstance(request, dict):
            raise ConfigError("body", type(request).__name__, "a JSON object of TrainerConfig fields and dataset_id")
        data = dict(request)
        dataset_id = data.pop("dataset_id", None)
        eval_dataset_id = data.pop("eval_dataset_id", None)
        for name, reason in SERVER_FIELDS.items():
            if name in data:
                raise ValueError(f"{name}: {reason}")
        if not isinstance(dataset_id, str) or not dataset_id:
            raise ConfigError("dataset_id", dataset_id, "the id of an uploaded dataset (GET /api/datasets) or 'sample'")
        if eval_dataset_id is not None and (not isinstance(eval_dataset_id, str) or not eval_dataset_id):
            raise ConfigError("eval_dataset_id", eval_dataset_id, "null or the id of an uploaded dataset")
        if data.get("resume_from_checkpoint", None) not in RESUME_CHOICES:
            raise ConfigError("resume_from_checkpoint", data["resume_from_checkpoint"],
                              "'auto' or 'never' (a job resumes only from its own folder)")
        data_path = self._dataset_path(dataset_id, "dataset_id")
        eval_path = self._dataset_path(eval_dataset_id, "eval_dataset_id") if eval_dataset_id else None

        job_id = uuid.uuid4().hex[:12]
        job_dir = self.jobs_dir / job_id
        output_dir = job_dir / "output"
        data.update(output_dir=str(output_dir), data_path=str(data_path),
                    eval_data_path=None if eval_path is None else str(eval_path))
        check_value_kinds(data)  # kinds first: build_config writes into the optimizer object
        preset = data.pop("preset", None)
        # The one request → config path (the CLI's too): preset, then the request's fields over it.
        # A whole "optimizer" object first, so that flat optimizer fields (learning_rate...) go over it.
        overrides = {**({"optimizer": data.pop("optimizer")} if "optimizer" in data else {}), **data, "preset": preset}
        config = build_config(None, preset, overrides)  # ConfigError names the field
        job_dir.mkdir(parents=True)
        config.save(job_dir / "config.yaml")
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, status, created_at, dataset_id, eval_dataset_id, model_name, preset) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job_id, QUEUED, time.time(), dataset_id, eval_dataset_id, config.model_name, config.preset),
            )
        self._wake.set()
        return self.get(job_id)

    def cancel(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            row = self._row(job_id)
            if row["status"] == QUEUED:
                self._update(job_id, status=CANCELLED, finished_at=time.time(), error="cancelled before it started")
            elif row["status"] == RUNNING:
                if not row["cancel_requested_at"]:
                    self._update(job_id, cancel_requested_at=time.time())
                    if row["pid"]:
                        _signal_group(row["pid"], signal.SIGTERM)
            else:
                raise JobError(f"job {job_id} is already {row['status']}", 409)
        self._wake.set()
        return self.get(job_id)

    def resume(self, job_id: str) -> dict[str, Any]:
        """Queue a failed or cancelled job again, to continue from its newest complete checkpoint.

        The same job (id, folder, log): its process runs with ``resume_from_checkpoint: auto``, which
        takes the newest checkpoint with a valid completion marker. 409 when the job is not failed or
        cancelled, has no complete checkpoint, or its dataset is gone.
        """
        with self._lock:
            row = self._row(job_id)
            if row["status"] not in (FAILED, CANCELLED):
                raise JobError(f"job {job_id} is {row['status']}: only a failed or cancelled job can be resumed", 409)
            checkpoint = self.newest_checkpoint(job_id)
            if checkpoint is None:
                raise JobError(f"job {job_id} has no complete checkpoint to resume from (it stopped before its first "
                               "checkpoint was written): start a new job instead", 409)
            for field_name in ("dataset_id", "eval_dataset_id"):
                if row[field_name] and self.datasets.name_of(row[field_name]) is None:
                    raise JobError(f"job {job_id} cannot be resumed: its {field_name} {row[field_name]!r} was deleted",
                                   409)
            config_path = self.jobs_dir / job_id / "config.yaml"
            config = TrainerConfig.from_file(config_path)
            if config.resume_from_checkpoint != "auto":
                config.resume_from_checkpoint = "auto"
                config.save(config_path)
            self._update(job_id, status=QUEUED, started_at=None, finished_at=None, pid=None, proc_start=None,
                         exit_code=None, error=None, cancel_requested_at=None, killed=0)
            logger.info("job %s: queued to resume from %s", job_id, checkpoint.name)
        self._wake.set()
        return {**self.get(job_id), "resume_from": checkpoint.name}

    def newest_checkpoint(self, job_id: str) -> Path | None:
        """The job's newest checkpoint with a valid completion marker (None: none)."""
        from deepsynth.training.checkpoints import find_resumable  # torch: imported only when asked

        return find_resumable(self.output_dir(job_id))[0]

    def get(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            return self._public(self._row(job_id))

    def list(self, status: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            rows = (self._rows("status = ? ORDER BY created_at DESC, rowid DESC", (status,)) if status
                    else self._rows("1 ORDER BY created_at DESC, rowid DESC", ()))
            return [self._public(row) for row in rows]

    def uses_dataset(self, dataset_id: str) -> list[str]:
        """Ids of queued or running jobs that read ``dataset_id``."""
        with self._lock:
            rows = self._rows("status IN (?, ?) AND (dataset_id = ? OR eval_dataset_id = ?)",
                              (QUEUED, RUNNING, dataset_id, dataset_id))
            return [row["id"] for row in rows]

    def detail(self, job_id: str) -> dict[str, Any]:
        """Everything the UI shows about a job: status, config, loss/eval history, metrics, log tail."""
        job = self.get(job_id)
        job_dir = self.jobs_dir / job_id
        events = typed_events(read_events(job_dir / "output" / "progress.jsonl")[0])
        job["loss_history"] = [{"step": e.step, "epoch": e.epoch, "loss": e.loss, "learning_rate": e.learning_rate}
                               for e in events if isinstance(e, Log)]
        job["eval_history"] = [{"step": e.step, "eval_loss": e.eval_loss} for e in events if isinstance(e, Eval)]
        job["phases"] = [e.name for e in events if isinstance(e, Phase)]
        metrics = self.metrics(job_id)
        job["metrics"] = metrics
        job["expert_utilization"] = (metrics or {}).get("expert_utilization")
        try:
            job["config"] = TrainerConfig.from_file(job_dir / "config.yaml").to_dict()
        except ConfigError:
            job["config"] = None
        job["log_tail"] = _tail(job_dir / "train.log", 40)
        return job

    def metrics(self, job_id: str) -> dict[str, Any] | None:
        path = self.jobs_dir / job_id / "output" / "metrics.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def events(self, job_id: str, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Progress events of ``job_id`` from byte ``offset`` (for the live stream)."""
        self.get(job_id)
        return read_events(self.jobs_dir / job_id / "output" / "progress.jsonl", offset)

    def output_dir(self, job_id: str) -> Path:
        self.get(job_id)
        return self.jobs_dir / job_id / "output"

    def adapter_dir(self, job_id: str) -> tuple[Path, str]:
        """The job's adapter folder and its kind ("final" or "checkpoint"); JobError 409 when none yet."""
        output = self.output_dir(job_id)
        if (output / "adapter_config.json").is_file():
            return output, "final"
        candidates = [p.parent for p in output.glob("*/adapter_config.json") if not p.parent.name.startswith("checkpoint-")]
        if candidates:
            return max(candidates, key=lambda p: p.stat().st_mtime), "final"
        from deepsynth.training.checkpoints import checkpoint_problem  # torch: imported only when asked

        # Only complete checkpoints: one a crash cut mid-write has adapter_config.json but no marker.
        checkpoints = [p.parent for p in output.glob("checkpoint-*/adapter_config.json")
                       if checkpoint_problem(p.parent) is None]
        if checkpoints:
            def number(path: Path) -> int:
                tail = path.name.rsplit("-", 1)[-1]
                return int(tail) if tail.isdigit() else -1
            return max(checkpoints, key=number), "checkpoint"
        raise JobError(f"job {job_id} has no adapter yet (status {self.get(job_id)['status']})", 409)

    # --- internals ---------------------------------------------------------------------------

    def _dataset_path(self, dataset_id: str, field: str) -> Path:
        from deepsynth.web.datasets_store import DatasetNotFound, DatasetRequestError

        try:
            return self.datasets.data_path(dataset_id)
        except DatasetRequestError:
            raise ConfigError(field, dataset_id, "the id of an uploaded dataset (GET /api/datasets) or 'sample'") from None
        except DatasetNotFound:  # a well-formed id that names no dataset: 404
            raise DatasetNotFound(f"{field}: no dataset {dataset_id!r} (GET /api/datasets lists them)") from None

    def _launch(self, job_id: str) -> None:
        cursor = self._db.execute("UPDATE jobs SET status = ?, started_at = ? WHERE id = ? AND status = ?",
                                  (RUNNING, time.time(), job_id, QUEUED))
        if cursor.rowcount != 1:
            return  # someone else took it: never start a job twice
        job_dir = self.jobs_dir / job_id
        config = TrainerConfig.from_file(job_dir / "config.yaml")
        command = list(self.command(
            job_dir / "config.yaml", Path(config.data_path),
            None if config.eval_data_path is None else Path(config.eval_data_path), Path(config.output_dir),
        ))
        env = {k: v for k, v in os.environ.items() if k != ACCESS_TOKEN_ENV}
        env["PYTHONUNBUFFERED"] = "1"
        # The run folder exists from the start, so that the CLI records even an early failure (bad
        # data found after launch) as a structured error event there.
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        token = self.token_provider()
        if token:
            env["HF_TOKEN"] = token
        try:
            with open(job_dir / "train.log", "ab") as log:
                child = subprocess.Popen(command, cwd=job_dir, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as error:
            self._update(job_id, status=FAILED, finished_at=time.time(), error=f"could not start the trainer: {error}")
            return
        self._children[job_id] = child
        self._update(job_id, pid=child.pid, proc_start=process_start_time(child.pid))
        logger.info("job %s: started process %s", job_id, child.pid)

    def _refresh_progress(self, job_id: str) -> None:
        path = self.jobs_dir / job_id / "output" / "progress.jsonl"
        offset = self._offsets.get(job_id, 0)
        events, new_offset = read_events(path, offset)
        if not events and job_id in self._summaries:
            return
        summary = summarise(events, self._summaries.get(job_id))
        self._offsets[job_id] = new_offset
        self._summaries[job_id] = summary
        changes = {k: summary[k] for k in _SUMMARY_COLUMNS if k in summary}
        if changes:
            self._update(job_id, **changes)

    def _finish(self, job_id: str, *, exit_code: int | None, restarted: bool = False) -> None:
        row = self._row(job_id)
        summary = self._summaries.get(job_id) or {}
        metrics_written = (self.jobs_dir / job_id / "output" / "metrics.json").is_file()
        done = summary.get("done") and exit_code in (0, None)
        if done or (exit_code == 0 and metrics_written and not summary.get("error")):
            status, error = SUCCEEDED, None
        elif row["cancel_requested_at"]:
            status, error = CANCELLED, f"cancelled at step {row['step']}" + (
                f" of {row['total_updates']}" if row["total_updates"] else "") + "; its checkpoints are kept"
        else:
            status = FAILED
            where = f"last step {row['step']}" + (f" of {row['total_updates']}" if row["total_updates"] else "")
            if summary.get("error"):  # the run's structured error event (trainer or CLI)
                error = summary["error"]
            elif restarted:
                error = f"the server was restarted while this job ran and its process is gone ({where})"
            elif exit_code is not None and exit_code < 0:
                error = f"the training process was killed by signal {-exit_code} ({where})"
            elif exit_code is not None:
                error = f"the training process exited with code {exit_code} ({where}); see the log"
            else:
                error = f"the training process ended without reporting completion ({where})"
        self._update(job_id, status=status, finished_at=time.time(), exit_code=exit_code, error=error)
        self._offsets.pop(job_id, None)
        self._summaries.pop(job_id, None)
        logger.info("job %s: %s", job_id, status)

    def _row(self, job_id: str) -> sqlite3.Row:
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobError(f"no job {job_id!r}", 404)
        return row

    def _rows(self, where: str, params: tuple) -> list[sqlite3.Row]:
        return self._db.execute(f"SELECT * FROM jobs WHERE {where}", params).fetchall()

    def _update(self, job_id: str, **values: Any) -> None:
        assignments = ", ".join(f"{name} = ?" for name in values)
        self._db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values.values(), job_id))

    def _public(self, row: sqlite3.Row) -> dict[str, Any]:
        data = {key: row[key] for key in row.keys() if key not in ("proc_start", "killed")}
        data["cancel_requested"] = bool(data.pop("cancel_requested_at"))
        data["has_adapter"] = self._has_adapter(row["id"])
        # What the UI's Resume button needs (POST /resume checks the checkpoint's files in full).
        data["has_checkpoint"] = row["status"] in (FAILED, CANCELLED) and any(
            (self.jobs_dir / row["id"] / "output").glob(f"checkpoint-*/{CHECKPOINT_MARKER}"))
        data["dataset_name"] = self.datasets.name_of(row["dataset_id"])
        return data

    def _has_adapter(self, job_id: str) -> bool:
        output = self.jobs_dir / job_id / "output"
        return (output / "adapter_config.json").is_file() or any(output.glob("*/adapter_config.json"))


def _default_token() -> str | None:
    from deepsynth.publishing.hub import resolve_token

    return resolve_token()


def _tail(path: Path, lines: int) -> list[str]:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read()
    except OSError:
        return []
    return data.decode("utf-8", "replace").splitlines()[-lines:]
