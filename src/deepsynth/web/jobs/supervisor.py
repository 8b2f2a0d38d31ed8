"""The job supervisor: queue, start, watch, cancel, resume and settle training processes (a thread).

Life cycle: ``queued`` → ``running`` → ``succeeded`` | ``failed`` | ``cancelled``. At most
``max_concurrent_jobs`` (default 1) run at once; the others wait in creation order. Cancelling sends
SIGTERM to the process group, then SIGKILL after ``cancel_grace_s``; the output folder (and so the
last checkpoint) is kept. On start-up a job still marked running is adopted if its process is alive,
and otherwise finished from what its progress file says (failed, naming its last step, unless the
trainer reported completion): a job is never started twice. Why a job failed is its progress file's
``error`` event (written by the trainer, or by the CLI for a failure before the trainer started),
never a line the process printed.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deepsynth.training.config import TrainerConfig
from deepsynth.training.errors import ConfigError
from deepsynth.training.progress import read_events, summarise
from deepsynth.web.datasets_store import DatasetStore
from deepsynth.web.jobs import artifacts
from deepsynth.web.jobs.processes import (
    CommandBuilder, process_alive, process_start_time, signal_group, start_process, train_command,
)
from deepsynth.web.jobs.requests import check_job_request
from deepsynth.web.jobs.store import (
    CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobError, JobStore, lock_state_folder, unlock_state_folder,
)

logger = logging.getLogger("deepsynth.web.jobs")

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
        self.store = JobStore(self.state_dir / "jobs.sqlite3")
        self._lock = self.store.lock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._children: dict[str, subprocess.Popen] = {}
        self._offsets: dict[str, int] = {}
        self._summaries: dict[str, dict[str, Any]] = {}
        self._lock_file = None

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
        if self._lock_file is None:
            self._lock_file = lock_state_folder(self.state_dir)

    def close(self, *, stop_running: bool = False) -> None:
        """Stop supervising. Running processes go on (the next server adopts them) unless ``stop_running``."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if stop_running:
            self._stop_running_jobs()
        self.store.close()
        if self._lock_file is not None:
            unlock_state_folder(self._lock_file)
            self._lock_file = None

    def _stop_running_jobs(self) -> None:
        """Cancel every running job, SIGKILL what outlives the grace period, and settle them."""
        for job in self.list(status=RUNNING):
            self.cancel(job["id"])
        deadline = time.monotonic() + self.cancel_grace_s
        while self.list(status=RUNNING) and time.monotonic() < deadline:
            self.tick()
            time.sleep(0.1)
        for job in self.list(status=RUNNING):
            if job.get("pid"):
                signal_group(job["pid"], signal.SIGKILL)
        time.sleep(0.2)
        self.tick()

    def recover(self) -> None:
        """Settle the jobs a previous server left running: adopt live processes, finish the others."""
        with self._lock:
            for row in self.store.rows("status = ?", (RUNNING,)):
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
            for row in self.store.rows("status = ?", (RUNNING,)):
                self._watch(row)
            running = len(self.store.rows("status = ?", (RUNNING,)))
            if running < self.max_concurrent_jobs and not self._stop.is_set():
                for row in self.store.rows("status = ? ORDER BY created_at, rowid", (QUEUED,))[
                        : self.max_concurrent_jobs - running]:
                    self._launch(row["id"])

    def _watch(self, row) -> None:
        """Read a running job's progress; finish it when its process has ended, SIGKILL it when a cancel's
        grace period is over."""
        job_id = row["id"]
        self._refresh_progress(job_id)
        child = self._children.get(job_id)
        if child is not None:
            exit_code = child.poll()
            alive = exit_code is None
        else:
            exit_code, alive = None, process_alive(row["pid"], row["proc_start"])
        if not alive:
            self._children.pop(job_id, None)
            self._finish(job_id, exit_code=exit_code)
        elif (row["cancel_requested_at"] and not row["killed"]
              and time.time() - row["cancel_requested_at"] > self.cancel_grace_s):
            logger.warning("job %s: still running %.0f s after SIGTERM; sending SIGKILL", job_id, self.cancel_grace_s)
            signal_group(row["pid"], signal.SIGKILL)
            self.store.update(job_id, killed=1)

    # --- requests ----------------------------------------------------------------------------

    def submit(self, request: dict[str, Any]) -> dict[str, Any]:
        """Validate a job request (TrainerConfig fields + dataset_id [+ eval_dataset_id]) and queue it."""
        job_id = uuid.uuid4().hex[:12]
        job_dir = self.jobs_dir / job_id
        job = check_job_request(request, self.datasets, job_dir / "output")
        job_dir.mkdir(parents=True)
        job.config.save(job_dir / "config.yaml")
        self.store.insert(job_id, job.dataset_id, job.eval_dataset_id, job.config.model_name, job.config.preset)
        self._wake.set()
        return self.get(job_id)

    def cancel(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            row = self.store.row(job_id)
            if row["status"] == QUEUED:
                self.store.update(job_id, status=CANCELLED, finished_at=time.time(),
                                  error="cancelled before it started")
            elif row["status"] == RUNNING:
                if not row["cancel_requested_at"]:
                    self.store.update(job_id, cancel_requested_at=time.time())
                    if row["pid"]:
                        signal_group(row["pid"], signal.SIGTERM)
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
            row = self.store.row(job_id)
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
            self.store.update(job_id, status=QUEUED, started_at=None, finished_at=None, pid=None, proc_start=None,
                              exit_code=None, error=None, cancel_requested_at=None, killed=0)
            logger.info("job %s: queued to resume from %s", job_id, checkpoint.name)
        self._wake.set()
        return {**self.get(job_id), "resume_from": checkpoint.name}

    def newest_checkpoint(self, job_id: str) -> Path | None:
        """The job's newest checkpoint with a valid completion marker (None: none)."""
        from deepsynth.training.checkpoints import find_resumable  # torch: imported only when asked

        return find_resumable(self.output_dir(job_id))[0]

    # --- reading -----------------------------------------------------------------------------

    def get(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            return self._public(self.store.row(job_id))

    def list(self, status: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            rows = (self.store.rows("status = ? ORDER BY created_at DESC, rowid DESC", (status,)) if status
                    else self.store.rows("1 ORDER BY created_at DESC, rowid DESC", ()))
            return [self._public(row) for row in rows]

    def uses_dataset(self, dataset_id: str) -> list[str]:
        """Ids of queued or running jobs that read ``dataset_id``."""
        with self._lock:
            rows = self.store.rows("status IN (?, ?) AND (dataset_id = ? OR eval_dataset_id = ?)",
                                   (QUEUED, RUNNING, dataset_id, dataset_id))
            return [row["id"] for row in rows]

    def detail(self, job_id: str) -> dict[str, Any]:
        """Everything the UI shows about a job: status, config, loss/eval history, metrics, log tail."""
        job = self.get(job_id)
        job_dir = self.jobs_dir / job_id
        job.update(artifacts.progress_history(job_dir / "output"))
        metrics = self.metrics(job_id)
        job["metrics"] = metrics
        job["expert_utilization"] = (metrics or {}).get("expert_utilization")
        try:
            job["config"] = TrainerConfig.from_file(job_dir / "config.yaml").to_dict()
        except ConfigError:
            job["config"] = None
        job["log_tail"] = artifacts.log_tail(job_dir / "train.log", 40)
        return job

    def metrics(self, job_id: str) -> dict[str, Any] | None:
        return artifacts.read_metrics(self.jobs_dir / job_id / "output")

    def events(self, job_id: str, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Progress events of ``job_id`` from byte ``offset`` (for the live stream)."""
        return read_events(self.output_dir(job_id) / "progress.jsonl", offset)

    def output_dir(self, job_id: str) -> Path:
        self.get(job_id)
        return self.jobs_dir / job_id / "output"

    def adapter_dir(self, job_id: str) -> tuple[Path, str]:
        """The job's adapter folder and its kind ("final" or "checkpoint"); JobError 409 when none yet."""
        found = artifacts.adapter_folder(self.output_dir(job_id))
        if found is None:
            raise JobError(f"job {job_id} has no adapter yet (status {self.get(job_id)['status']})", 409)
        return found

    # --- internals ---------------------------------------------------------------------------

    def _launch(self, job_id: str) -> None:
        if not self.store.claim(job_id):
            return  # someone else took it: never start a job twice
        job_dir = self.jobs_dir / job_id
        config = TrainerConfig.from_file(job_dir / "config.yaml")
        command = self.command(job_dir / "config.yaml", Path(config.data_path),
                               None if config.eval_data_path is None else Path(config.eval_data_path),
                               Path(config.output_dir))
        # The run folder exists from the start, so that the CLI records even an early failure (bad
        # data found after launch) as a structured error event there.
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        try:
            child = start_process(command, job_dir, self.token_provider())
        except OSError as error:
            self.store.update(job_id, status=FAILED, finished_at=time.time(),
                              error=f"could not start the trainer: {error}")
            return
        self._children[job_id] = child
        self.store.update(job_id, pid=child.pid, proc_start=process_start_time(child.pid))
        logger.info("job %s: started process %s", job_id, child.pid)

    def _refresh_progress(self, job_id: str) -> None:
        path = self.jobs_dir / job_id / "output" / "progress.jsonl"
        events, new_offset = read_events(path, self._offsets.get(job_id, 0))
        if not events and job_id in self._summaries:
            return
        summary = summarise(events, self._summaries.get(job_id))
        self._offsets[job_id] = new_offset
        self._summaries[job_id] = summary
        changes = {k: summary[k] for k in _SUMMARY_COLUMNS if k in summary}
        if changes:
            self.store.update(job_id, **changes)

    def _finish(self, job_id: str, *, exit_code: int | None, restarted: bool = False) -> None:
        row = self.store.row(job_id)
        summary = self._summaries.pop(job_id, None) or {}
        self._offsets.pop(job_id, None)
        metrics_written = (self.jobs_dir / job_id / "output" / "metrics.json").is_file()
        if (summary.get("done") and exit_code in (0, None)) or (
                exit_code == 0 and metrics_written and not summary.get("error")):
            status, error = SUCCEEDED, None
        elif row["cancel_requested_at"]:
            status, error = CANCELLED, f"cancelled at step {_where(row)}; its checkpoints are kept"
        else:
            status, error = FAILED, summary.get("error") or _failure(row, exit_code, restarted)
        self.store.update(job_id, status=status, finished_at=time.time(), exit_code=exit_code, error=error)
        logger.info("job %s: %s", job_id, status)

    def _public(self, row) -> dict[str, Any]:
        data = {key: row[key] for key in row.keys() if key not in ("proc_start", "killed")}
        data["cancel_requested"] = bool(data.pop("cancel_requested_at"))
        output = self.jobs_dir / row["id"] / "output"
        data["has_adapter"] = artifacts.has_adapter(output)
        # What the UI's Resume button needs (POST /resume checks the checkpoint's files in full).
        data["has_checkpoint"] = row["status"] in (FAILED, CANCELLED) and artifacts.has_marked_checkpoint(output)
        data["dataset_name"] = self.datasets.name_of(row["dataset_id"])
        return data


def _where(row) -> str:
    return f"{row['step']}" + (f" of {row['total_updates']}" if row["total_updates"] else "")


def _failure(row, exit_code: int | None, restarted: bool) -> str:
    """Why a job failed that reported no error event of its own."""
    where = f"last step {_where(row)}"
    if restarted:
        return f"the server was restarted while this job ran and its process is gone ({where})"
    if exit_code is not None and exit_code < 0:
        return f"the training process was killed by signal {-exit_code} ({where})"
    if exit_code is not None:
        return f"the training process exited with code {exit_code} ({where}); see the log"
    return f"the training process ended without reporting completion ({where})"


def _default_token() -> str | None:
    from deepsynth.publishing.hub import resolve_token

    return resolve_token()
