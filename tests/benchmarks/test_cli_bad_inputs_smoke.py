"""Smoke run of benchmarks/cli_bad_inputs.py: a handful of its fast cases, each one error line and exit 2."""

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
