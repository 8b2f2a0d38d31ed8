"""metrics.json has one documented schema, ``RunReport``: every key documented (in code and in
docs/training.md), read back with the right types, and written back unchanged."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from deepsynth.training.report import RunReport, schema_keys

DOCS = Path(__file__).resolve().parents[2] / "docs" / "training.md"


def assert_round_trips(saved: dict) -> RunReport:
    """What a test of a real run calls on its metrics.json: typed read, identical write, every key documented."""
    report = RunReport.from_dict(saved)  # raises on an unknown key or a value of the wrong type
    assert report.to_dict() == saved
    assert json.loads(json.dumps(report.to_dict())) == saved
    documented = schema_keys()
    assert set(saved) <= set(documented)
    return report


def test_every_key_is_documented_in_code_and_in_docs():
    keys = schema_keys()
    assert {"base_model", "eval", "eval.before", "train.train_loss", "holdout.indices", "push"} <= set(keys)
    assert all(doc.strip() for doc in keys.values()), [k for k, doc in keys.items() if not doc.strip()]
    section = DOCS.read_text(encoding="utf-8").split("## metrics.json", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([a-z_.]+)` \|", section, flags=re.MULTILINE))
    assert listed == set(keys), (set(keys) - listed, listed - set(keys))


def _minimal() -> dict:
    return {
        "base_model": "m", "model_family": "causal_lm", "model_class": "AutoModelForCausalLM", "preset": None,
        "task": "summarise", "image_mode": None, "max_length": {"set": None, "longest_example": {"tokens": 9}},
        "num_train_samples": 3, "num_eval_samples": 1, "eval_on_training_data": False,
        "holdout": {"samples": 1, "indices": [2], "seed": 42}, "estimated_updates": 4, "optimizer_updates": 4,
        "total_steps": 8, "warmup_steps": 0, "early_stopped": False,
        "trainable_params": {"total": 10, "by_group": {"attention": 10}}, "quantization": None,
        "resolved_targets": {}, "feature_cache": {"enabled": False, "reason": "text model"},
        "train": {"train_loss": 2.5, "runtime_seconds": 1.0, "resumed_from": None},
        "eval": {"before": {"loss": 3.0}, "after": {"loss": 2.0}, "delta": {"loss": -1.0}},
        "samples": [], "history": [{"step": 1, "loss": 2.5}], "moe": {}, "expert_utilization": None,
    }


def test_a_report_reads_back_typed_and_optional_keys_stay_absent():
    report = assert_round_trips(_minimal())
    assert report.holdout.indices == [2] and report.train.train_loss == 2.5 and report.eval.delta == {"loss": -1.0}
    assert "push" not in report.to_dict() and "text_normalisation" not in report.to_dict()
    report.push = {"repo_id": "org/name"}
    assert report.to_dict()["push"] == {"repo_id": "org/name"}


@pytest.mark.parametrize("key, value", [("optimizer_updates", "4"), ("holdout", {"samples": 1}),
                                        ("eval_on_training_data", 0), ("train", {"train_loss": "x"}),
                                        ("surprise", 1)])
def test_a_key_of_the_wrong_type_or_unknown_is_refused(key, value):
    with pytest.raises(ValueError, match=key):
        RunReport.from_dict({**_minimal(), key: value})
