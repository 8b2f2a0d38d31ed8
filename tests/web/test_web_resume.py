"""Resuming a job whose server and training process both died (issue 21, item 13): POST
/api/jobs/{id}/resume and the page's Resume button continue it from its newest complete checkpoint."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from web_support import FAST_JOB, assert_error

from deepsynth.web.jobs.processes import process_alive

CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]
# 2 samples x 10 epochs = 20 updates, a checkpoint after each: long enough to be killed half-way.
RESUMABLE_JOB = {**FAST_JOB, "num_epochs": 10, "checkpoint_every_updates": 1, "save_total_limit": 2}
PLANNED_UPDATES = 20


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return found


def _kill_server_and_trainer(server, job_id: str, output: Path) -> str:
    """Once the job has a complete checkpoint-2 or later, SIGKILL the server and the training process."""
    def marked() -> list[Path]:
        return sorted(output.glob("checkpoint-*/deepsynth-complete.json"))

    _wait(lambda: [m for m in marked() if int(m.parent.name.split("-")[1]) >= 2], 240, "a complete checkpoint-2")
    pid = server.http.get(f"/api/jobs/{job_id}").json()["pid"]
    os.killpg(server.process.pid, signal.SIGKILL)
    os.killpg(pid, signal.SIGKILL)
    _wait(lambda: not process_alive(pid, None), 20, "the training process to die")
    assert not (output / "metrics.json").exists(), "the run ended before the kill"
    return max((m.parent.name for m in marked()), key=lambda name: int(name.split("-")[1]))


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install -y chromium)")
def test_a_job_whose_server_and_trainer_died_resumes_from_the_page(serve_process, state_dir):
    playwright_api = pytest.importorskip("playwright.sync_api")
    with serve_process() as server:
        job = server.http.post("/api/jobs", json={"dataset_id": "sample", **RESUMABLE_JOB}).json()
        output = state_dir / "jobs" / job["id"] / "output"
        newest = _kill_server_and_trainer(server, job["id"], output)

    with serve_process() as server, playwright_api.sync_playwright() as playwright:
        failed = server.http.get(f"/api/jobs/{job['id']}").json()
        assert failed["status"] == "failed" and failed["has_checkpoint"], failed
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=BROWSER_ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(server.login_url)
            page.wait_for_selector("body[data-ready='1']")
            button = f"button.resume-job[data-job-id='{job['id']}']"
            page.click(button)
            page.wait_for_selector(button, state="detached")  # queued again: the table has no Resume for it
            assert server.http.get(f"/api/jobs/{job['id']}").json()["status"] in ("queued", "running")
            assert page.text_content("#job-id") == job["id"]  # and the page follows it
            done = server.wait_job(job["id"], lambda j: j["status"] in ("succeeded", "failed"), timeout=300)
            page.wait_for_function("document.getElementById('job-status').textContent === 'succeeded'",
                                   timeout=30_000)
            assert page.text_content("#job-error") == "" and errors == [], errors
        finally:
            browser.close()
    assert done["status"] == "succeeded" and done["error"] is None, done
    metrics = json.loads((output / "metrics.json").read_text())
    # It continued from the newest complete checkpoint, and the whole run's updates are there.
    assert metrics["train"]["resumed_from"] == str(output / newest), metrics["train"]
    assert metrics["optimizer_updates"] == PLANNED_UPDATES
    assert len([h for h in metrics["history"] if "loss" in h]) == PLANNED_UPDATES
    assert (output / "adapter_model.safetensors").is_file()


def _stub(script: str):
    return lambda config, data, eval_data, output: [sys.executable, "-c", script, str(output)]


def test_resume_refuses_jobs_it_cannot_continue(live_server):
    fail = "import sys; sys.exit(3)"
    with live_server(job_command=_stub(fail)) as server:
        job = server.http.post("/api/jobs", json={"dataset_id": "sample"}).json()
        server.wait_job(job["id"], lambda j: j["status"] == "failed", timeout=30)
        assert_error(server.http.post(f"/api/jobs/{job['id']}/resume"), 409, "no complete checkpoint")
        assert_error(server.http.post("/api/jobs/nosuchjob/resume"), 404, "nosuchjob")
    # A running (or queued) job is not resumed: it is still going.
    hold = "import time; time.sleep(60)"
    with live_server(job_command=_stub(hold)) as server:
        running = server.http.post("/api/jobs", json={"dataset_id": "sample"}).json()
        server.wait_job(running["id"], lambda j: j["status"] == "running", timeout=30)
        assert_error(server.http.post(f"/api/jobs/{running['id']}/resume"), 409, "running", "failed or cancelled")
        server.http.post(f"/api/jobs/{running['id']}/cancel")
        server.wait_job(running["id"], lambda j: j["status"] == "cancelled", timeout=30)
