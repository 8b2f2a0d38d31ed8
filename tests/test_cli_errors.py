"""One reading of an error (deepsynth.training.boundary.describe_error) for every interface: the CLI's
line and exit code, the web API's status and body, and the progress file's error event agree."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from deepsynth.cli import main
from deepsynth.errors import ConfigError, ModelNotFoundError
from deepsynth.training.boundary import describe_error
from deepsynth.training.errors import DiskFullError
from deepsynth.training.progress import error_event
from deepsynth.web.app import create_app

TOKEN = "cli-errors-access-token-0123456789"


def test_a_bad_setting_reads_the_same_on_the_command_line_in_the_api_and_in_the_progress_file(tmp_path, capsys):
    code = main(["train", "--lora-rank", "0", "--dry-run", "--output-dir", str(tmp_path / "run")])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    client = TestClient(create_app(tmp_path / "state", access_token=TOKEN), headers={"Authorization": f"Bearer {TOKEN}"})
    answer = client.post("/api/jobs", json={"dataset_id": "sample", "lora_rank": 0})
    event = error_event(ConfigError("lora_rank", 0, "an integer > 0"))
    assert code == 2 and answer.status_code == 422
    assert line == f"error: {answer.json()['error']}" == f"error: {event.message}"
    assert event.field == "lora_rank" and event.message.startswith("lora_rank: got 0")


@pytest.mark.parametrize(("error", "status", "exit_code", "kind"), [
    (ConfigError("lora_rank", 0, "an integer > 0"), 422, 2, "bad_input"),
    (ModelNotFoundError("model: 'nobody/nothing' was not found"), 404, 2, "not_found"),
    (DiskFullError("disk full: saving checkpoint-2", path=Path("run"), needed=10, free=1), 507, 1, "disk_full"),
    (OSError(errno.ENOSPC, "No space left on device", "/state/tmp/upload"), 507, 1, "disk_full"),
    (RuntimeError("a bug"), 500, None, "internal"),
])
def test_each_kind_of_error_has_one_status_and_one_exit_code(error, status, exit_code, kind):
    described = describe_error(error, paths=False)
    assert (described.http_status, described.exit_code, described.kind) == (status, exit_code, kind)
    assert "/state" not in described.message  # a web client is not told the server's folders
    if isinstance(error, OSError) and not isinstance(error, DiskFullError):  # the CLI's user is
        assert "writing /state/tmp/upload" in describe_error(error).message
    if kind == "internal":  # a bug keeps its type in the message (the CLI shows its traceback instead)
        assert described.message == "RuntimeError: a bug"

