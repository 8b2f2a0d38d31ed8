"""Web faults of issue 21: unbounded uploads, and jobs whose server and training process both die.

Uploads (the real app, in this process): a CSV of ``--columns`` columns, a zip whose rows name
``--pdf-rows`` PDF pages, and a zip of a few hundred KB holding a member of ``--unused-mb`` MB the data
never names. Each upload's answer, seconds and the bytes the server kept are recorded.

Kills (``--kills N``): ``deepsynth serve`` as a user runs it, with the real trainer on the embedded model;
a job is started, and once it has a complete checkpoint the server and the training process are both
killed with SIGKILL. A new server on the same state folder finds the job failed; ``POST
/api/jobs/{id}/resume`` continues it. A kill is survived when the resumed job succeeds from a complete
checkpoint with the planned number of updates and the uninterrupted job's ``train_loss`` (a reference
job run first on the same server), and nothing printed a traceback.

    python benchmarks/web_faults.py --kills 3 --json benchmarks/results/web_faults.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

JOB = {"max_train_samples": 2, "max_eval_samples": 1, "num_epochs": 6, "gradient_accumulation_steps": 1,
       "max_new_tokens": 4, "checkpoint_every_updates": 1, "save_total_limit": 2}
PLANNED_UPDATES = 12
URL_LINE = re.compile(r"DeepSynth web UI: (http://127\.0\.0\.1:(\d+)/)")
TOKEN_LINE = re.compile(r"access token: in (\S+) \(")


# --- uploads --------------------------------------------------------------------------------------------

def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _one_page_pdf() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (200, 280), "white").save(buffer, format="PDF")
    return buffer.getvalue()


def upload_cases(columns: int, pdf_rows: int, unused_mb: int) -> dict[str, tuple[str, bytes]]:
    """name → (file name, bytes) of the three hostile uploads of issue 21."""
    header = ",".join(f"c{i}" for i in range(columns))
    wide = f"text,summary,{header}\nun,deux{',' * columns}\n".encode()
    rows = "".join(json.dumps({"summary": f"page {n}", "image": "doc.pdf#page=1"}) + "\n" for n in range(pdf_rows))
    pages = _zip({"set/targets.jsonl": rows.encode(), "set/doc.pdf": _one_page_pdf()})
    unused = _zip({"set/targets.jsonl": json.dumps({"text": "Le budget.", "summary": "Budget."}).encode() + b"\n",
                   "set/padding.bin": b"\0" * (unused_mb << 20)})
    return {f"csv_{columns}_columns": ("wide.csv", wide), f"zip_{pdf_rows}_pdf_rows": ("pages.zip", pages),
            f"zip_{unused_mb}mb_unused_member": ("unused.zip", unused)}


def run_uploads(columns: int, pdf_rows: int, unused_mb: int) -> list[dict[str, Any]]:
    from fastapi.testclient import TestClient

    from deepsynth.web.app import create_app
    from deepsynth.web.http import import_libraries

    import_libraries()  # a fresh server's one-time imports are not an upload's work
    token = "benchmark-access-token-0123456789"
    results = []
    with tempfile.TemporaryDirectory(prefix="deepsynth-uploads-") as state:
        app = create_app(Path(state), access_token=token)
        with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
            for case, (filename, content) in upload_cases(columns, pdf_rows, unused_mb).items():
                started = time.perf_counter()
                response = client.post("/api/datasets", files={"file": (filename, content)})
                seconds = time.perf_counter() - started
                kept = sum(p.stat().st_size for p in (Path(state) / "datasets").rglob("*") if p.is_file())
                body = response.json()
                results.append({"case": case, "upload_bytes": len(content), "status": response.status_code,
                                "seconds": round(seconds, 3), "kept_bytes": kept,
                                "answer": body.get("error") or f"dataset {body.get('id')} ({body.get('rows')} rows)"})
                if response.status_code == 201:
                    client.delete(f"/api/datasets/{body['id']}")
    return results


# --- kills of the server and the trainer ------------------------------------------------------------

class Server:
    """``deepsynth serve`` in its own session (output to a file, as under a service manager)."""

    def __init__(self, state: Path, log: Path) -> None:
        self.log = log
        started = log.stat().st_size if log.exists() else 0  # this launch's lines only
        with open(log, "ab") as stream:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "deepsynth.cli", "serve", "--port", "0", "--state-dir", str(state)],
                stdout=stream, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while not (found := URL_LINE.search(text := self.log.read_bytes()[started:].decode(errors='replace'))) or "state folder:" not in text:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"deepsynth serve did not start: {text[-2000:]}")
            time.sleep(0.1)
        self.url = found.group(1).rstrip("/")
        token = Path(TOKEN_LINE.findall(text)[-1]).read_text().strip()
        import httpx2 as httpx

        self.http = httpx.Client(base_url=self.url, timeout=120, headers={"Authorization": f"Bearer {token}"})

    def wait(self, job_id: str, until, timeout: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not until(job := self.http.get(f"/api/jobs/{job_id}").json()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} stuck: {job['status']} at step {job['step']}")
            time.sleep(0.2)
        return job

    def stop(self) -> None:
        self.http.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout=60)


def _metrics(state: Path, job_id: str) -> dict[str, Any]:
    return json.loads((state / "jobs" / job_id / "output" / "metrics.json").read_text())


def _complete_checkpoints(output: Path) -> list[int]:
    return sorted(int(p.parent.name.split("-")[1]) for p in output.glob("checkpoint-*/deepsynth-complete.json"))


def kill_round(state: Path, index: int, reference: dict[str, Any]) -> dict[str, Any]:
    """One job: kill -9 the server and its trainer after checkpoint ``1 + index % 4``, restart, resume."""
    log = state.parent / "serve.log"
    server = Server(state, log)
    job = server.http.post("/api/jobs", json={"dataset_id": "sample", **JOB}).json()
    output = state / "jobs" / job["id"] / "output"
    at = 1 + index % 4
    deadline = time.monotonic() + 600
    while not [n for n in _complete_checkpoints(output) if n >= at]:
        if time.monotonic() > deadline:
            raise RuntimeError("no checkpoint appeared")
        time.sleep(0.02)
    pid = server.http.get(f"/api/jobs/{job['id']}").json()["pid"]
    os.killpg(server.process.pid, signal.SIGKILL)
    os.killpg(pid, signal.SIGKILL)
    server.process.wait()
    newest = max(_complete_checkpoints(output))
    server = Server(state, log)
    try:
        failed = server.http.get(f"/api/jobs/{job['id']}").json()
        resumed = server.http.post(f"/api/jobs/{job['id']}/resume")
        done = server.wait(job["id"], lambda j: j["status"] in ("succeeded", "failed", "cancelled"))
    finally:
        server.stop()
    result = {"round": index, "killed_after_checkpoint": newest, "status_after_restart": failed["status"],
              "resume_status": resumed.status_code, "final_status": done["status"]}
    if done["status"] == "succeeded":
        metrics = _metrics(state, job["id"])
        result.update(resumed_from=Path(metrics["train"]["resumed_from"] or "").name,
                      updates=metrics["optimizer_updates"], train_loss=metrics["train"]["train_loss"])
    problems = []
    if result.get("updates") != PLANNED_UPDATES:
        problems.append(f"updates {result.get('updates')} != {PLANNED_UPDATES}")
    if result.get("resumed_from") != f"checkpoint-{newest}":
        problems.append(f"resumed from {result.get('resumed_from')!r}, not checkpoint-{newest}")
    if result.get("train_loss") is not None and abs(result["train_loss"] - reference["train_loss"]) > 1e-6:
        problems.append(f"train_loss {result['train_loss']} != reference {reference['train_loss']}")
    result["problems"] = problems
    result["survived"] = not problems and done["status"] == "succeeded"
    return result


def run_kills(kills: int, workdir: Path) -> dict[str, Any]:
    state = workdir / "state"
    server = Server(state, workdir / "serve.log")
    try:
        reference_job = server.http.post("/api/jobs", json={"dataset_id": "sample", **JOB}).json()
        done = server.wait(reference_job["id"], lambda j: j["status"] in ("succeeded", "failed"))
    finally:
        server.stop()
    if done["status"] != "succeeded":
        raise RuntimeError(f"the reference job failed: {done['error']}")
    metrics = _metrics(state, reference_job["id"])
    reference = {"updates": metrics["optimizer_updates"], "train_loss": metrics["train"]["train_loss"]}
    rounds = [kill_round(state, index, reference) for index in range(kills)]
    tracebacks = (workdir / "serve.log").read_text().count("Traceback")
    tracebacks += sum((p / "train.log").read_text().count("Traceback") for p in (state / "jobs").iterdir())
    return {"reference": reference, "rounds": rounds, "tracebacks": tracebacks,
            "survived": sum(r["survived"] for r in rounds), "lost": sum(not r["survived"] for r in rounds)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--columns", type=int, default=1_000_000)
    parser.add_argument("--pdf-rows", type=int, default=5_000)
    parser.add_argument("--unused-mb", type=int, default=191)
    parser.add_argument("--kills", type=int, default=3, help="jobs whose server and trainer are killed (0: none)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    report: dict[str, Any] = {"uploads": run_uploads(args.columns, args.pdf_rows, args.unused_mb)}
    for row in report["uploads"]:
        print(f"{row['case']}: {row['upload_bytes']:,} bytes uploaded -> {row['status']} in {row['seconds']} s, "
              f"{row['kept_bytes']:,} bytes kept: {row['answer'][:140]}")
    if args.kills:
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="deepsynth-web-faults-"))
        workdir.mkdir(parents=True, exist_ok=True)
        report["kills"] = run_kills(args.kills, workdir)
        for row in report["kills"]["rounds"]:
            print(f"kill {row['round']}: after checkpoint-{row['killed_after_checkpoint']}, restart says "
                  f"{row['status_after_restart']}, resume {row['resume_status']} -> {row['final_status']} from "
                  f"{row.get('resumed_from')}, {row.get('updates')} updates, train_loss {row.get('train_loss')}"
                  + (f"; LOST: {'; '.join(row['problems'])}" if row["problems"] else ""))
        print(f"kills: {report['kills']['survived']} survived, {report['kills']['lost']} lost, "
              f"{report['kills']['tracebacks']} tracebacks (reference train_loss {report['kills']['reference']['train_loss']})")
    report["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    quick = all(row["seconds"] < 5 and (row["status"] != 201 or row["kept_bytes"] < 1 << 20) for row in report["uploads"])
    return 0 if quick and (not args.kills or (report["kills"]["lost"] == 0 and report["kills"]["tracebacks"] == 0)) else 1


if __name__ == "__main__":
    sys.exit(main())
