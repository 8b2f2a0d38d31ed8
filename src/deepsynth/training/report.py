"""The report of a run: one typed object (``RunReport``) whose JSON form is ``metrics.json``, and the loss curve.

Each field carries its documentation in its metadata (``doc``); docs/training.md lists the keys.
Nested values produced by other modules (resolved targets, the feature cache, MoE telemetry,
evaluation samples) stay plain JSON objects, documented by the module that builds them.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from deepsynth.training.progress import conforms

# Keys written only when they apply (left out, not null, otherwise): metrics.json keeps its shape.
_ONLY_WHEN_SET = {"text_normalisation", "push"}


def described(doc: str, **kwargs: Any) -> Any:
    """A dataclass field with its documentation (read by the schema test and docs/training.md)."""
    return field(metadata={"doc": doc}, **kwargs)


@dataclass
class Holdout:
    """Training rows held out for evaluation (no eval data given; ``holdout_samples``), never trained on."""

    samples: int = described("how many rows were held out")
    indices: list[int] = described("their row indices in the training data")
    seed: int = described("the seed that drew them (the run's seed)")


@dataclass
class TrainableParams:
    """Parameters the run trained."""

    total: int = described("all trainable parameters")
    by_group: dict[str, int] = described("per group: attention, dense MLP, shared experts, routed experts, router...")


@dataclass
class TrainSummary:
    """The training segment of this process."""

    train_loss: float = described("mean training loss over the whole run, earlier segments included")
    runtime_seconds: float = described("seconds of training in this process's segment (a resumed run: since resuming)")
    resumed_from: str | None = described("the checkpoint this segment resumed from, or null")


@dataclass
class EvalSummary:
    """The before/after scores on the evaluation samples (metric name → value)."""

    before: dict[str, float] = described("the base model (adapter disabled): loss, then the task's metrics")
    after: dict[str, float] = described("the adapted model, same metrics")
    delta: dict[str, float] = described("after − before, per metric")


@dataclass(kw_only=True)
class RunReport:
    """What a finished run reports; ``to_dict()`` is the content of ``metrics.json``."""

    base_model: str = described("the base model's name or path")
    model_family: str = described("its family in deepsynth.models.families (e.g. deepseek_ocr2, causal_lm)")
    model_class: str = described("the transformers class trained (AutoModelForCausalLM for text models)")
    preset: str | None = described("the LoRA preset, or null")
    task: str = described("summarise or transcribe")
    image_mode: dict[str, Any] | None = described(
        "the resolution mode the pages were read in and its vision tokens per page; null for text models")
    max_length: dict[str, Any] = described("{set: max_length as configured (null: sized from the data), "
                                           "longest_example: its token counts}")
    text_normalisation: str | None = described(
        "transcribe only: how CER and WER normalise the text (absent for summarise)", default=None)
    num_train_samples: int = described("examples trained on")
    num_eval_samples: int = described("examples scored before and after")
    eval_on_training_data: bool = described("true when there was no held-out data: scores are on training rows")
    holdout: Holdout | None = described("the held-out training rows, or null when none were held out")
    estimated_updates: int = described("optimizer updates planned (deepsynth.training.recommend.estimate_updates)")
    optimizer_updates: int = described("optimizer updates performed")
    total_steps: int = described("micro-steps (forward/backward passes) per process planned")
    warmup_steps: int = described("learning-rate warmup, in optimizer updates")
    early_stopped: bool = described("true when early stopping ended the run before the planned updates")
    trainable_params: TrainableParams = described("trained parameter counts")
    quantization: dict[str, Any] | None = described(
        "base weights held in 4/8 bits (QLoRA presets) and their share of the base; null when not quantized")
    resolved_targets: dict[str, Any] = described("the LoRA targets as resolved on the model (docs/lora-targets.md)")
    feature_cache: dict[str, Any] = described("the frozen-vision feature cache: {enabled, reason, and its counts}")
    train: TrainSummary = described("the training segment")
    eval: EvalSummary = described("before/after scores")
    samples: list[dict[str, Any]] = described(
        "the first 3 evaluation samples: reference, base and adapted generations and how each ended")
    history: list[dict[str, Any]] = described(
        "per optimizer update {step, epoch, loss, learning_rate[, aux_loss]} and held-out {step, eval_loss}")
    moe: dict[str, Any] = described("MoE knobs, whether each acted and what it measured (docs/moe.md)")
    expert_utilization: dict[str, Any] | None = described(
        "routed-expert utilization per phase (docs/moe.md); null when not measured")
    push: dict[str, Any] | None = described("the Hub push report (push_to_hub only; absent otherwise)", default=None)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``metrics.json`` (nested reports as objects; unset optional keys left out)."""
        data: dict[str, Any] = {}
        for info in fields(self):
            value = getattr(self, info.name)
            if value is None and info.name in _ONLY_WHEN_SET:
                continue
            data[info.name] = _plain(value)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunReport:
        """Read ``metrics.json`` back; ValueError naming the first key that is unknown or of the wrong type."""
        hints = typing.get_type_hints(cls)
        known = {info.name for info in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"metrics.json: keys not in the RunReport schema: {unknown}")
        for name, value in data.items():
            if not conforms(value, hints[name]):
                raise ValueError(f"metrics.json: {name!r} is not {hints[name]}: {value!r}"[:300])
        values = {name: _typed(value, hints[name]) for name, value in data.items()}
        return cls(**values)

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
        return path


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {info.name: _plain(getattr(value, info.name)) for info in fields(value)}
    return value


def _typed(value: Any, hint: Any) -> Any:
    """``value`` as the dataclass ``hint`` names (``X | None`` included); other values as they are."""
    for option in typing.get_args(hint) or (hint,):
        if isinstance(option, type) and hasattr(option, "__dataclass_fields__") and isinstance(value, dict):
            return option(**value)
    return value


def schema_keys() -> dict[str, str]:
    """Every key of metrics.json (nested ones as ``parent.key``) → its documentation."""
    keys: dict[str, str] = {}
    hints = typing.get_type_hints(RunReport)
    for info in fields(RunReport):
        keys[info.name] = info.metadata.get("doc", "")
        for option in typing.get_args(hints[info.name]) or (hints[info.name],):
            if isinstance(option, type) and hasattr(option, "__dataclass_fields__"):
                keys.update({f"{info.name}.{sub.name}": sub.metadata.get("doc", "") for sub in fields(option)})
    return keys


def plot_loss_curve(history: Sequence[dict[str, Any]], path: Path) -> Path:
    """Training (and held-out) loss per optimizer update, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    held_out = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    if train:
        axis.plot(*zip(*train), label="training loss")
    if held_out:
        axis.plot(*zip(*held_out), "o-", label="held-out loss")
    axis.set_xlabel("optimizer update")
    axis.set_ylabel("loss")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
