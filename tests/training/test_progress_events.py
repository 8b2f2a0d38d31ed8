"""progress.jsonl has one event schema, written by the trainer and the CLI and read by the web job runner."""

from __future__ import annotations

import json

from deepsynth.data import DataError
from deepsynth.training.errors import ConfigError, DiskFullError
from deepsynth.training.progress import (
    SCHEMA_VERSION, Done, Error, Log, Phase, ProgressWriter, Start, parse_event, read_events, record_error,
    record_error_in, summarise, typed_events,
)


def test_written_events_read_back_typed_and_fold_into_a_summary(tmp_path):
    path = tmp_path / "progress.jsonl"
    heard = []
    writer = ProgressWriter(path, heard.append)
    written = [Start(total_updates=4, total_steps=8, num_train_samples=3), Phase(name="training"),
               Log(step=1, epoch=0.5, loss=3.5, learning_rate=1e-3), Log(step=2, epoch=1.0, loss=3.0,
                                                                      learning_rate=5e-4, aux_loss=0.1),
               Done(metrics_path="metrics.json")]
    for event in written:
        writer.emit(event)
    records, offset = read_events(path)
    assert offset == path.stat().st_size and records == heard
    assert all(r["version"] == SCHEMA_VERSION and isinstance(r["time"], float) for r in records)
    assert "aux_loss" not in records[2] and records[0]["resumed_from"] is None  # null kept where readers expect it
    assert typed_events(records) == written
    assert summarise(records) == {"total_updates": 4, "total_steps": 8, "num_train_samples": 3, "phase": "training",
                                  "step": 2, "last_loss": 3.0, "done": True}


def test_records_that_are_not_schema_events_are_skipped():
    assert parse_event({"event": "log", "step": "1", "epoch": 0.1, "loss": 1.0, "learning_rate": 0.0}) is None
    assert parse_event({"event": "start", "total_updates": 4}) is None  # required fields missing
    assert parse_event({"event": "mystery"}) is None and parse_event([1]) is None
    old = {"event": "eval", "time": 1.0, "step": 2, "eval_loss": 1.5, "extra": "ignored"}  # no version: read as 1
    assert parse_event(old).eval_loss == 1.5


def test_errors_are_recorded_once_with_what_the_cli_prints(tmp_path):
    path = tmp_path / "progress.jsonl"
    error = ConfigError("max_length", 64, "room for the targets")
    record_error(ProgressWriter(path), error)
    record_error(ProgressWriter(path), error)  # a second handler of the same failure writes nothing
    (event,) = typed_events(read_events(path)[0])
    assert event == Error(message="max_length: got 64, expected room for the targets", error_type="ConfigError",
                          field="max_length")
    record_error(ProgressWriter(path), KeyboardInterrupt())
    bad_row = DataError("summary is empty", source="d.jsonl", row=3, column="summary")
    record_error(ProgressWriter(path), bad_row)
    record_error(ProgressWriter(path), DiskFullError("no room", path=tmp_path, needed=10, free=1))
    interrupted, data, full = typed_events(read_events(path)[0])[1:]
    assert interrupted.message == "KeyboardInterrupt: " and interrupted.error_type == "KeyboardInterrupt"
    assert data.message == str(bad_row) and "summary is empty" in data.message and data.error_type == "DataError"
    assert (full.kind, full.path, full.needed_bytes, full.free_bytes) == ("disk_full", str(tmp_path), 10, 1)
    assert summarise(read_events(path)[0])["error"] == "no room"


def test_no_folder_is_created_to_record_an_error(tmp_path):
    assert not record_error_in(tmp_path / "absent", ValueError("bad"))
    assert not (tmp_path / "absent").exists()
    assert record_error_in(tmp_path, ValueError("bad"))
    assert json.loads((tmp_path / "progress.jsonl").read_text())["message"] == "bad"
