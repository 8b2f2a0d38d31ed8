"""Crash safety: real `deepsynth train` processes killed with SIGKILL resume to the uninterrupted result."""

import json
import os
import subprocess
import sys
from pathlib import Path

from deepsynth.training.checkpoints import MARKER, checkpoint_problem
from deepsynth.training.config import TrainerConfig
from deepsynth.training.production_trainer import UnifiedProductionTrainer

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_sigkill_at_random_moments_and_as_checkpoints_appear_loses_nothing(tmp_path):
    # The benchmark script as documented: 10 kills of runs forked from a warm forkserver (series of 5
    # in one output folder) plus 2 kills of the `deepsynth` console script itself. Every series' last
    # run must end with the planned 9 updates, a 9-entry loss history, the uninterrupted run's
    # train_loss and a byte-identical adapter, no partial checkpoint, the foreign checkpoint-999 kept.
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "fault_injection.py"), "--kills", "10", "--console-kills", "2",
         "--per-series", "5", "--launcher", "forkserver", "--seed", "12", "--workdir", str(tmp_path / "work"),
         "--json", str(tmp_path / "report.json")],
        capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    lost = [series for series in report["series"] if series["problems"]]
    assert not lost, lost
    kills = report["kills"]
    assert len(kills) == 12 and all(kill["survived"] for kill in kills)
    assert sum(kill["launcher"] == "subprocess" for kill in kills) == 2
    assert {kill["mode"] for kill in kills} == {"random", "appears", "writing"}
    # The kills did hit checkpoints while they were being written (the case that blocked resume).
    assert sum(bool(kill["partial"]) for kill in kills if kill["mode"] == "appears") >= 2
    assert report["reference"]["updates"] == report["reference"]["history"] == 9
    assert "total" in result.stdout and "lost" in result.stdout


def _config(out: Path, **overrides) -> TrainerConfig:
    settings = dict(output_dir=str(out), batch_size=1, num_epochs=2, gradient_accumulation_steps=1,
                    max_train_samples=3, max_eval_samples=1, max_new_tokens=1, preset="tiny_data",
                    checkpoint_every_updates=2, save_total_limit=2, resume_from_checkpoint="auto")
    settings.update(overrides)
    return TrainerConfig.from_dict(settings)


def test_resume_skips_partial_and_foreign_folders_says_why_and_deletes_neither(tmp_path, caplog):
    out = tmp_path / "run"
    UnifiedProductionTrainer(_config(out)).train()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]  # rotated to 2
    assert checkpoint_problem(out / "checkpoint-6") is None
    # The repro (a stray folder), plus a checkpoint whose optimizer state was cut short.
    (out / "checkpoint-999").mkdir()
    torn = out / "checkpoint-7"
    torn.mkdir()
    for item in (out / "checkpoint-6").iterdir():
        (torn / item.name).write_bytes(item.read_bytes())
    (torn / MARKER).unlink()
    (torn / "optimizer.pt").write_bytes(b"")
    mislabelled = out / "checkpoint-8"
    mislabelled.mkdir()
    (mislabelled / MARKER).write_text('{"format": 1, "step": 6, "files": {}}')

    caplog.set_level("INFO", logger="deepsynth")
    metrics, _ = UnifiedProductionTrainer(_config(out)).train()
    assert metrics["train"]["resumed_from"] == str(out / "checkpoint-6")
    assert metrics["optimizer_updates"] == 6
    start = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()
             if json.loads(line)["event"] == "start"][-1]
    reasons = {Path(item["path"]).name: item["reason"] for item in start["resume_skipped"]}
    assert reasons["checkpoint-999"].startswith("incomplete: no deepsynth-complete.json")
    assert reasons["checkpoint-7"].startswith("incomplete: no deepsynth-complete.json")
    assert "describes step 6" in reasons["checkpoint-8"]
    assert reasons["checkpoint-4"] == "older than checkpoint-6"
    assert "not resuming from %s: %s" % (out / "checkpoint-999", reasons["checkpoint-999"]) in caplog.text
    # Nothing it did not write was deleted or changed.
    assert (out / "checkpoint-999").is_dir() and (torn / "optimizer.pt").stat().st_size == 0
    assert (mislabelled / MARKER).is_file()
