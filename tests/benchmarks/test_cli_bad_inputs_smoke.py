"""Smoke run of benchmarks/cli_bad_inputs.py (fast cases: one error line, exit 2) and its first run's findings."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import cli_bad_inputs  # noqa: E402

# Cases that fail before torch is imported (a fresh process each): the whole run stays a few seconds.
FAST = ("train_epochs_text", "generate_neither_image_nor_text", "recommend_num_samples_text", "unknown_command",
        "serve_max_upload_zero", "serve_max_concurrent_jobs_zero", "push_adapter_not_an_adapter")


def test_the_sweep_has_enough_cases_with_unique_names():
    names = [case.name for case in cli_bad_inputs.CASES]
    assert len(names) >= 45
    assert len(set(names)) == len(names)
    assert {case.argv[0] for case in cli_bad_inputs.CASES if case.argv} >= {
        "train", "generate", "eval", "export", "label", "push", "serve", "recommend", "inspect"}


def test_fast_cases_give_one_error_line_and_exit_2(tmp_path, capsys):
    report = tmp_path / "report.json"
    assert cli_bad_inputs.main(["--only", ",".join(FAST), "--json", str(report)]) == 0, capsys.readouterr().out
    results = json.loads(report.read_text())["cases"]
    assert [result["name"] for result in results] == list(FAST)
    for result in results:
        assert result["exit_code"] == 2, result
        assert not result["traceback"], result
        assert result["error_lines"] + result["argparse_error_lines"] == 1, result
        assert result["names_field"] and not result["left"] and result["ok"], result


# What the sweep's first run found, checked in this process (no model loads: each is refused first).
FOUND = {
    "world_size": ["recommend", "--num-samples", "10", "--world-size", "0"],
    "hub_model_id": ["train", "--dry-run", "--push-to-hub", "--hub-model-id", "not a repo"],
    "--resume": ["train", "--dry-run", "--resume", "missing_checkpoint"],
    "max_new_tokens": ["generate", "--adapter", "missing_adapter", "--text", "hi", "--max-new-tokens", "0"],
    "max_eval_samples": ["eval", "--adapter", "missing_adapter", "--max-eval-samples", "0"],
    "max_shard_size": ["export", "--adapter", "missing_adapter", "--merge", "merged", "--max-shard-size", "huge"],
}


def test_what_the_first_sweep_found_is_one_error_line(tmp_path, monkeypatch, capsys):
    from deepsynth.cli import main

    monkeypatch.chdir(tmp_path)
    for field, argv in FOUND.items():
        assert main(argv) == 2, argv
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(f"error: {field}: "), (argv, errors)
    assert not list(tmp_path.iterdir())  # no run folder, no merged folder
