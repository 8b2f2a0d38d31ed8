"""What a config field is: its metadata (``setting``), its kind read from the type hints, and the checks of a value's kind.

The field metadata follows TRL's ``TrlParser`` (a ``help`` line, optional ``flag``, ``kind``,
``excludes``, ``secret``): :mod:`deepsynth.training.config` declares TrainerConfig and
OptimizerConfig with :func:`setting`, and interfaces read the fields through :func:`fields_of`
(:func:`deepsynth.training.config.config_fields`). Nothing here knows TrainerConfig's fields.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from deepsynth.training.errors import ConfigError


def setting(default: Any = MISSING, *, help: str, factory: Any = MISSING, **metadata: Any) -> Any:
    """A dataclass field with its metadata: ``help`` (one line) plus any of ``flag`` (the CLI flag when
    it is not ``--field-name``), ``metavar``, ``kind`` ("number": int or float), ``excludes`` (a field
    this one clears when set as an override) and ``secret`` (never serialised, never a flag)."""
    metadata = {"help": help, **metadata}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata, repr=not metadata.get("secret", False))


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value: Any) -> bool:
    """An int (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class FieldInfo:
    """One field a user sets, as generated interfaces see it (the CLI's flags; the web form next)."""

    name: str  # the key in TrainerConfig.from_dict (optimizer fields flat: ``learning_rate``)
    nested_in: str | None  # "optimizer" for OptimizerConfig's fields
    kind: str  # bool, int, float, number (int or float), str, list (of names) or dict (str → str)
    optional: bool  # null accepted
    default: Any
    metadata: Mapping[str, Any]

    @property
    def help(self) -> str:
        return self.metadata["help"]


def fields_of(owner: type, nested_in: str | None = None) -> list[FieldInfo]:
    """The fields of dataclass ``owner`` in declaration order; a field that is itself a dataclass (the
    optimizer) gives its own fields in its place, flat, with ``nested_in`` naming it."""
    hints = typing.get_type_hints(owner)
    infos: list[FieldInfo] = []
    for f in fields(owner):
        if dataclasses.is_dataclass(hints[f.name]):
            infos.extend(fields_of(hints[f.name], f.name))
            continue
        kinds = _hint_kinds(hints[f.name])
        kind = f.metadata.get("kind") or _kind_of(kinds - {type(None)})
        default = f.default_factory() if f.default is MISSING else f.default
        infos.append(FieldInfo(f.name, nested_in, kind, type(None) in kinds, default, f.metadata))
    return infos


def check_kinds(data: Mapping[str, Any], owner: type, *flat: type) -> None:
    """Refuse values of the wrong *kind* for a field of dataclass ``owner``, naming it (ConfigError).

    The dataclass checks ranges and numbers itself; from JSON it also needs strings to be strings,
    lists to be lists (``list("q_proj")`` would silently become single letters) and booleans to be
    booleans (``"false"`` is truthy). The kinds come from ``owner``'s own type hints; a nested
    dataclass field (the optimizer) must be an object of its fields, checked the same way; the fields of
    the ``flat`` dataclasses may also be given at the top level (``learning_rate`` beside ``batch_size``).
    """
    hints = {name: hint for kind in (*flat, owner) for name, hint in typing.get_type_hints(kind).items()}
    for name, value in data.items():
        hint = hints.get(name)
        if hint is None:
            continue
        if dataclasses.is_dataclass(hint):
            _check_nested(name, value, hint)
            continue
        kinds = _hint_kinds(hint)
        if value is None:
            if type(None) not in kinds:
                raise ConfigError(name, value, f"a value (not null) of type {_kind_name(kinds)}")
            continue
        if bool in kinds and not isinstance(value, bool):
            raise ConfigError(name, value, "true or false")
        if kinds & {list, tuple} and not (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)):
            raise ConfigError(name, value, "a list of names (strings)")
        if dict in kinds and not isinstance(value, dict):
            raise ConfigError(name, value, "a JSON object")
        if kinds in ({str, type(None)}, {str}) and not isinstance(value, str):
            raise ConfigError(name, value, "a string" + (" or null" if type(None) in kinds else ""))


def _check_nested(name: str, value: Any, owner: type) -> None:
    names = [f.name for f in fields(owner)]
    if not isinstance(value, dict):
        raise ConfigError(name, value, f"an object of {name} fields ({', '.join(names)})")
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise ConfigError(name, unknown, f"only {', '.join(names)}")
    check_kinds(value, owner)


def _hint_kinds(hint: Any) -> set:
    """The runtime types a type hint allows: ``int | None`` → {int, NoneType}; ``list[str]`` → {list}."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    return {typing.get_origin(arg) or arg for arg in (typing.get_args(hint) if union else (hint,))}


def _kind_name(kinds: set) -> str:
    return " or ".join(sorted(getattr(k, "__name__", str(k)) for k in kinds if k is not type(None)))


def _kind_of(kinds: set) -> str:
    (kind,) = kinds  # every field has one type besides None
    return {bool: "bool", int: "int", float: "float", str: "str", list: "list", tuple: "list", dict: "dict"}[kind]
