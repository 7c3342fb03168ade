"""Structured logs: one JSON object per line, or a readable line on a terminal.

Every geobus process (``geobus ingress``, ``geobus worker …``, the children
of ``geobus up``) calls :func:`configure` once at start-up with
``GEOBUS_LOG_LEVEL`` and ``GEOBUS_LOG_FORMAT`` (``json``, ``console``, or
``auto``: console when stderr is a terminal, JSON otherwise).

A JSON line has ``ts`` (RFC 3339, UTC), ``level``, ``logger`` and ``msg``,
then the context of the work being done — ``job_id``, ``stage``, ``batch``,
``trace_id`` — bound for the duration of a message with :func:`bind` (a
:mod:`contextvars` variable, so concurrent batches do not mix), then what
the call passed in ``extra=`` (``feature_index``, ``reason``,
``coordinate`` …), and ``exc`` with the traceback when there is one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

from geobus import tracing

FORMATS = ("auto", "json", "console")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_context: ContextVar[Mapping[str, Any]] = ContextVar("geobus_log_context", default={})  # noqa: B039

# Attributes every LogRecord has; anything else on a record came in through extra=.
_RECORD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


@contextlib.contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add ``fields`` (``job_id=…``, ``stage=…``, ``batch=…``) to every log line in the block."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def bind_task(**fields: Any) -> None:
    """Add ``fields`` to every log line of the current asyncio task, until it ends.

    For a task that works for one job throughout (a task's context is its own
    copy, so this does not leak into other tasks).
    """
    _context.set({**_context.get(), **fields})


def context() -> Mapping[str, Any]:
    """The fields bound by the enclosing :func:`bind` blocks."""
    return _context.get()


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of ``record``: bound context, trace id, then its ``extra=``."""
    out: dict[str, Any] = dict(_context.get())
    trace = tracing.trace_id()
    if trace is not None:
        out.setdefault("trace_id", trace)
    for key, value in vars(record).items():
        if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
            out[key] = value
    return out


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line (without the newline)."""
        document: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in fields_of(record).items():
            document.setdefault(key, value)
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exc"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return json.dumps(document, default=str, ensure_ascii=False)


class ConsoleFormatter(logging.Formatter):
    """``HH:MM:SS.mmm LEVEL logger: message  key=value …`` for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one readable line (plus a traceback, if any)."""
        moment = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S.%f")[:-3]
        line = f"{moment} {record.levelname:<7} {record.name}: {record.getMessage()}"
        extra = fields_of(record)
        if extra:
            line += "  " + " ".join(f"{k}={v}" for k, v in extra.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def resolve_format(fmt: str, stream: TextIO) -> str:
    """``json`` or ``console`` for ``fmt`` (``auto``: console on a terminal, else JSON)."""
    if fmt != "auto":
        return fmt
    isatty = getattr(stream, "isatty", None)
    return "console" if isatty is not None and isatty() else "json"


def configure(level: str = "INFO", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Send every log record of this process to ``stream`` (stderr) in the chosen format.

    Replaces the root logger's handlers, so it may be called again (tests).
    Uvicorn's loggers propagate to the root instead of printing their own lines.
    """
    out = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(out)
    formatter: logging.Formatter = (
        JsonFormatter() if resolve_format(fmt, out) == "json" else ConsoleFormatter()
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Python warnings (numpy, shapely) become log records too, not bare stderr text.
    logging.captureWarnings(True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True


def configure_from_env() -> None:
    """:func:`configure` from ``GEOBUS_LOG_LEVEL`` / ``GEOBUS_LOG_FORMAT`` (worker processes)."""
    from geobus.errors import ConfigurationError
    from geobus.settings import Settings

    try:
        settings = Settings.from_env()
    except ConfigurationError:
        configure()  # the parent process reported the bad variable already
        return
    configure(settings.log_level, settings.log_format)
