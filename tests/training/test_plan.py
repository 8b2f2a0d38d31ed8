"""The run planner: (config, data) → the config a run uses, its split, exact update count and reasons."""

import json
from pathlib import Path

import datasets
import pytest

from deepsynth.training.config import TrainerConfig, build_config
from deepsynth.training.errors import ConfigError
from deepsynth.training.plan import DEMONSTRATION, plan_run
from deepsynth.training.recommend import count_target_tokens, estimate_updates, recommend

REPO = Path(__file__).resolve().parents[2]
NOTES = [(f"La commune annonce l'événement numéro {i} pour samedi.", f"Événement {i} samedi.") for i in range(7)]


@pytest.fixture
def notes(tmp_path) -> Path:
    path = tmp_path / "notes.jsonl"
    path.write_text("".join(json.dumps({"text": t, "summary": s}, ensure_ascii=False) + "\n" for t, s in NOTES),
                    encoding="utf-8")
    return path


def test_the_demonstration_is_the_readme_main_job():
    assert build_config(DEMONSTRATION) == TrainerConfig.from_file(REPO / "examples" / "quickstart.yaml")
    plan = plan_run(build_config(DEMONSTRATION), origin="the demonstration")
    assert plan.recommendation is None and plan.warnings == []
    assert plan.data == {"source": "the bundled French samples", "num_samples": 54, "train_samples": 54,
                         "eval_samples": 12, "eval_from": "eval_split", "holdout_indices": [], "no_eval_split": None}
    # 54 samples, batch 4: 14 batches an epoch, 7 updates of 2 batches, 25 epochs (the README's 175).
    assert plan.updates == {"total_steps": 350, "effective_updates": 175, "warmup_steps": 18, "world_size": 1}
    assert plan.lines[0] == "Plan: the demonstration"
    assert any("175 optimizer updates" in line for line in plan.lines)


def test_recommended_plan_holds_out_what_the_trainer_holds_out(notes):
    config = build_config(None, None, {"data_path": str(notes), "output_dir": "x"})
    plan = plan_run(config, recommend_settings=True, names={"eval_data_path": "--eval-data"})
    rec = recommend(7, has_eval_data=False, num_train_tokens=count_target_tokens(None, [s for _, s in NOTES]))
    assert plan.recommendation.to_dict() == rec.to_dict()
    assert plan.config == rec.apply(config) and plan.config.holdout_samples == 1
    # The planned config alone (as a web job stores it, as UnifiedProductionTrainer(config) plans it)
    # holds out the same rows.
    trainer_split = plan_run(plan.config).prepared
    assert plan.data["holdout_indices"] == trainer_split.held_out_indices and len(trainer_split.train) == 6
    assert plan.data["train_samples"] == 6 and plan.data["num_samples"] == 7 and plan.data["eval_samples"] == 1
    assert plan.updates["effective_updates"] == rec.estimates["effective_updates"]
    assert plan.train_tokens == rec.estimates["train_tokens"] + count_target_tokens(
        None, [NOTES[i][1] for i in trainer_split.held_out_indices])  # counted before the hold-out
    data_line = next(line for line in plan.lines if line.startswith("  data:"))
    assert "no --eval-data and it has no 'split' column: 1 held out for evaluation" in data_line
    # The choices the lines state are not repeated as warnings; the others are.
    assert not set(rec.decisions.values()) & set(plan.warnings)
    assert any("gradient accumulation set to 6" in w for w in plan.warnings)
    assert "split=None" not in plan.text()


def test_kept_fields_win_over_the_recommendation_and_the_count_follows_them(notes):
    config = build_config(None, None, {"data_path": str(notes), "num_epochs": 5, "lora_rank": 4})
    plan = plan_run(config, recommend_settings=True, keep=["data_path", "num_epochs", "lora_rank"],
                    names={"num_epochs": "--epochs"})
    assert plan.config.preset == "tiny_data" and plan.config.lora_alpha == 32  # recommended
    assert (plan.config.num_epochs, plan.config.lora_rank) == (5, 4)  # the caller's own
    assert plan.kept == {"num_epochs": 5, "lora_rank": 4}  # data_path is not something recommend sets
    assert plan.updates["effective_updates"] == estimate_updates(6, 1, 6, 5).effective_updates == 5
    assert "  kept: --epochs 5 (yours, not the recommendation's)" in plan.lines


def test_a_configured_plan_keeps_the_config_and_says_where_eval_comes_from(notes):
    config = build_config(None, "tiny_data", {"data_path": str(notes), "num_epochs": 2})
    plan = plan_run(config)
    assert plan.config == config and plan.recommendation is None and plan.kept == {}
    assert plan.data["eval_from"] == "training_data"
    assert "scores are on the training samples" in plan.text() and "holdout_samples" in plan.text()
    held = plan_run(build_config(config.to_dict(), None, {"holdout_samples": 2}))
    assert held.data["eval_from"] == "holdout" and held.data["train_samples"] == 5
    with pytest.raises(ConfigError, match="holdout_samples"):
        plan_run(build_config(config.to_dict(), None, {"holdout_samples": 7}))


def test_rows_given_directly_and_the_plan_as_json(notes):
    rows = datasets.Dataset.from_list([{"text": t, "summary": s} for t, s in NOTES])
    config = TrainerConfig(hub_token="hf_secret_plan_token", max_eval_samples=2)
    plan = plan_run(config, rows, rows.select(range(3)), recommend_settings=True, data_label="dataset 'abc'")
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["data"]["source"] == "dataset 'abc'" and data["data"]["eval_from"] == "eval_data"
    assert data["data"]["eval_samples"] == 2 and data["config"]["holdout_samples"] is None
    assert data["recommendation"]["evaluation"]["holdout_samples"] == 0
    assert "hf_secret_plan_token" not in json.dumps(data) and plan.config.hub_token == "hf_secret_plan_token"
