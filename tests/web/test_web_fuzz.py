"""API conformance: schemathesis fuzzes the real server (uvicorn in its own process, authenticated with
the bearer token it printed) for 30 s (about a minute with start-up), with its conformance checks on. It must find no
server error and no status code, content type, header or body the OpenAPI document does not declare.
A second pass (half as long) runs schemathesis' ST202 check, positive_data_acceptance: every request the
schema calls valid is accepted (no 400, 413 or 422), on every operation but the upload.

Random ids only reach the 404 of the routes that take a job or dataset id, so the test first makes a
finished job and uploads datasets, and lets the fuzzer use their ids half the time (schemathesis
dictionaries): artifacts, the event stream, push, cancel and delete are fuzzed on real resources too.
Jobs run a stand-in trainer that finishes at once (STUB_TRAINER), so nothing outlives the test; the
server has no Hub token and runs offline, so a push it reaches cannot leave the machine (502).
Longer runs: DEEPSYNTH_FUZZ_SECONDS=600 DEEPSYNTH_FUZZ_SEED=7 python -m pytest tests/web/test_web_fuzz.py
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from web_support import JSONL_ROWS, stub_serve_command

FUZZ_SECONDS = int(os.environ.get("DEEPSYNTH_FUZZ_SECONDS", "30"))
SEED = os.environ.get("DEEPSYNTH_FUZZ_SEED", "20261202")
ST202_SECONDS = max(10, FUZZ_SECONDS // 2)
UPLOAD_OPERATION = "upload_dataset_api_datasets_post"
CHECKS = ",".join([
    "not_a_server_error",            # no 5xx (but the declared 502 of a push the Hub fails)
    "status_code_conformance",       # every status is declared for its route
    "content_type_conformance",      # ...with its declared media type
    "response_schema_conformance",   # ...and a body of its declared schema
    "response_headers_conformance",
    "unsupported_method",            # undeclared methods answer 405
    "allow_header_conformance",      # ...with an Allow header listing the declared ones
    "ignored_auth",                  # without the token: refused (401)
])
# The fuzzer's settings: the token comes from the environment (not its command line), and real ids
# are used for the id parameters half the time.
CONFIG = """
headers = { Authorization = "Bearer ${DEEPSYNTH_FUZZ_TOKEN}" }

[dictionaries.jobs]
values = %(jobs)s

[dictionaries.datasets]
values = %(datasets)s

[parameters]
job_id = { dictionary = "jobs", probability = 0.5 }
dataset_id = { dictionary = "datasets", probability = 0.5 }

# A push the Hub fails (here: offline) is the declared 502 Bad Gateway, the one 5xx the server gives.
[[operations]]
include-path = "/api/jobs/{job_id}/push"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "502"]
"""
# uvicorn's access log line: 127.0.0.1:PORT - "METHOD /path HTTP/1.1" STATUS
ACCESS_LINE = re.compile(r'"([A-Z]+) (\S+) HTTP/[\d.]+" (\d{3})')


def _first_requests_at_once(server) -> list[str]:
    """A fresh server's first estimate and uploads, all at once; returns the uploaded datasets' ids.

    They once raced to import transformers (HTTP 500 "module 'transformers' has no attribute
    'PreTrainedTokenizerBase'"). This also warms the server up: the first model-building call takes
    seconds, which would otherwise be blamed on whichever fuzzed request came first.
    """
    def upload(_):
        return server.http.post("/api/datasets", files={"file": ("a.jsonl", JSONL_ROWS)})

    with ThreadPoolExecutor(4) as pool:
        estimate = pool.submit(server.http.post, "/api/lora/estimate", json={})
        uploads = list(pool.map(upload, range(3)))
    assert estimate.result().status_code == 200, estimate.result().text
    assert [r.status_code for r in uploads] == [201] * 3, [r.text for r in uploads]
    return [r.json()["id"] for r in uploads]


def _real_jobs(server) -> list[str]:
    """The id of a finished job (with an adapter to download or push)."""
    finished = server.http.post("/api/jobs", json={"dataset_id": "sample"}).json()["id"]
    server.wait_job(finished, lambda job: job["status"] == "succeeded", timeout=60)
    return [finished]


def _settled_jobs(server, timeout: float = 30) -> list[dict]:
    """The server's jobs once none is queued or running (the stand-in trainer exits at once)."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = server.http.get("/api/jobs").json()["jobs"]
        if all(job["status"] in ("succeeded", "failed", "cancelled") for job in jobs) or time.monotonic() > deadline:
            return jobs
        time.sleep(0.2)


def test_schemathesis_finds_no_server_error_and_no_undocumented_response(serve_process, state_dir, tmp_path):
    options = json.dumps({"log_level": "info", "max_concurrent_jobs": 1})
    env = {"HF_TOKEN": None, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    with serve_process(str(state_dir), options, command=stub_serve_command(), env=env) as server:
        datasets = ["sample", *_first_requests_at_once(server)]
        config = tmp_path / "schemathesis.toml"
        config.write_text(CONFIG % {"jobs": json.dumps(_real_jobs(server)), "datasets": json.dumps(datasets)})
        command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
                   f"{server.url}/openapi.json", "--checks", CHECKS, "--max-time", str(FUZZ_SECONDS),
                   "--seed", SEED, "--workers", "1", "--request-timeout", "30", "--continue-on-failure",
                   "--report", "json", "--report-dir", str(tmp_path / "report")]
        # (run in tmp_path: schemathesis keeps a cache folder in its working directory)
        environment = {**os.environ, "NO_COLOR": "1", "DEEPSYNTH_FUZZ_TOKEN": server.token}
        run = subprocess.run(command, capture_output=True, text=True, timeout=FUZZ_SECONDS + 120, cwd=tmp_path,
                             env=environment)
        # ST202 (positive_data_acceptance): every request the schema calls valid is accepted (no 400, 413
        # or 422), on every operation but the upload, whose file is schema-valid whatever its bytes (its
        # type and rows are checked by the server, which no schema can state).
        acceptance = [*command[:command.index("--checks")], "--checks", "positive_data_acceptance",
                      "--exclude-operation-id", UPLOAD_OPERATION, "--max-time", str(ST202_SECONDS), "--seed", SEED,
                      "--workers", "1", "--request-timeout", "30", "--continue-on-failure",
                      "--report", "json", "--report-dir", str(tmp_path / "report-st202")]
        st202 = subprocess.run(acceptance, capture_output=True, text=True, timeout=ST202_SECONDS + 120, cwd=tmp_path,
                               env=environment)
        jobs = _settled_jobs(server)
    report = json.loads(next((tmp_path / "report").glob("*.json")).read_text())
    lines = ACCESS_LINE.findall(server.output)
    statuses = Counter(status for _, _, status in lines)
    server_errors = [(m, p, s) for m, p, s in lines if s.startswith("5") and not (s == "502" and p.endswith("/push"))]
    summary = (f"schemathesis: {report['test_cases']}, {len(lines)} requests served, "
               f"statuses {dict(sorted(statuses.items()))}")
    print(summary)
    if os.environ.get("DEEPSYNTH_FUZZ_VERBOSE"):
        print(run.stdout)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    acceptance_report = json.loads(next((tmp_path / "report-st202").glob("*.json")).read_text())
    print(f"ST202 pass: {acceptance_report['test_cases']}")
    assert st202.returncode == 0, st202.stdout[-6000:] + st202.stderr[-2000:]
    assert acceptance_report["failures"] == [] and acceptance_report["errors"] == [], st202.stdout[-6000:]
    assert acceptance_report["operations"]["tested"] == acceptance_report["operations"]["total"] - 1 >= 18
    assert report["failures"] == [] and report["errors"] == [], run.stdout[-6000:]
    assert report["operations"]["tested"] == report["operations"]["total"] >= 18, report["operations"]
    assert report["test_cases"]["generated"] >= 50, summary  # it really ran
    # From the server's side: it answered them all, never with an error of its own.
    assert len(lines) >= report["test_cases"]["generated"], summary
    assert server_errors == [], summary
    assert "Traceback" not in server.output and "internal error" not in server.output, server.output[-4000:]
    # Nothing it started outlives the test.
    assert all(job["status"] in ("succeeded", "failed", "cancelled") for job in jobs), jobs
    assert server.returncode == 0
