"""The ``train`` flags, generated from TrainerConfig's field metadata, and the flags several commands share."""

from __future__ import annotations

import argparse
from typing import Any


def train_flags() -> dict[str, Any]:
    """Flag → FieldInfo for every TrainerConfig field (optimizer fields flat), as TRL's TrlParser
    derives flags from dataclasses: the field's metadata ``flag`` or ``--field-name``. The Hub token
    has none: huggingface_hub reads it from HF_TOKEN, never from a command line (shell history, ps)."""
    from deepsynth.training.boundary import request_fields
    from deepsynth.training.config import SECRET_FIELDS

    return {field.info.metadata.get("flag") or "--" + field.name.replace("_", "-"): field.info
            for field in request_fields(exclude=SECRET_FIELDS)}


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _pairs(text: str) -> dict[str, str]:
    pairs = [pair.split("=", 1) for pair in text.split(",") if pair.strip()]
    if not all(len(pair) == 2 and pair[0].strip() and pair[1].strip() for pair in pairs):
        raise argparse.ArgumentTypeError(f"expected name=value pairs separated by commas, got {text!r}")
    return {key.strip(): value.strip() for key, value in pairs}


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


_FLAG_TYPES = {"int": int, "float": float, "number": _number, "str": str, "list": _names, "dict": _pairs}


_METAVARS = {"list": "A,B", "dict": "K=V,K=V", "int": "N", "float": "X", "number": "X"}


def add_train_flags(parser: argparse.ArgumentParser, preset_group: argparse._MutuallyExclusiveGroup) -> None:
    for flag, info in train_flags().items():
        target = preset_group if info.name == "preset" else parser
        help_text = info.help.replace("%", "%%")
        if info.kind == "bool":
            target.add_argument(flag, dest=info.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        else:
            target.add_argument(flag, dest=info.name, type=_FLAG_TYPES[info.kind], default=None,
                                metavar=info.metadata.get("metavar") or _METAVARS.get(info.kind, "VALUE"),
                                help=help_text)


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainerConfig fields the flags given on the command line set (field name → value)."""
    values = {info.name: getattr(args, info.name, None) for info in train_flags().values()}
    return {name: value for name, value in values.items() if value is not None and name != "preset"}


def add_learning_rates_flag(p: argparse.ArgumentParser) -> None:
    """``--guide-learning-rates``, for recommend and train alike (read back by :func:`learning_rates_choice`)."""
    p.add_argument("--guide-learning-rates", action="store_true",
                   help="recommended settings with the design guide's learning rates instead of the ones our "
                        "full-length runs support (docs/quality.md)")


def learning_rates_choice(args: argparse.Namespace) -> str:
    """The ``learning_rates`` choice of recommend() and plan_run() the flags make."""
    return "guide" if args.guide_learning_rates else "evidence"


def add_image_mode(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("--image-mode", default=None, metavar="NAME",
                   help=f"{help_text}: tiny, small, base, large, gundam (DeepSeek-OCR); dynamic, base, small "
                        "(DeepSeek-OCR-2)")
