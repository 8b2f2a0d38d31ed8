import json
import subprocess
import sys

from deepsynth.cli import main
from deepsynth.training.recommend import recommend

V1 = "deepseek-ai/DeepSeek-OCR"


def test_presets_table_and_json(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "tiny_data" in out and "high_capacity_moe" in out and "rank" in out
    assert main(["presets", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["router_focused"]["modules_to_save"] == ["router", "gate"]


def test_recommend_json_equals_library(capsys):
    assert main(["recommend", "--num-samples", "20", "--model", V1, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == recommend(20, model=V1).to_dict()


def test_recommend_human_output(capsys):
    assert main(["recommend", "--num-samples", "3", "--model", V1]) == 0
    out = capsys.readouterr().out
    assert "tiny_data" in out and "2,636,800" in out and "unknown" in out


def test_recommend_prints_the_measured_learning_rate_and_why(capsys):
    for num_samples, rate, guide in (("3", "5e-04", "5e-05"), ("10", "2e-04", "2e-05"), ("50", "6e-05", "2e-05")):
        assert main(["recommend", "--num-samples", num_samples, "--model", V1]) == 0
        out = capsys.readouterr().out
        note = next(line for line in out.splitlines() if line.startswith("warning: learning rate"))
        assert f"learning rate {rate}, not the design guide's {guide}" in note and "docs/quality.md" in note
        assert main(["recommend", "--num-samples", num_samples, "--model", V1, "--guide-learning-rates", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["training_config"]["learning_rate"] == float(guide)


def test_recommend_world_size_splits_the_epoch(capsys):
    # 40 samples on 4 processes: 10 per process and epoch, so fewer updates than on one process.
    assert main(["recommend", "--num-samples", "40", "--model", V1, "--world-size", "4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == recommend(40, model=V1, world_size=4).to_dict()
    assert data["estimates"]["effective_updates"] < recommend(40, model=V1).estimates["effective_updates"]


def test_recommend_without_eval_data_and_with_a_token_count(capsys):
    argv = ["recommend", "--num-samples", "10", "--model", V1, "--no-eval-data", "--train-tokens", "900"]
    assert main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == recommend(10, model=V1, has_eval_data=False, num_train_tokens=900).to_dict()
    assert data["evaluation"]["holdout_samples"] == 2 and data["estimates"]["train_tokens"] == 720
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "10 samples (8 trained on, 2 held out for evaluation)" in out
    assert "720" in out and "assumed" not in out.split("training target tokens")[1].splitlines()[0]
    assert "warning: no eval data: 2 of the 10 samples are held out" in out
    assert "early_stopping_patience" in out


def test_recommend_says_when_the_token_count_is_assumed(capsys):
    assert main(["recommend", "--num-samples", "3", "--model", "HuggingFaceTB/SmolLM2-135M"]) == 0
    out = capsys.readouterr().out
    assert "270 (assumed; give --train-tokens)" in out
    assert "parameters per token (> 10,000)" in out


def test_inspect_deepseek_ocr_tiny_data_offline():
    # The console script, as a user runs it (HF_HUB_OFFLINE=1 from conftest: no network).
    result = subprocess.run([sys.executable, "-m", "deepsynth.cli", "inspect", "--model", V1, "--preset", "tiny_data"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "2,636,800" in result.stdout
    assert "mlp.shared_experts.down_proj" in result.stdout
    assert "router: frozen" in result.stdout


def test_inspect_json_shows_router_group(capsys):
    assert main(["inspect", "--model", V1, "--preset", "high_capacity_moe", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["by_group"]["router"] > 0
    assert data["targets"]["router_mode"] == "lora"


def test_bad_input_is_one_clear_error(capsys):
    assert main(["recommend", "--num-samples", "0", "--model", V1]) == 2
    assert "num_samples" in capsys.readouterr().err
    assert main(["recommend", "--num-samples", "3", "--train-tokens", "0"]) == 2
    assert "num_train_tokens" in capsys.readouterr().err
    assert main(["inspect", "--model", V1, "--preset", "nope"]) == 2
    assert "preset" in capsys.readouterr().err
