"""The settings a run recorded beside its adapter (``training_config.json``), read back as plain data.

The trainer writes every setting of its ``TrainerConfig`` there; evaluating, generating from and exporting
an adapter read only the few of :class:`RunSettings`, so this layer needs nothing of training. A key the
file lacks takes the trainer's own default (tests/evaluation/test_adapter_folder.py checks that the two
agree); keys it does not read (training-only settings, settings of other versions) are left aside.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from deepsynth.errors import ConfigError

__all__ = ["RunSettings"]


@dataclass(frozen=True)
class RunSettings:
    """What reading an adapter back takes from its run: base model, precision, task, prompt, mode, limits, data."""

    model_name: str | None = None  # None: the embedded tiny model
    dtype: str | None = None  # None: bf16 on GPUs that support it, else fp32
    lora_quantization: str | None = None  # "4bit" / "8bit": the QLoRA base the adapter trained on
    image_mode: str | None = None  # None: the model's default resolution mode
    task: str = "summarise"
    instruction: str | None = None  # None: the task's instruction
    max_length: int | None = None  # None: sized from the data
    max_new_tokens: int = 96
    no_repeat_ngram_size: int = 6
    metric_ignore_case: bool = False
    metric_ignore_punctuation: bool = False
    # The run's data and how it split it: evaluation without --data scores the rows it held out.
    data_path: str | None = None
    eval_data_path: str | None = None
    column_mapping: dict[str, str] | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    holdout_samples: int | None = None
    seed: int = 42

    @classmethod
    def from_recorded(cls, data: Mapping[str, Any], **overrides: Any) -> RunSettings:
        """The settings ``data`` (a recorded ``training_config.json``) holds, with ``overrides`` on top.

        Raises ConfigError naming the field when a value it reads is of the wrong kind (``"300"`` for
        ``max_length``): a hand-edited file fails here, not deep inside generation.
        """
        hints = typing.get_type_hints(cls)
        kept = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        kept.update(overrides)
        for name, value in kept.items():
            if not _is_kind(value, hints[name]):
                raise ConfigError(name, value, _kind_words(hints[name]))
        return cls(**kept)


def _kinds(hint: Any) -> tuple[Any, ...]:
    """The plain types a field's hint allows (``int | None`` → (int, NoneType); ``dict[str, str]`` → (dict,))."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(kind for member in typing.get_args(hint) for kind in _kinds(member))
    return (typing.get_origin(hint) or hint,)


def _is_kind(value: Any, hint: Any) -> bool:
    kinds = _kinds(hint)
    if isinstance(value, bool):  # a bool is an int to isinstance; JSON's true is no number of tokens
        return bool in kinds
    return isinstance(value, kinds)


def _kind_words(hint: Any) -> str:
    words = {str: "a string", int: "an integer", bool: "true or false", dict: "an object", type(None): "null"}
    return " or ".join(words[kind] for kind in _kinds(hint))
