"""Structured logs: JSON lines with the job's context, a console format on terminals."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from geobus import logs, tracing
from geobus.settings import Settings
from geobus.v1 import rejection_pb2
from geobus.writer.consumer import record_rejections


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger writing JSON lines into a buffer; restored after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    logs.configure("DEBUG", "json", stream)
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    """Every line written so far, each parsed as JSON."""
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_json_line_has_the_standard_fields(captured: io.StringIO) -> None:
    """ts, level, logger and msg are on every line, with %-arguments applied."""
    logging.getLogger("geobus.test").info("hello %s", "world")
    (line,) = lines(captured)
    assert line["level"] == "info"
    assert line["logger"] == "geobus.test"
    assert line["msg"] == "hello world"
    assert isinstance(line["ts"], str)
    assert line["ts"].endswith("Z")


def test_bound_context_extra_and_trace_id_are_fields(captured: io.StringIO) -> None:
    """bind() fields, extra= fields and the current trace id appear on the line."""
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with (
        logs.bind(job_id="job-1", stage="validator"),
        logs.bind(batch=7),
        tracing.use(f"00-{trace_id}-00f067aa0ba902b7-01"),
    ):
        logging.getLogger("geobus.test").warning("bad", extra={"feature_index": 3})
    logging.getLogger("geobus.test").warning("after")
    first, after = lines(captured)
    assert first["job_id"] == "job-1"
    assert first["stage"] == "validator"
    assert first["batch"] == 7
    assert first["feature_index"] == 3
    assert first["trace_id"] == trace_id
    assert "job_id" not in after
    assert "trace_id" not in after


def test_an_exception_is_one_line_with_its_traceback(captured: io.StringIO) -> None:
    """A logged exception stays on one JSON line; the traceback is the exc field."""
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("geobus.test").exception("failed")
    assert len(captured.getvalue().splitlines()) == 1
    (line,) = lines(captured)
    assert "ValueError: boom" in str(line["exc"])


def test_every_rejection_is_logged_once_with_reason_and_coordinate(
    captured: io.StringIO,
) -> None:
    """The writer logs each recorded rejection with its stage, reason code and coordinate."""
    batch = rejection_pb2.RejectionBatch(job_id="job-2", sequence=4, stage="validator")
    rejection = batch.rejections.add(
        job_id="job-2",
        feature_index=12,
        stage="validator",
        reason=rejection_pb2.REJECT_REASON_RING_NOT_CLOSED,
        message="ring is not closed",
    )
    rejection.location.coordinate.extend([10.5, 20.25])
    batch.rejections.add(job_id="job-2", feature_index=13, stage="validator", reason=1)
    record_rejections(batch)
    first, second = lines(captured)
    assert first["feature_index"] == 12
    assert first["reason"] == "ring_not_closed"
    assert first["coordinate"] == [10.5, 20.25]
    assert first["stage"] == "validator"
    assert first["batch"] == 4
    assert second["feature_index"] == 13
    assert second["coordinate"] is None


def test_auto_is_console_on_a_terminal_and_json_otherwise() -> None:
    """GEOBUS_LOG_FORMAT=auto picks the console format only when stderr is a TTY."""
    assert logs.resolve_format("auto", _Terminal()) == "console"
    assert logs.resolve_format("auto", io.StringIO()) == "json"
    assert logs.resolve_format("json", _Terminal()) == "json"


def test_console_format_is_readable_with_the_context() -> None:
    """The console line has time, level, logger, message and key=value context."""
    formatter = logs.ConsoleFormatter()
    record = logging.LogRecord("geobus.x", logging.WARNING, __file__, 1, "m %d", (5,), None)
    with logs.bind(job_id="j9"):
        text = formatter.format(record)
    assert "WARNING" in text
    assert "geobus.x: m 5" in text
    assert "job_id=j9" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_log_settings_are_checked() -> None:
    """GEOBUS_LOG_LEVEL and GEOBUS_LOG_FORMAT are parsed at start-up; bad values fail fast."""
    settings = Settings.from_env({"GEOBUS_LOG_LEVEL": "debug", "GEOBUS_LOG_FORMAT": "json"})
    assert (settings.log_level, settings.log_format) == ("DEBUG", "json")
    assert Settings.from_env({}).log_format == "auto"
    from geobus.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="GEOBUS_LOG_FORMAT"):
        Settings.from_env({"GEOBUS_LOG_FORMAT": "xml"})
    with pytest.raises(ConfigurationError, match="GEOBUS_LOG_LEVEL"):
        Settings.from_env({"GEOBUS_LOG_LEVEL": "loud"})
