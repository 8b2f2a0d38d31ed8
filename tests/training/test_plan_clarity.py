"""What the run plan says is what the run does: evaluation sized from the run planned, kept flags not contradicted,
the learning-rate evidence scoped to where it was measured, and words that fit the model and the split."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from deepsynth.cli import main
from deepsynth.training.config import build_config
from deepsynth.training.plan import plan_run
from deepsynth.training.recipes import RECIPES
from deepsynth.training.recommend import EVALS_PER_RUN, recommend

TEXT_MODEL = "HuggingFaceTB/SmolLM2-135M"  # resolved offline from the shipped config; no weights are read


def _documents(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "notes.jsonl"
    path.write_text("".join(json.dumps({"text": f"La commune annonce l'événement {i} pour samedi.",
                                        "summary": f"Événement {i} samedi."}, ensure_ascii=False) + "\n"
                            for i in range(count)), encoding="utf-8")
    return path


def _plan(tmp_path: Path, count: int, keep: dict | None = None, **options):
    overrides = {"data_path": str(_documents(tmp_path, count)), "output_dir": str(tmp_path / "out"), **(keep or {})}
    return plan_run(build_config(None, None, overrides), recommend_settings=True, keep=tuple(keep or ()), **options)


def test_fewer_epochs_than_the_plan_size_evaluation_from_the_run_actually_planned(tmp_path):
    plan = _plan(tmp_path, 30, {"num_epochs": 5})
    updates = plan.updates["effective_updates"]
    assert plan.config.num_epochs == 5 and updates < 20  # the recipe's 200 epochs would evaluate every 20
    assert plan.config.eval_every_updates == max(1, math.ceil(updates / EVALS_PER_RUN))
    assert plan.config.early_stopping_patience * plan.config.eval_every_updates <= updates  # it can act
    line = next(line for line in plan.lines if line.startswith("  early stopping:"))
    assert f"every {plan.config.eval_every_updates} update(s)" in line


def test_a_kept_accumulation_is_not_contradicted_by_the_recommendations_warning(tmp_path):
    plan = _plan(tmp_path, 30, {"gradient_accumulation_steps": 2})
    assert plan.config.gradient_accumulation_steps == 2
    assert "  kept: gradient_accumulation_steps 2 (yours, not the recommendation's)" in plan.lines
    assert not any("gradient accumulation set to" in warning for warning in plan.warnings)
    # Without the flag, the capped accumulation is still explained.
    (tmp_path / "b").mkdir()
    assert any("gradient accumulation set to" in warning for warning in _plan(tmp_path / "b", 5).warnings)


def test_the_learning_rate_reason_says_where_its_evidence_was_measured(tmp_path):
    measured = recommend(10, has_eval_data=True).decisions["learning_rate"]
    assert "measured at n=10 on the embedded tiny model" in measured and "extrapolated" not in measured
    other_n = recommend(24, has_eval_data=True).decisions["learning_rate"]
    assert "measured at n=10 on the embedded tiny model; extrapolated to n=24" in other_n
    other_model = recommend(10, TEXT_MODEL, has_eval_data=True).decisions["learning_rate"]
    assert f"extrapolated to n=10 on {TEXT_MODEL}" in other_model
    assert RECIPES["balanced"].evidence in other_model  # the evidence itself is still quoted


def test_the_holdout_line_does_not_call_held_out_samples_training_samples(tmp_path):
    plan = _plan(tmp_path, 30)
    line = next(line for line in plan.lines if line.startswith("  data:"))
    assert line.startswith("  data: 30 samples from ") and "30 training samples" not in line
    assert "6 held out for evaluation" in line and line.endswith("; the other 24 are trained on")


def test_the_plan_for_a_text_model_never_speaks_of_pages_or_vision_tokens(tmp_path):
    overrides = {"data_path": str(_documents(tmp_path, 3)), "model_name": TEXT_MODEL}
    text = plan_run(build_config(None, None, overrides)).text()
    assert "vision" not in text and "page" not in text and "transcribe" not in text
    assert "sequence length: max_length sized from the data" in text


def test_train_takes_the_guide_learning_rates_flag_as_recommend_does(tmp_path, capsys):
    data = _documents(tmp_path, 10)
    assert main(["recommend", "--num-samples", "10", "--no-eval-data", "--guide-learning-rates", "--json"]) == 0
    recommended = json.loads(capsys.readouterr().out)
    guide, preset = recommended["training_config"]["learning_rate"], recommended["preset_name"]
    assert guide == RECIPES[preset].guide_learning_rate != RECIPES[preset].learning_rate
    assert main(["train", "--data", str(data), "--guide-learning-rates", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"learning rate {guide:g}," in out and f"the design guide's rate for {preset}, as asked" in out


def test_the_guide_learning_rates_flag_without_a_recommendation_is_refused(tmp_path, capsys):
    data = _documents(tmp_path, 10)
    assert main(["train", "--data", str(data), "--preset", "minimal", "--guide-learning-rates", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --guide-learning-rates") and "--auto" in err and "Traceback" not in err
