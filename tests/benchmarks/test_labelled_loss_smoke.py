"""Smoke run of benchmarks/labelled_loss.py: the script runs as documented and its exactness check holds."""

import importlib.util
import json
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "labelled_loss.py"


def test_labelled_loss_benchmark_smoke(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("labelled_loss_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    assert module.main(["--smoke", "--json", str(tmp_path / "result.json")]) == 0
    assert torch.get_num_threads() == threads  # the in-process run leaves the test process as it was
    result = json.loads((tmp_path / "result.json").read_text())
    (round_,) = result["rounds"]
    full, labelled = round_["full"], round_["labelled"]
    assert len(full["losses"]) == len(labelled["losses"]) == 2  # warm-up + 1 timed step
    assert round_["max_relative_loss_difference"] <= 1e-5
    assert full["tokens_per_s"] > 0 and labelled["tokens_per_s"] > 0
    assert result["ratios_labelled_over_full"]["tokens/s"]["n"] == 1
    assert "labelled / full" in capsys.readouterr().out
