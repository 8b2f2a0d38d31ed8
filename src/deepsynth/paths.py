"""Telling a local path from a Hugging Face Hub id, for every argument that accepts either."""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path


def looks_like_local_path(name: str, file_suffixes: Collection[str] = ()) -> bool:
    """Whether ``name`` is meant as a local path rather than a Hub id.

    Hub ids are exactly ``org/name`` and never start with ``.``, ``/`` or ``~`` nor hold a
    backslash; a name that does, has more than one ``/``, or ends with one of ``file_suffixes``
    (e.g. ``.jsonl`` for data files) is a path. Callers then say "not found" instead of making a
    Hub request that fails confusingly.
    """
    return (
        name.startswith(("/", ".", "~"))
        or "\\" in name
        or os.path.isabs(name)
        or name.count("/") > 1
        or Path(name).suffix.lower() in file_suffixes
    )


def check_output_dir(path: str | os.PathLike[str], field: str = "--output-dir") -> Path:
    """Refuse an output folder that cannot be one (an existing file, a path under a file, a name too long,
    a parent that cannot be written), before any model is loaded; nothing is created here.

    Raises ConfigError naming ``field``; returns the path.
    """
    from deepsynth.errors import ConfigError

    folder = Path(path).expanduser()
    too_long = next((part for part in folder.parts if len(part.encode("utf-8", "surrogateescape")) > 255), None)
    if too_long is not None:
        raise ConfigError(field, str(folder), f"a folder path whose names are at most 255 bytes long "
                                              f"(file systems refuse {too_long[:40]}…)")
    if folder.exists() or folder.is_symlink():
        if not folder.is_dir():
            raise ConfigError(field, str(folder), "a folder (or a path where one can be made); this is an existing file")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(field, str(folder), "a folder you can write to")
        return folder
    parent = folder.parent
    while not (parent.exists() or parent.is_symlink()) and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(field, str(folder), f"a path where a folder can be made; {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(field, str(folder), f"a path where a folder can be made; {parent} cannot be written")
    return folder
