"""Exceptions that carry *where* and *why*, so users see a sentence, not a traceback.

Raise a :class:`CxrlabError` (usually :class:`InputError` naming the file, or :class:`ConfigError` naming the key)
for anything the user can fix. It survives the trip back from a DataLoader worker process, a process pool or a
thread: :func:`find_cxrlab_error` recovers it from torch's wrapped worker error, and
:func:`reraise_worker_errors` re-raises it cleanly in the main process.
"""

from __future__ import annotations

import re
import sys
from typing import Any


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

    def __reduce__(self):  # picklable with its three arguments (process pools send exceptions back pickled)
        return type(self), (self.source, self.reason, self.field)


class ConfigError(CxrlabError):
    """An invalid recipe/config key or value."""


class WeightsNotFoundError(CxrlabError):
    """A requested weight source is not available offline."""


# torch's ExceptionWrapper turns an error in a DataLoader worker into "Caught InputError in DataLoader worker
# process 0.\nOriginal Traceback (most recent call last): ...\ncxrlab.errors.InputError: <message>", re-raised as
# a RuntimeError when the class cannot be rebuilt from that text alone (InputError needs a source and a reason).
_CAUGHT = re.compile(r"^Caught (?P<name>\w+) (?P<where>.*?)\.\s*\nOriginal Traceback", re.S)
_INPUT_MESSAGE = re.compile(r"^(?P<source>.*?)(?: \[(?P<field>[^\]]*)\])?: (?P<reason>.*)$", re.S)


def _from_worker_text(text: str) -> CxrlabError | None:
    caught = _CAUGHT.match(text)
    if caught is None:
        return None
    name = caught["name"]
    lines = list(re.finditer(rf"^(?P<module>[\w.]+)\.{name}: ", text, re.M))
    if not lines:
        return None
    line = lines[-1]  # the last block of a traceback is the exception that was raised
    cls = getattr(sys.modules.get(line["module"]), name, None)
    if not (isinstance(cls, type) and issubclass(cls, CxrlabError)):
        return None
    message = text[line.end():].strip()
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    if issubclass(cls, InputError):
        parts = _INPUT_MESSAGE.match(message)
        error.source = parts["source"] if parts else "input"
        error.field = parts["field"] if parts else None
        error.reason = parts["reason"] if parts else message
    error.where = caught["where"]  # e.g. "in DataLoader worker process 0"
    return error


def find_cxrlab_error(exc: BaseException | None) -> CxrlabError | None:
    """The :class:`CxrlabError` behind ``exc``: itself, one it was raised ``from``, or one torch wrapped in a
    worker process or thread (rebuilt from the traceback text, with the same class and message); else None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        # first the worker text: torch rebuilds a one-argument class (ConfigError) with the traceback as message
        found = _from_worker_text(str(exc)) if exc.args else None
        if found is not None:
            return found
        if isinstance(exc, CxrlabError):
            return exc
        exc = exc.__cause__
    return None


class reraise_worker_errors:  # noqa: N801 - used like a function: ``with reraise_worker_errors(): ...``
    """Around a loop over a DataLoader (or a pool's results): a :class:`CxrlabError` raised in a worker comes out
    as itself, not as a RuntimeError carrying a traceback as its message."""

    def __enter__(self) -> "reraise_worker_errors":
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: Any) -> bool:
        if not isinstance(exc, Exception):
            return False
        original = find_cxrlab_error(exc)
        if original is None or original is exc:
            return False
        # The wrapper's traceback holds the DataLoader iterator in its frames. Keep no reference to it (nor a
        # cycle through this frame), so the iterator is freed by reference counting as soon as the error is
        # handled and its workers stop at once, not in a later garbage collection that waits 5 s for them.
        exc.__traceback__ = exc.__context__ = exc.__cause__ = None
        del exc, tb
        try:
            raise original from None
        finally:
            original = None
