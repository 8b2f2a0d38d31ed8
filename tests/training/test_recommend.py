import math

import pytest

from deepsynth.training.errors import ConfigError
from deepsynth.training.config import TrainerConfig
from deepsynth.training.recipes import RECIPES
from deepsynth.training.recommend import estimate_updates, preset_for, preset_reason, recommend
from deepsynth.training.targets import count_trainable_params
from deepsynth.training.lora_config import get_lora_preset

V1 = "deepseek-ai/DeepSeek-OCR"


@pytest.mark.parametrize("n, preset", [(1, "tiny_data"), (9, "tiny_data"), (10, "balanced"), (49, "balanced"),
                                       (50, "high_capacity_moe"), (5000, "high_capacity_moe")])
def test_thresholds_follow_the_seed(n, preset):
    assert preset_for(n) == preset


@pytest.mark.parametrize("n, reason", [(1, "< 10"), (9, "< 10"), (10, "10-49"), (49, "10-49"), (50, ">= 50")])
def test_the_preset_reason_names_the_threshold(n, reason):
    assert preset_reason(n) == reason


def test_seed_tiny_recipe_counts_real_updates():
    # Seed: 3 samples, batch 1, accumulation 16, 300 epochs — it expected "~56" updates. Accumulation
    # restarts every epoch, so there are 300 updates of 3 samples each.
    assert estimate_updates(3, 1, 16, 300).effective_updates == 300
    assert estimate_updates(3, 1, 16, 300).total_steps == 900


@pytest.mark.parametrize("n, bs, acc, epochs, steps, updates", [
    (20, 1, 16, 200, 4000, 400), (50, 2, 16, 200, 5000, 400), (7, 2, 2, 3, 12, 6), (1, 1, 1, 1, 1, 1)])
def test_estimate_updates(n, bs, acc, epochs, steps, updates):
    estimate = estimate_updates(n, bs, acc, epochs)
    assert (estimate.total_steps, estimate.effective_updates) == (steps, updates)


def test_estimate_for_several_processes_uses_the_global_batch():
    assert estimate_updates(10, 1, 1, 2, world_size=2).effective_updates == 10


def test_recommendation_shape_and_exact_params():
    rec = recommend(3, model=V1)
    data = rec.to_dict()
    assert data["preset_name"] == "tiny_data"
    assert set(data["estimates"]) == {"total_steps", "effective_updates", "warmup_steps", "trainable_params",
                                      "estimated_time_minutes", "train_tokens", "train_tokens_assumed",
                                      "params_per_train_token"}
    assert data["estimates"]["trainable_params"] == 2_636_800
    assert data["estimates"]["estimated_time_minutes"] is None  # never invented
    assert data["lora_config"] == get_lora_preset("tiny_data").to_dict()
    assert data["training_config"]["gradient_accumulation_steps"] == 3
    assert any("accumulation does not span epochs" in w for w in data["warnings"])


@pytest.mark.parametrize("n", [1, 2, 3, 5, 9, 10, 17, 33, 49, 50, 64, 200])
def test_warmup_always_shorter_than_the_run_and_estimates_consistent(n):
    rec = recommend(n, model=V1)
    tc = rec.training_config
    est = estimate_updates(n, tc["batch_size"], tc["gradient_accumulation_steps"], tc["num_epochs"])
    assert rec.estimates["effective_updates"] == est.effective_updates
    assert rec.estimates["total_steps"] == est.total_steps
    assert 0 <= rec.estimates["warmup_steps"] < rec.estimates["effective_updates"]
    assert rec.estimates["warmup_steps"] == math.ceil(0.1 * est.effective_updates)


def test_trainable_params_are_for_the_given_model():
    rec = recommend(60, model="HuggingFaceTB/SmolLM2-135M")
    assert rec.estimates["trainable_params"] == count_trainable_params(
        "HuggingFaceTB/SmolLM2-135M", get_lora_preset("high_capacity_moe")).trainable
    assert any("router" in w for w in rec.warnings)  # a dense model has no router: said, not hidden


@pytest.mark.parametrize("bad", [0, -3, 10**9, 2.5, True, "3"])
def test_absurd_sample_counts_are_refused(bad):
    with pytest.raises(ConfigError, match="num_samples"):
        recommend(bad, model=V1)


def test_apply_builds_the_trainer_config():
    rec = recommend(20, model=V1)
    config = rec.apply(TrainerConfig(output_dir="x", hub_token="t"))
    assert config.preset == "balanced" and config.lora_rank == 32
    assert config.gradient_accumulation_steps == rec.training_config["gradient_accumulation_steps"]
    # Warmup is the recipe's ratio, not a count fixed for the recipe's length (docs/quality.md).
    assert config.optimizer.warmup_steps is None and config.optimizer.warmup_ratio == 0.1
    assert config.optimizer.resolve_warmup(rec.estimates["effective_updates"]) == rec.estimates["warmup_steps"]
    assert config.optimizer.learning_rate == RECIPES["balanced"].learning_rate == 2e-4
    assert config.hub_token == "t" and config.output_dir == "x"


def test_decisions_are_the_warnings_that_state_a_choice():
    rec = recommend(10, model=V1, has_eval_data=False)
    assert set(rec.decisions) == {"evaluation", "early_stopping", "learning_rate"}
    assert all(text in rec.warnings for text in rec.decisions.values())
    assert "decisions" not in rec.to_dict()  # the API's recommendation is unchanged
    assert set(recommend(60, model=V1).decisions) == {"learning_rate"}


@pytest.mark.parametrize("num_samples, preset", [(3, "tiny_data"), (10, "balanced"), (50, "high_capacity_moe")])
def test_learning_rate_is_the_measured_one_and_says_why(num_samples, preset):
    rec = recommend(num_samples, model=V1)
    recipe = RECIPES[preset]
    assert rec.preset_name == preset
    assert rec.training_config["learning_rate"] == recipe.learning_rate > recipe.guide_learning_rate
    note = rec.decisions["learning_rate"]
    assert f"{recipe.learning_rate:.0e}" in note and f"{recipe.guide_learning_rate:.0e}" in note
    assert recipe.evidence in note and "docs/quality.md" in note


def test_the_design_guides_learning_rates_stay_reachable():
    for num_samples, preset in ((3, "tiny_data"), (10, "balanced"), (50, "high_capacity_moe")):
        rec = recommend(num_samples, model=V1, learning_rates="guide")
        assert rec.training_config["learning_rate"] == RECIPES[preset].guide_learning_rate
        assert "design guide's rate" in rec.decisions["learning_rate"]
    assert (RECIPES["tiny_data"].guide_learning_rate, RECIPES["balanced"].guide_learning_rate) == (5e-5, 2e-5)
    with pytest.raises(ConfigError, match="learning_rates"):
        recommend(3, model=V1, learning_rates="fast")
