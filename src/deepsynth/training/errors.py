"""Error types of a run: invalid settings (bad input, defined in :mod:`deepsynth.errors` so that ``data/``
can raise it without importing ``training/``) and a full disk (not the user's input)."""

from __future__ import annotations

import errno
from pathlib import Path

from deepsynth.errors import ConfigError

__all__ = ["ConfigError", "DiskFullError"]


class DiskFullError(OSError):
    """A save that does not fit on the disk: names the folder, the bytes needed and the bytes free."""

    def __init__(self, message: str, *, path: Path, needed: int, free: int) -> None:
        super().__init__(errno.ENOSPC, message)
        self.message = message
        self.path = Path(path)
        self.needed = needed
        self.free = free

    def __str__(self) -> str:
        return self.message
