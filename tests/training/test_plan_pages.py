"""The run plan says what a page costs in the run's resolution mode, and how long an example may be."""

from __future__ import annotations

import pytest

from deepsynth.training.config import TrainerConfig
from deepsynth.training.errors import ConfigError
from deepsynth.training.plan import plan_run


def _line(plan, start: str) -> str:
    (line,) = [line for line in plan.lines if line.startswith(start)]
    return line


def test_the_plan_shows_the_vision_tokens_and_the_sizing():
    plan = plan_run(TrainerConfig(max_train_samples=2, max_eval_samples=1))
    assert _line(plan, "  pages:") == ("  pages: image mode small (the model's default); vision tokens 145 per page "
                                       "(small: one 384-px view)")
    assert _line(plan, "  sequence length:").startswith("  sequence length: max_length sized from the data")
    assert plan.to_dict()["vision_tokens"]["global_tokens"] == 145

    tiled = plan_run(TrainerConfig(model_name="deepseek-ai/DeepSeek-OCR", image_mode="gundam", max_length=700,
                                   max_train_samples=2, max_eval_samples=1), names={"max_length": "--max-length"})
    assert "vision tokens 273 per page + 100 per tile + 10 per row of tiles, at most 933" in _line(tiled, "  pages:")
    assert _line(tiled, "  sequence length:").startswith("  sequence length: --max-length 700 (yours)")


def test_a_mode_the_model_lacks_fails_before_the_data_is_read():
    with pytest.raises(ConfigError, match="image_mode: got 'large', expected one of dynamic, base, small"):
        plan_run(TrainerConfig(image_mode="large", data_path="no-such-file.jsonl"))
