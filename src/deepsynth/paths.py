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
