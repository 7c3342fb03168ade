"""W3C trace context: parsing, one hop per stage under the job's trace id, header injection."""

from __future__ import annotations

import asyncio

import pytest

from geobus import tracing
from geobus.broker import wire
from geobus.broker.publisher import Outgoing, Publisher
from geobus.broker.topology import topology
from geobus.v1 import feature_pb2

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        f"00-{'0' * 32}-b7ad6b7169203331-01",  # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
        f"ff-{TRACE_ID}-b7ad6b7169203331-01",  # forbidden version
        f"00-{TRACE_ID}-b7ad6b7169203331-01-extra",  # version 00 has nothing more
        f"00-{TRACE_ID[:-1]}-b7ad6b7169203331-01",
    ],
)
def test_malformed_traceparents_are_ignored(value: str | None) -> None:
    """A missing or malformed traceparent parses to None (the ingress then starts a trace)."""
    assert tracing.parse(value) is None


def test_valid_traceparent_parses_from_str_or_bytes() -> None:
    """Header values arrive as str (HTTP) or bytes (AMQP); both parse, case-insensitively."""
    parsed = tracing.parse(PARENT.upper().encode())
    assert parsed == tracing.TraceParent(TRACE_ID, "b7ad6b7169203331", "01")
    assert str(parsed) == PARENT
    assert tracing.parse(f"01-{TRACE_ID}-b7ad6b7169203331-01-future") is not None


def test_a_hop_keeps_the_trace_id_and_gets_its_own_span_id() -> None:
    """span() under a parent: same trace id, a new parent id, current only inside the block."""
    assert tracing.current() is None
    with tracing.span("geobus validator", PARENT) as own:
        hop = tracing.parse(own)
        assert hop is not None
        assert hop.trace_id == TRACE_ID
        assert hop.parent_id != "b7ad6b7169203331"
        assert tracing.current() == own
        assert tracing.trace_id() == TRACE_ID
    assert tracing.current() is None


def test_a_hop_without_a_parent_starts_a_trace() -> None:
    """No or a bad parent: a new valid trace."""
    with tracing.span("x", None) as first, tracing.span("y", b"nonsense") as second:
        assert tracing.parse(first) is not None
        assert tracing.parse(second) is not None
        assert tracing.parse(first) != tracing.parse(second)


def test_inject_adds_the_current_traceparent_unless_one_is_given() -> None:
    """Messages published inside a hop carry it; an explicit header wins; none outside."""
    assert tracing.inject({"a": 1}) == {"a": 1}
    with tracing.use(PARENT):
        assert tracing.inject(None) == {"traceparent": PARENT}
        assert tracing.inject({"a": 1}) == {"a": 1, "traceparent": PARENT}
        assert tracing.inject({"traceparent": "other"}) == {"traceparent": "other"}


def test_the_publisher_puts_the_current_trace_into_the_message_headers() -> None:
    """Publisher encoding (every stage's output) copies the current traceparent into headers."""
    spec = topology("unittrace")
    publisher = Publisher.__new__(Publisher)
    publisher._topology = spec
    publisher._max_bytes = None
    batch = feature_pb2.FeatureBatch(job_id="j", sequence=0)
    out = Outgoing(spec.features_exchange, "feature.validated", batch, "m", "j", "validator")
    with tracing.use(PARENT):
        message = publisher._encode(out)
    assert message.headers[wire.HEADER_TRACEPARENT] == PARENT
    assert wire.HEADER_TRACEPARENT not in (publisher._encode(out).headers or {})


async def test_tasks_inherit_the_trace_but_do_not_leak_it() -> None:
    """A task started in a hop (the runner's job task) keeps the trace; changes stay in the task."""

    async def inner() -> str | None:
        tracing.use_task("00-" + "1" * 32 + "-" + "2" * 16 + "-01")
        return tracing.current()

    with tracing.use(PARENT):
        seen = await asyncio.create_task(asyncio.sleep(0, tracing.current()))
        changed = await asyncio.create_task(inner())
        assert tracing.current() == PARENT
    assert seen == PARENT
    assert changed is not None
    assert changed.startswith("00-111")


def test_with_an_otel_sdk_each_hop_is_a_recorded_span_under_the_job_trace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the otel extra configured, a hop is a real span: child of the parent, same trace."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_provider", provider)
    with tracing.span("geobus validator", PARENT, stage="validator") as own:
        pass
    (span,) = exporter.get_finished_spans()
    assert span.name == "geobus validator"
    assert span.attributes == {"stage": "validator"}
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == "b7ad6b7169203331"
    assert own == f"00-{TRACE_ID}-{span.context.span_id:016x}-01"
