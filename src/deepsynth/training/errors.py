"""Error types of a run: invalid settings (bad input) and a full disk (not the user's input)."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """An invalid setting: names the field, the value given and what is accepted."""

    def __init__(self, field: str, value: Any, expected: str) -> None:
        self.field = field
        self.value = value
        self.expected = expected
        super().__init__(f"{field}: got {value!r}, expected {expected}")


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
