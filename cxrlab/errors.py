"""Exceptions that carry *where* and *why*, so users see a sentence, not a traceback."""

from __future__ import annotations


class CxrlabError(Exception):
    """Base class of every error cxrlab raises on purpose (the CLI prints these without a traceback)."""


class InputError(CxrlabError):
    """Bad input: names the file (or object), the field when relevant, and the reason."""

    def __init__(self, source: object, reason: str, field: str | None = None):
        self.source = str(source)
        self.field = field
        self.reason = reason
        where = self.source if field is None else f"{self.source} [{field}]"
        super().__init__(f"{where}: {reason}")


class ConfigError(CxrlabError):
    """An invalid recipe/config key or value."""


class WeightsNotFoundError(CxrlabError):
    """A requested weight source is not available offline."""
