"""W3C trace context for a job: one trace id from the POST to the writer.

The ingress takes the ``traceparent`` of ``POST /v1/features`` (or starts a
trace when there is none or it is malformed), keeps it in the job's spool
metadata, and every message a stage publishes carries it in its
``traceparent`` header. Within a process the current trace context lives in
a :mod:`contextvars` variable: the consumer loop sets it from each delivered
message (:func:`span`), the publisher copies it into every message it
encodes (:func:`inject`), so stage code never passes it around.

Each hop (the ingress request, a stage handling one message) gets a span id
of its own under the job's trace id. When the ``otel`` extra is installed
(``opentelemetry-api``, plus an SDK configured by the deployment), those hops
are real OpenTelemetry spans; otherwise ids are made here and nothing else
happens. The work is per message, never per feature.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

HEADER = "traceparent"

# version 00: "00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>"; all-zero ids are invalid.
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
SAMPLED = "01"

_current: ContextVar[str | None] = ContextVar("geobus_traceparent", default=None)

try:  # the `otel` extra
    from opentelemetry import trace as _otel_trace
    from opentelemetry.trace.propagation.tracecontext import (
        TraceContextTextMapPropagator as _Propagator,
    )
except ImportError:  # pragma: no cover - depends on the installed extras
    _otel_trace = None  # type: ignore[assignment]
    _Propagator = None  # type: ignore[assignment,misc]


_provider: Any = None
"""The OpenTelemetry tracer provider (None: the global one the deployment configured)."""


@dataclass(frozen=True, slots=True)
class TraceParent:
    """A parsed ``traceparent`` header (version 00)."""

    trace_id: str
    parent_id: str
    flags: str = SAMPLED

    def __str__(self) -> str:
        return f"00-{self.trace_id}-{self.parent_id}-{self.flags}"


def parse(value: object) -> TraceParent | None:
    """The trace context in a ``traceparent`` value, or None when absent or malformed.

    Takes whatever an AMQP header or an HTTP header holds (str or bytes).
    """
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("ascii", errors="replace")
    if not isinstance(value, str) or not value:
        return None
    match = _TRACEPARENT.fullmatch(value.strip().lower())
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    # Version ff is forbidden; version 00 has nothing after the flags.
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE:
        return None
    if parent_id == _ZERO_SPAN:
        return None
    return TraceParent(trace_id, parent_id, flags)


def new_trace() -> TraceParent:
    """A new sampled trace with a random trace id and span id."""
    return TraceParent(os.urandom(16).hex(), os.urandom(8).hex())


def child(parent: TraceParent | None) -> TraceParent:
    """A new span id under ``parent``'s trace (a new trace when there is no parent)."""
    if parent is None:
        return new_trace()
    return TraceParent(parent.trace_id, os.urandom(8).hex(), parent.flags)


def current() -> str | None:
    """The ``traceparent`` of the work this task is doing, or None."""
    return _current.get()


def trace_id() -> str | None:
    """The trace id of the work this task is doing, or None."""
    parsed = parse(_current.get())
    return parsed.trace_id if parsed is not None else None


@contextlib.contextmanager
def use(traceparent: str | None) -> Iterator[None]:
    """Make ``traceparent`` the current trace context inside the block (None: leave it)."""
    if traceparent is None:
        yield
        return
    token = _current.set(traceparent)
    try:
        yield
    finally:
        _current.reset(token)


def use_task(traceparent: str | None) -> None:
    """Make ``traceparent`` current for the rest of the current asyncio task (None: leave it)."""
    if traceparent is not None:
        _current.set(traceparent)


@contextlib.contextmanager
def span(name: str, parent: object, **attributes: str | int) -> Iterator[str]:
    """One hop of the trace (a stage handling a message, the ingress taking a POST).

    Yields the hop's own ``traceparent`` (same trace id as ``parent``, new
    span id; a new trace when ``parent`` is missing or malformed), which is
    current inside the block. With OpenTelemetry installed the hop is a
    span of the global tracer provider.
    """
    parsed = parse(parent)
    if _otel_trace is None or _Propagator is None:
        own = str(child(parsed))
        with use(own):
            yield own
        return
    carrier = {HEADER: str(parsed)} if parsed is not None else {}
    context = _Propagator().extract(carrier)
    tracer = _otel_trace.get_tracer("geobus", tracer_provider=_provider)
    with tracer.start_as_current_span(name, context=context, attributes=attributes) as otel_span:
        if otel_span.is_recording():
            # An SDK made a real span under the parent: its ids are the hop's.
            ctx = otel_span.get_span_context()
            own = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
        else:
            # The API alone (no SDK): spans are no-ops, so make the ids here.
            own = str(child(parsed))
        with use(own):
            yield own


def inject(headers: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """``headers`` with the current ``traceparent`` added (an explicit one wins)."""
    value = _current.get()
    if value is None or (headers is not None and HEADER in headers):
        return headers
    table = dict(headers or {})
    table[HEADER] = value
    return table
