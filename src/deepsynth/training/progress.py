"""Progress events of a run: one schema (a dataclass per event), the writer and the reader of ``progress.jsonl``.

The trainer (through :class:`deepsynth.training.trainer.ProgressCallback`) and the CLI's error
handler write the events; the web job runner (``deepsynth.web.jobs``) reads them back with
:func:`read_events` / :func:`summarise`. One JSON object per line::

    {"event": "<name>", "version": 1, "time": <unix seconds>, <the event's fields>}

No transformers import here: the web server reads this schema without loading the training stack.
"""

from __future__ import annotations

import json
import logging
import time
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Union

from deepsynth.training.boundary import describe_error
from deepsynth.training.errors import DiskFullError

LOGGER = logging.getLogger("deepsynth")

# Bumped when a field changes meaning or is removed; added fields keep the version (readers ignore
# keys they do not know, and a record without "version" is read as version 1).
SCHEMA_VERSION = 1
PHASES = ("baseline_eval", "training", "final_eval", "saving", "pushing")


@dataclass(frozen=True)
class Start:
    """The run began (or resumed): its size, and which checkpoint it resumed from."""

    event: ClassVar[str] = "start"
    total_updates: int  # optimizer updates of the whole run
    total_steps: int  # micro-steps (forward/backward passes) per process
    num_train_samples: int
    resumed_from: str | None = None  # the checkpoint folder, or null for a fresh start
    # Log events of earlier segments past this update were redone: readers drop them.
    resumed_at_update: int = 0
    resume_skipped: list[dict[str, str]] = field(default_factory=list)  # [{path, reason}] passed over


@dataclass(frozen=True)
class Phase:
    """The run entered one of :data:`PHASES`."""

    event: ClassVar[str] = "phase"
    name: str


@dataclass(frozen=True)
class Log:
    """One optimizer update's training loss (logged every update)."""

    event: ClassVar[str] = "log"
    step: int
    epoch: float
    loss: float
    learning_rate: float
    aux_loss: float | None = None  # the router load-balancing term, when the aux loss is on


@dataclass(frozen=True)
class Eval:
    """A held-out loss during training (``eval_every_updates``)."""

    event: ClassVar[str] = "eval"
    step: int
    eval_loss: float


@dataclass(frozen=True)
class Done:
    """The run finished and wrote its outputs."""

    event: ClassVar[str] = "done"
    metrics_path: str | None = None  # the metrics.json written


@dataclass(frozen=True)
class Error:
    """The run failed: why, in the words the CLI prints after ``error:``."""

    event: ClassVar[str] = "error"
    message: str
    error_type: str | None = None  # the exception's class name
    field: str | None = None  # the setting at fault (a ConfigError's field)
    kind: str | None = None  # "disk_full" for a save that did not fit
    path: str | None = None  # disk_full: the folder written to
    needed_bytes: int | None = None  # disk_full: bytes the save needed
    free_bytes: int | None = None  # disk_full: bytes free


Event = Union[Start, Phase, Log, Eval, Done, Error]
EVENT_TYPES: dict[str, type] = {cls.event: cls for cls in (Start, Phase, Log, Eval, Done, Error)}
# Fields written even when null (readers of older files rely on the key); other null fields are left out.
_WRITTEN_WHEN_NULL = {"resumed_from"}


def to_record(event: Event, now: float | None = None) -> dict[str, Any]:
    """The JSON object of ``event`` as written to progress.jsonl."""
    values = {k: v for k, v in asdict(event).items() if v is not None or k in _WRITTEN_WHEN_NULL}
    return {"event": event.event, "version": SCHEMA_VERSION, "time": round(time.time() if now is None else now, 3),
            **values}


def conforms(value: Any, hint: Any) -> bool:
    """Whether ``value`` (read from JSON) has the type ``hint`` names: str, int, float, bool, None,
    unions, ``list[...]``, ``dict[str, ...]``, ``Any`` and dataclasses (checked field by field)."""
    if hint is Any:
        return True
    if hint is type(None) or hint is None:
        return value is None
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(conforms(value, option) for option in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(conforms(v, item) for v in value)
    if origin is dict:
        key, item = typing.get_args(hint) or (Any, Any)
        return isinstance(value, dict) and all(conforms(k, key) and conforms(v, item) for k, v in value.items())
    if isinstance(hint, type) and hasattr(hint, "__dataclass_fields__"):
        hints = typing.get_type_hints(hint)
        return isinstance(value, dict) and all(conforms(value.get(f.name), hints[f.name]) for f in fields(hint))
    if hint is float:  # JSON writes 2.0 as 2.0, but a float field may hold an integral value written by hand
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def parse_event(record: Any) -> Event | None:
    """The typed event of one progress.jsonl object, or None when it is not one (unknown name, a
    required field missing, a field of the wrong type). Keys the schema does not know are ignored."""
    cls = EVENT_TYPES.get(record.get("event")) if isinstance(record, dict) else None
    if cls is None:
        return None
    hints = typing.get_type_hints(cls)
    values = {f.name: record[f.name] for f in fields(cls) if f.name in record}
    if not all(conforms(value, hints[name]) for name, value in values.items()):
        return None
    try:
        return cls(**values)
    except TypeError:  # a required field is missing
        return None


class ProgressWriter:
    """Appends events to ``progress.jsonl`` (``path`` None: nothing written, e.g. a non-main process)
    and hands each record to ``listener``."""

    def __init__(self, path: Path | None, listener: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.path = path
        self.listener = listener

    def emit(self, event: Event) -> dict[str, Any]:
        record = to_record(event)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as stream:
                stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        if self.listener is not None:
            self.listener(record)
        return record


# --------------------------------------------------------------------------------------- errors

_RECORDED = "_deepsynth_progress_recorded"


def error_event(error: BaseException) -> Error:
    """The ``error`` event of ``error``; a disk-full one says where and how much.

    The message and field are :func:`deepsynth.training.boundary.describe_error`'s, as the CLI prints
    them after ``error:``: a bug is prefixed with its type (``KeyboardInterrupt: ``, ``RuntimeError: ...``).
    """
    name = type(error).__name__
    described = describe_error(error)
    if isinstance(error, DiskFullError):
        return Error(message=described.message, error_type=name, kind="disk_full", path=str(error.path),
                     needed_bytes=error.needed, free_bytes=error.free)
    return Error(message=described.message, error_type=name, field=described.field)


def record_error(writer: ProgressWriter, error: BaseException) -> None:
    """Write the ``error`` event of ``error`` once (a later handler of the same exception writes nothing).

    A failure to write (the disk that is full) is logged, never raised over the original error.
    """
    if getattr(error, _RECORDED, False):
        return
    try:
        writer.emit(error_event(error))
    except OSError as failure:
        LOGGER.warning("could not record the error in progress.jsonl: %s", failure)
        return
    try:
        setattr(error, _RECORDED, True)
    except AttributeError:  # an exception type with __slots__: it may be recorded twice, harmlessly
        pass


def record_error_in(output_dir: Path | str, error: BaseException) -> bool:
    """Record ``error`` in ``output_dir``/progress.jsonl when that run folder exists (a failure on bad
    input before the run began writes nothing: no folder is created for it). Returns whether it did."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return False
    record_error(ProgressWriter(folder / "progress.jsonl"), error)
    return True


# --------------------------------------------------------------------------------------- reading


def read_events(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Complete JSON lines of ``path`` from byte ``offset``; returns (records, offset after them).

    Records are returned as written (the web UI streams them); :func:`parse_event` types one.
    """
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    records = []
    for line in data[: end + 1].splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line the trainer did not write as JSON is not progress
        if isinstance(record, dict):
            records.append(record)
    return records, offset + end + 1


def typed_events(records: list[dict[str, Any]]) -> list[Event]:
    """The records that are events of the schema, typed; the others are skipped."""
    return [event for event in map(parse_event, records) if event is not None]


def summarise(records: list[dict[str, Any]], summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fold progress records into {step, total_updates, total_steps, num_train_samples, phase,
    last_loss, done, error}, starting from an earlier ``summary``."""
    summary = dict(summary or {})
    for event in typed_events(records):
        if isinstance(event, Start):
            # A new segment of the run (a resumed job): an earlier segment's error or end no longer holds.
            summary.pop("error", None)
            summary.pop("done", None)
            summary.update(total_updates=event.total_updates, total_steps=event.total_steps,
                           num_train_samples=event.num_train_samples)
        elif isinstance(event, Phase):
            summary["phase"] = event.name
        elif isinstance(event, Log):
            summary.update(step=event.step, last_loss=float(event.loss))
        elif isinstance(event, Done):
            summary["done"] = True
        elif isinstance(event, Error):
            summary["error"] = event.message
    return summary
