"""The one error type for invalid settings (defined in :mod:`deepsynth.errors`, so that ``data/`` can
raise it without importing ``training/``)."""

from __future__ import annotations

from deepsynth.errors import ConfigError

__all__ = ["ConfigError"]
