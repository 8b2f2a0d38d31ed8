"""Which models an API client may name: Hub ids, the server's ``--model`` list, folders in its state dir.

Without this rule a client could make the server (and its training processes) read any local
directory as a model (``model_name: "/home/other/project"``). A name is accepted when it is

- null or ``deepsynth/tiny-ocr2``: the embedded default model;
- one of the models the server was started with (``deepsynth serve --model NAME_OR_DIR``, repeatable);
- a Hub id (``owner/name``, huggingface_hub's own syntax check) that names no local folder (a name
  that is also a folder relative to the server's working directory is judged as that folder);
- a local folder whose real path (symbolic links followed) lies inside the server's state directory.

Anything else is refused with HTTP 400 naming the field and what is allowed. An accepted local folder
is passed on as its absolute real path, so the training process (run in the job's folder) loads the
same folder the check looked at.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from huggingface_hub.utils import HFValidationError, validate_repo_id


class ModelNotAllowed(Exception):
    """A model name the server does not accept from a client (HTTP 400)."""

    status_code = 400


def _embedded_name() -> str:
    # Imported when first needed: deepsynth.models.tiny loads transformers' model classes, which
    # would add seconds to the server's start-up.
    from deepsynth.models.tiny import EMBEDDED_MODEL_NAME

    return EMBEDDED_MODEL_NAME


def _is_hub_id(name: str) -> bool:
    if name.count("/") != 1 or name.startswith(("/", ".", "~")) or "\\" in name:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _real_dir(name: str) -> Path | None:
    """The real path of ``name`` when it names an existing local directory, else None."""
    try:
        path = Path(name).expanduser()
        return path.resolve(strict=True) if path.is_dir() else None
    except (OSError, RuntimeError, ValueError):  # too long, a symlink loop, a NUL byte: not a folder
        return None


class ModelPolicy:
    """Checks the model names of API requests against the server's allow-list and state directory."""

    def __init__(self, state_dir: Path, allowed_models: Iterable[str] = ()) -> None:
        self.state_dir = Path(state_dir).expanduser().resolve()
        self.allowed = [str(name) for name in allowed_models]
        # Local folders of the allow-list, by real path (the name as given maps to the same folder).
        self._allowed_dirs = {name: real for name in self.allowed if (real := _real_dir(name)) is not None}

    def describe(self) -> str:
        started = ", ".join(repr(name) for name in self.allowed) or "none"
        return (f"null or {_embedded_name()!r} (the embedded default), a Hub id 'owner/name', a model the "
                f"server was started with (deepsynth serve --model; here: {started}), or a model folder "
                "inside the server's state directory")

    def check(self, value: object, field: str) -> object:
        """Return the name to use for ``value`` (a real path for local folders); ModelNotAllowed if refused.

        Values that are not strings are returned as they are: the type check is TrainerConfig's (422).
        """
        if value is None or not isinstance(value, str) or value == _embedded_name():
            return value
        if value in self._allowed_dirs:
            return str(self._allowed_dirs[value])
        if value in self.allowed:
            return value
        real = _real_dir(value)
        if real is not None:
            if real in self._allowed_dirs.values() or real.is_relative_to(self.state_dir):
                return str(real)
        elif _is_hub_id(value):
            return value
        # One message whether or not such a folder exists: the answer tells nothing about other files.
        raise ModelNotAllowed(f"{field}: {_shown(value)} is not an accepted model name; expected {self.describe()}")


def _shown(value: str) -> str:
    return repr(value if len(value) <= 120 else value[:117] + "...")
