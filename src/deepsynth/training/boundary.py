"""The one boundary between a user and a run: the fields a request may set, request → config, and errors.

Every interface goes through it: the CLI's ``train`` (flags), the web API's ``/api/jobs`` and
``/api/trainer/plan`` (JSON), the web form and its LoRA estimate (fields served to app.js). So:

- :func:`request_fields` is the one list of fields a client sets, from
  :func:`deepsynth.training.config.config_fields` (each with its ``AdapterSettings`` name when it is a
  LoRA field, e.g. ``lora_rank`` ↔ ``rank``): the CLI's flags, the job request's schema, the estimate
  request and the form are generated from it;
- :func:`config_from_request` is the one way from a request's fields to a ``TrainerConfig``;
- :func:`describe_error` is the one reading of an error: the field at fault, the message, the HTTP
  status of the web API and the exit code of the CLI (the progress ``error`` event uses it too).

It sits in ``training`` so that the interfaces (``cli``, ``web``) import it and it imports none of them.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepsynth.errors import ModelNotFoundError
from deepsynth.training.config import FieldInfo, TrainerConfig, build_config, check_value_kinds, config_fields
from deepsynth.training.errors import DiskFullError
from deepsynth.training.lora_config import FLAT_FIELDS

# --------------------------------------------------------------------------------------- fields


@dataclass(frozen=True)
class RequestField:
    """One field a request sets: its :class:`FieldInfo` and, for a LoRA field, its AdapterSettings name."""

    info: FieldInfo
    lora_name: str | None  # "rank" for lora_rank, "enabled" for use_lora; None: not a LoRA setting

    @property
    def name(self) -> str:
        return self.info.name


def request_fields(exclude: Collection[str] = ()) -> list[RequestField]:
    """Every TrainerConfig field a request may set (optimizer fields flat), but those in ``exclude``."""
    return [RequestField(info, FLAT_FIELDS.get(info.name)) for info in config_fields() if info.name not in exclude]


def lora_fields() -> list[RequestField]:
    """The LoRA fields (``use_lora``, ``lora_rank``…, ``lora_quantization``): what an estimate request takes."""
    return [field for field in request_fields() if field.lora_name is not None]


# --------------------------------------------------------------------------------------- config


def config_from_request(
    fields: Mapping[str, Any],
    *,
    source: str | Path | Mapping[str, Any] | None = None,
    preset: str | None = None,
    server_fields: Mapping[str, Any] | None = None,
) -> TrainerConfig:
    """The config a request asks for: ``source``, then ``preset``, then the request's ``fields``.

    Args:
        fields: TrainerConfig fields the user set (CLI flags, a job request, the form's edits); optimizer
            fields flat (``learning_rate``) or as a whole ``optimizer`` object, which goes first so that
            flat ones go over it. A ``preset`` key is the preset (as the ``preset`` argument).
        source: a config file or mapping to start from (None: the defaults).
        preset: a LoRA preset applied over ``source`` (all its LoRA fields).
        server_fields: fields the interface sets itself, over the user's (the web's data and output paths).

    Raises ConfigError naming the first field of the wrong kind or value.
    """
    data = dict(fields)
    check_value_kinds(data)  # kinds first: build_config writes into the optimizer object
    preset = data.get("preset", preset)  # kept in data too: a request's null preset clears the label
    optimizer = {"optimizer": data.pop("optimizer")} if "optimizer" in data else {}
    return build_config(source, preset, {**optimizer, **data, **(server_fields or {})})


# --------------------------------------------------------------------------------------- errors

BAD_INPUT_EXIT, FAILED_EXIT = 2, 1


@dataclass(frozen=True)
class ErrorDescription:
    """How every interface reports one error: the CLI prints ``error: <message>`` and exits with
    ``exit_code``; the web API answers ``http_status`` with ``{"error": message}``; the progress
    ``error`` event records ``message`` and ``field``."""

    message: str
    field: str | None  # the setting at fault (a ConfigError's), else None
    http_status: int  # 4xx: the client's input; 5xx: the server's failure
    exit_code: int | None  # 2: bad input; 1: the run failed; None: a bug (the CLI shows its traceback)
    kind: str  # "bad_input", "not_found", "conflict", "disk_full", "push_failed", "failed" or "internal" (a bug)


def describe_error(error: BaseException, *, paths: bool = True, folder: str | Path | None = None) -> ErrorDescription:
    """The one reading of ``error`` for the CLI, the web API and the progress file.

    An error of the web layer says its own status (``status_code``: 400, 404, 409, 413); bad input
    (``ValueError``: ConfigError, DataError) is 422 / exit 2; a full disk 507 / exit 1; a failed push
    502 / exit 1; anything else is a bug: 500 and no exit code (the CLI lets it raise).

    A full disk's message names the file being written (else ``folder``, the caller's run folder)
    unless ``paths`` is False: a web client is not told the server's folders.
    """
    field = getattr(error, "field", None)
    field = field if isinstance(field, str) else None
    status = getattr(error, "status_code", None)
    if isinstance(status, int) and 400 <= status < 600:
        kind = {404: "not_found", 409: "conflict", 507: "disk_full"}.get(status, "bad_input" if status < 500 else "failed")
        return ErrorDescription(str(error), field, status, BAD_INPUT_EXIT if status < 500 else FAILED_EXIT, kind)
    if isinstance(error, ModelNotFoundError):
        return ErrorDescription(str(error), field or "model", 404, BAD_INPUT_EXIT, "not_found")
    if isinstance(error, DiskFullError):
        return ErrorDescription(str(error), None, 507, FAILED_EXIT, "disk_full")
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        place = error.filename or folder
        where = f" writing {place}" if paths and place else ""
        message = f"disk full{where}: the disk is full ({error.strerror}); nothing was kept: free some space and retry"
        return ErrorDescription(message, None, 507, FAILED_EXIT, "disk_full")
    if _is_push_error(error, "PushArgumentError"):  # refused before anything was sent: the user's input
        return ErrorDescription(str(error), field, 422, BAD_INPUT_EXIT, "bad_input")
    if _is_push_error(error):  # the run's files are written; the upload is what failed
        return ErrorDescription(f"push failed: {error}", None, 502, FAILED_EXIT, "push_failed")
    if isinstance(error, ValueError):  # ConfigError, DataError and the library's other bad-input errors
        return ErrorDescription(str(error), field, 422, BAD_INPUT_EXIT, "bad_input")
    return ErrorDescription(f"{type(error).__name__}: {error}", field, 500, None, "internal")


def _is_push_error(error: BaseException, kind: str = "PushError") -> bool:
    # A PushError exists only once its module is imported: looked up there, so that reading an error
    # never imports huggingface_hub (the progress writer and the CLI's start stay light).
    common = sys.modules.get("deepsynth.publishing.common")
    return common is not None and isinstance(error, getattr(common, kind))
