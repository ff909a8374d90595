"""How the ``zmqrelay`` command logs: lines of text for people, or JSON objects for machines.

A JSON line holds ``time`` (ISO 8601, UTC), ``level``, ``logger`` and ``message``, then every
field the record carries (what the code passed as ``extra=``: counts, names, endpoints), then
``exception`` (the formatted traceback) when there is one. One object per line, always.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Literal

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",  # since Python 3.12
}
"""What every record has: anything else came as ``extra=``."""
_OWN = ("time", "level", "logger", "message")


class JsonFormatter(logging.Formatter):
    """Formats each record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON object: the fixed fields, its own, then its exception."""
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="microseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and name not in _OWN:
                line[name] = _plain(value)
        if record.exc_info and record.exc_info[1] is not None:
            line["exception_type"] = type(record.exc_info[1]).__name__
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def _plain(value: object) -> object:
    """``value`` as what JSON can hold: named tuples become objects, bytes text."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return {name: _plain(field) for name, field in value._asdict().items()}
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(item) for item in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure` installs (and replaces)."""


def configure(log_level: str, log_format: LogFormat) -> None:
    """Log records of ``log_level`` and above to standard error, as text or as JSON lines.

    Called again, it replaces what it set up before. Like :func:`logging.basicConfig`, it
    leaves alone a program that set up logging itself (one that runs the command in-process).
    """
    root = logging.getLogger()
    for handler in root.handlers[:]:
        if isinstance(handler, _Handler):
            root.removeHandler(handler)
    if root.handlers:
        return
    handler = _Handler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root.addHandler(handler)
    root.setLevel(log_level.upper())


def formats_json() -> bool:
    """Whether :func:`configure` set up JSON lines."""
    return any(
        isinstance(handler, _Handler) and isinstance(handler.formatter, JsonFormatter)
        for handler in logging.getLogger().handlers
    )
