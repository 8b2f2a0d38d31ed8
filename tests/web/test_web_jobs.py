"""Training jobs with the real `deepsynth train` on the embedded model, served by uvicorn: queue,
live progress (SSE), cancel with checkpoints kept, token hygiene, and server restarts."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
from web_support import FAST_JOB, HUB_TOKEN, SLOW_JOB, files_containing

from deepsynth.web.datasets_store import DatasetStore
from deepsynth.web.jobs.processes import process_alive
from deepsynth.web.jobs.store import StateFolderInUse
from deepsynth.web.jobs.supervisor import JobManager


def _proc_environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _gone(pid: int, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_alive(pid, None):
            return True
        time.sleep(0.1)
    return False


class EventReader(threading.Thread):
    """Reads a job's SSE stream in the background, keeping (event, data) pairs."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.url, self.headers = url, headers
        self.events: list[tuple[str, dict]] = []
        self.raw = ""
        self.error: BaseException | None = None

    def run(self) -> None:
        import httpx2 as httpx

        try:
            with httpx.stream("GET", self.url, headers=self.headers, timeout=httpx.Timeout(120, read=120)) as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                kind = None
                for line in response.iter_lines():
                    self.raw += line + "\n"
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: ") and kind:
                        self.events.append((kind, json.loads(line[6:])))
                        if kind == "end":
                            return
        except BaseException as error:  # surfaced by the test
            self.error = error

    def wait_for(self, predicate, timeout: float = 90) -> tuple[str, dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for item in list(self.events):
                if predicate(*item):
                    return item
            if self.error is not None:
                raise self.error
            time.sleep(0.1)
        raise AssertionError(f"no matching event in {timeout} s; got {[k for k, _ in self.events]}")


def test_queue_live_progress_cancel_keeps_checkpoints_and_token_stays_in_env(live_server, state_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    with live_server(cancel_grace_s=10) as server:
        http = server.http
        first = http.post("/api/jobs", json={"dataset_id": "sample", **SLOW_JOB}).json()
        second = http.post("/api/jobs", json={"dataset_id": "sample", **FAST_JOB})
        assert second.status_code == 201, second.text
        second = second.json()
        first = server.wait_job(first["id"], lambda j: j["status"] == "running", timeout=10)
        # One heavy job at a time: the second waits.
        assert http.get(f"/api/jobs/{second['id']}").json()["status"] == "queued"

        # The Hub token reaches the training process through its environment, and nowhere else.
        pid = first["pid"]
        assert f"HF_TOKEN={HUB_TOKEN}".encode() in _proc_environ(pid)
        config_text = (state_dir / "jobs" / first["id"] / "config.yaml").read_text()
        assert HUB_TOKEN not in config_text

        reader = EventReader(f"{server.url}/api/jobs/{first['id']}/events", server.headers)
        reader.start()
        reader.wait_for(lambda kind, data: kind == "progress" and data.get("event") == "start")
        reader.wait_for(lambda kind, data: kind == "progress" and data.get("event") == "log" and data["step"] >= 2)
        # The job's row follows the progress file at the runner's next poll (the stream reads the file itself).
        running = server.wait_job(first["id"], lambda j: (j.get("step") or 0) >= 1, timeout=30)
        assert running["status"] == "running" and running["total_updates"] == 2 * 500 and running["step"] >= 1
        assert running["loss_history"] and running["phase"] == "training"

        cancelled = http.post(f"/api/jobs/{first['id']}/cancel").json()
        assert cancelled["cancel_requested"]
        _, end = reader.wait_for(lambda kind, data: kind == "end", timeout=30)
        reader.join(5)
        assert end["status"] == "cancelled" and "cancelled at step" in end["error"]
        statuses = [data["status"] for kind, data in reader.events if kind == "status"]
        assert statuses[0] == "running" and statuses[-1] == "cancelled"
        steps = [data["step"] for kind, data in reader.events if kind == "progress" and data.get("event") == "log"]
        assert steps == sorted(steps) and steps[0] == 1
        assert _gone(pid)

        # The checkpoints are kept, and the latest one is downloadable.
        output = state_dir / "jobs" / first["id"] / "output"
        checkpoints = sorted(output.glob("checkpoint-*"))
        assert checkpoints, list(output.iterdir())
        response = http.get(f"/api/jobs/{first['id']}/artifacts")
        assert response.status_code == 200, response.text
        names = zipfile.ZipFile(io.BytesIO(response.content)).namelist()
        assert "adapter_config.json" in names and "optimizer.pt" not in names
        assert http.post(f"/api/jobs/{first['id']}/cancel").status_code == 409

        # The queued job starts once the first has ended.
        second = server.wait_job(second["id"], lambda j: j["status"] != "queued", timeout=10)
        assert second["status"] == "running"
        http.post(f"/api/jobs/{second['id']}/cancel")
        second = server.wait_job(second["id"], lambda j: j["status"] in ("cancelled", "succeeded", "failed"), 30)
        assert second["status"] == "cancelled", second

        responses = [http.get("/api/jobs").text, http.get(f"/api/jobs/{first['id']}").text,
                     http.get(f"/api/jobs/{second['id']}").text, reader.raw, http.get("/api/hub").text]
    assert not [r for r in responses if HUB_TOKEN in r]
    assert files_containing(state_dir, HUB_TOKEN) == []


def test_jobs_survive_a_server_restart_and_never_run_twice(live_server, state_dir):
    with live_server() as server:
        job = server.http.post("/api/jobs", json={"dataset_id": "sample", **SLOW_JOB}).json()
        waiting = server.http.post("/api/jobs", json={"dataset_id": "sample", **FAST_JOB}).json()
        job = server.wait_job(job["id"], lambda j: j["step"] >= 1, timeout=90)
        pid = job["pid"]
    # The server is gone; its training process goes on.
    assert process_alive(pid, None)

    with live_server() as server:
        adopted = server.http.get(f"/api/jobs/{job['id']}").json()
        assert adopted["status"] == "running" and adopted["pid"] == pid  # adopted, not started again
        # A later step in the row means a supervision pass has run since the adoption (the row's step is
        # read in the same locked pass that starts queued jobs): the waiting job must have stayed queued.
        step_seen = server.wait_job(job["id"], lambda j: j["step"] > adopted["step"])["step"]
        assert server.http.get(f"/api/jobs/{waiting['id']}").json()["status"] == "queued"
        assert len(server.http.get("/api/jobs").json()["jobs"]) == 2

    # Now the process dies while no server is watching.
    os.killpg(pid, signal.SIGKILL)
    assert _gone(pid)
    progress = state_dir / "jobs" / job["id"] / "output" / "progress.jsonl"
    size = progress.stat().st_size

    with live_server() as server:
        failed = server.http.get(f"/api/jobs/{job['id']}").json()
        assert failed["status"] == "failed", failed
        assert failed["step"] >= step_seen >= 1
        assert "restarted" in failed["error"] and f"last step {failed['step']} of 1000" in failed["error"]
        # The waiting job starts now; the failed one is never resumed.
        started = server.wait_job(waiting["id"], lambda j: j["status"] != "queued", timeout=10)
        assert started["status"] == "running" and started["pid"] != pid
        server.http.post(f"/api/jobs/{waiting['id']}/cancel")
        server.wait_job(waiting["id"], lambda j: j["status"] == "cancelled", timeout=30)
        assert server.http.get(f"/api/jobs/{job['id']}").json()["status"] == "failed"
    assert progress.stat().st_size == size


def test_a_second_server_on_the_same_state_folder_is_refused(live_server, state_dir):
    with live_server():
        second = JobManager(state_dir, DatasetStore(state_dir))
        with pytest.raises(StateFolderInUse, match="another deepsynth server"):
            second.start()


def _stub(script: str):
    """A stand-in for the trainer process, to drive the supervisor's edge cases quickly."""
    return lambda config, data, eval_data, output: [sys.executable, "-c", script]


def _wait(manager: JobManager, job_id: str, until, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = manager.detail(job_id)
        if until(job):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def test_cancel_escalates_to_sigkill_and_a_failed_trainer_reports_its_error(state_dir):
    # A trainer that notes SIGTERM in its log and goes on, as one stuck in a long step would.
    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, lambda *_: print('got SIGTERM', flush=True)); "
                "print('ready', flush=True); [time.sleep(1) for _ in range(120)]")
    grace = 1.0
    manager = JobManager(state_dir, DatasetStore(state_dir), cancel_grace_s=grace, poll_interval_s=0.05,
                         command=_stub(stubborn))
    manager.start()
    try:
        job = manager.submit({"dataset_id": "sample"})
        job = _wait(manager, job["id"], lambda j: j["status"] == "running" and "ready" in j["log_tail"])
        asked = time.time()
        manager.cancel(job["id"])
        # SIGTERM first: the process reports it, and lives on...
        _wait(manager, job["id"], lambda j: "got SIGTERM" in j["log_tail"])
        job = _wait(manager, job["id"], lambda j: j["status"] == "cancelled")  # ...SIGKILL after the grace period
        assert _gone(job["pid"]) and job["exit_code"] == -signal.SIGKILL
        assert job["finished_at"] - asked >= grace, "killed before the grace period was over"

        # What the CLI does with bad input found once the run folder exists: the structured event, then the line.
        manager.command = _stub("import sys; from deepsynth.errors import ConfigError; "
                                "from deepsynth.training.progress import record_error_in; "
                                "error = ConfigError('lora_rank', 0, 'an integer > 0'); "
                                "record_error_in('output', error); print(f'error: {error}'); sys.exit(2)")
        failed = manager.submit({"dataset_id": "sample"})
        failed = _wait(manager, failed["id"], lambda j: j["status"] == "failed")
        assert failed["error"].startswith("lora_rank: got 0") and failed["exit_code"] == 2

        manager.command = _stub(stubborn)
        last = manager.submit({"dataset_id": "sample"})
        last = _wait(manager, last["id"], lambda j: j["status"] == "running" and "ready" in j["log_tail"])
    finally:
        manager.close(stop_running=True)  # what `deepsynth serve --stop-jobs-on-exit` does
    assert _gone(last["pid"], timeout=5)
    reopened = JobManager(state_dir, DatasetStore(state_dir))
    assert reopened.get(last["id"])["status"] == "cancelled"


def test_a_failed_run_is_explained_by_its_structured_error_event_not_its_printed_lines(state_dir):
    # What the trainer does on failure (production_trainer emits an "error" event, then the CLI prints).
    script = ("import json, os, sys; os.makedirs('output', exist_ok=True); "
              "f = open('output/progress.jsonl', 'a'); "
              "f.write(json.dumps({'event': 'start', 'total_updates': 4, 'total_steps': 4, "
              "'num_train_samples': 2}) + '\\n'); "
              "f.write(json.dumps({'event': 'error', 'message': 'DataError: row 3: summary is empty'}) + '\\n'); "
              "f.close(); print('error: something printed later'); sys.exit(1)")
    manager = JobManager(state_dir, DatasetStore(state_dir), poll_interval_s=0.05, command=_stub(script))
    manager.start()
    try:
        job = manager.submit({"dataset_id": "sample"})
        job = _wait(manager, job["id"], lambda j: j["status"] == "failed")
    finally:
        manager.close()
    assert job["error"] == "DataError: row 3: summary is empty" and job["total_updates"] == 4


def test_a_real_run_that_fails_records_a_structured_error_the_job_shows(state_dir):
    # The real `deepsynth train` process: the data pass the upload checks, but a max_length too short
    # for the page's vision tokens is found only once the model is loaded (the run folder exists).
    manager = JobManager(state_dir, DatasetStore(state_dir), poll_interval_s=0.1)
    manager.start()
    try:
        job = manager.submit({"dataset_id": "sample", **FAST_JOB, "max_length": 64})
        job = _wait(manager, job["id"], lambda j: j["status"] in ("failed", "succeeded"), timeout=240)
    finally:
        manager.close()
    progress = (state_dir / "jobs" / job["id"] / "output" / "progress.jsonl").read_text(encoding="utf-8")
    (event,) = [json.loads(line) for line in progress.splitlines()]
    assert event["event"] == "error" and event["field"] == "max_length" and event["error_type"] == "ConfigError"
    assert job["status"] == "failed" and job["exit_code"] == 2
    assert job["error"] == event["message"] and job["error"].startswith("max_length: got 64, expected room")
    assert any(line.startswith("error: max_length") for line in job["log_tail"])  # the CLI still prints it


def test_a_cancelled_jobs_adapter_is_its_newest_complete_checkpoint_not_a_partial_one(state_dir):
    # What a run killed mid-save leaves: checkpoint-2 complete (its marker written by the real
    # checkpoint code), checkpoint-4 cut off after adapter_config.json, before its marker.
    script = ("import os, sys, time; from pathlib import Path; "
              "from deepsynth.training.checkpoints import write_marker; "
              "[os.makedirs(f'output/checkpoint-{n}', exist_ok=True) for n in (2, 4)]; "
              "[Path(f'output/checkpoint-{n}/{name}').write_text('{}') for n in (2, 4) "
              "for name in ('adapter_config.json', 'trainer_state.json')]; "
              "write_marker(Path('output/checkpoint-2'), 2); print('ready', flush=True); time.sleep(120)")
    manager = JobManager(state_dir, DatasetStore(state_dir), cancel_grace_s=0.5, poll_interval_s=0.05,
                         command=_stub(script))
    manager.start()
    try:
        job = manager.submit({"dataset_id": "sample"})
        # The stand-in imports torch (the checkpoint code): seconds, more on a loaded machine.
        job = _wait(manager, job["id"], lambda j: j["status"] == "running" and "ready" in j["log_tail"], 120)
        manager.cancel(job["id"])
        _wait(manager, job["id"], lambda j: j["status"] == "cancelled")
        folder, kind = manager.adapter_dir(job["id"])
    finally:
        manager.close(stop_running=True)
    assert (folder.name, kind) == ("checkpoint-2", "checkpoint")
