"""The error types for invalid settings and unknown models, at the bottom of the package so every layer can raise them."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """An invalid setting: names the field, the value given and what is accepted."""

    def __init__(self, field: str, value: Any, expected: str) -> None:
        self.field = field
        self.value = value
        self.expected = expected
        super().__init__(f"{field}: got {value!r}, expected {expected}")


class ModelNotFoundError(ValueError):
    """A model name that names no model to be had (not on the Hub, or offline): the web API answers 404."""
