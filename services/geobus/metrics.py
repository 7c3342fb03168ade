"""Prometheus metrics of every geobus process, and where they are served.

The ingress serves them on ``GET /metrics`` of its HTTP port; each worker
process (``geobus worker <stage>``) on a port of its own when
``GEOBUS_METRICS_PORT`` is set (``geobus up`` gives its children consecutive
ports from there). Everything is counted in the process that owns the event
loop — the stage process, from the results its worker processes send back —
never in the pool children, so the default (single-process) registry is
enough.

Names follow the Prometheus conventions: ``geobus_`` prefix, ``_total`` for
counters, base units ``_seconds`` and ``_bytes``. Labels have few values:
``stage``, ``reason`` (a ``RejectReason`` name without its prefix),
``outcome``, ``direction``, a route template, never a job id.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

from geobus import background
from geobus.v1 import feature_pb2, rejection_pb2

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LAG = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_WORK = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_JOB = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

# -- ingress ---------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "geobus_http_requests",
    "HTTP requests answered by the ingress",
    ["method", "route", "status"],
)
HTTP_REQUEST_BYTES = Counter(
    "geobus_http_request_bytes", "Request body bytes received by the ingress", ["route"]
)
HTTP_REQUEST_DURATION = Histogram(
    "geobus_http_request_duration_seconds",
    "Time from the request's arrival to the end of its response",
    ["method", "route"],
    buckets=_FAST,
)
ACCEPT_SECONDS = Histogram(
    "geobus_ingress_accept_seconds",
    "POST /v1/features: time from the request's arrival to the 202 (body spooled and fsynced)",
    buckets=_FAST,
)
JOBS_ACCEPTED = Counter("geobus_jobs_accepted", "Jobs accepted (202) by the ingress")
LOOP_LAG = Histogram(
    "geobus_event_loop_lag_seconds",
    "How late the ingress's event loop woke a probe that sleeps 50 ms",
    buckets=_LAG,
)
LOOP_LAG_MAX = Gauge(
    "geobus_event_loop_lag_max_seconds", "The largest event-loop lag seen since start"
)
SPOOL_BYTES = Gauge(
    "geobus_spool_bytes", "Bytes in the spool: jobs not yet converted plus uploads in progress"
)
CONVERSIONS = Counter(
    "geobus_ingress_conversions",
    "Spooled documents converted and published (sealed) or found unusable (failed)",
    ["outcome"],
)
INGRESS_FEATURES = Counter(
    "geobus_ingress_features", "Features read from documents by the ingress's conversion"
)
INGRESS_REJECTED = Counter(
    "geobus_ingress_features_rejected",
    "Features the ingress's conversion rejected (reasons: geobus_rejections_recorded_total)",
)
CONVERSION_SECONDS = Histogram(
    "geobus_ingress_conversion_seconds",
    "Time to convert and publish one spooled document",
    buckets=_JOB,
)

# -- stages ----------------------------------------------------------------------

STAGE_BATCHES = Counter(
    "geobus_stage_batches",
    "Messages a stage settled (feature batches; the writer also rejection batches and job"
    " events), by what became of them",
    ["stage", "outcome"],
)
STAGE_FEATURES = Counter(
    "geobus_stage_features",
    "Features into a stage (direction=in) and passed on by it (direction=out)",
    ["stage", "direction"],
)
STAGE_REPAIRED = Counter(
    "geobus_stage_repaired", "Features whose geometry a stage repaired (MakeValid)", ["stage"]
)
STAGE_REJECTED = Counter(
    "geobus_stage_rejected", "Features a stage rejected, by reason", ["stage", "reason"]
)
STAGE_SECONDS = Histogram(
    "geobus_stage_seconds",
    "Time a stage spent on one batch (the transform; for the writer, the write and commit)",
    ["stage"],
    buckets=_WORK,
)
STAGE_RETRIES = Counter(
    "geobus_stage_retries", "Messages sent to a delay queue after a transient failure", ["stage"]
)
STAGE_DEAD_LETTERED = Counter(
    "geobus_stage_dead_lettered", "Messages a stage dead-lettered", ["stage", "reason"]
)
WRITER_COMMIT_SECONDS = Histogram(
    "geobus_writer_commit_seconds",
    "Time to write one feature batch to the store and commit it",
    buckets=_WORK,
)
JOB_DURATION = Histogram(
    "geobus_job_duration_seconds",
    "Time from a job's 202 to its completion, observed by the writer",
    ["status"],
    buckets=_JOB,
)
REJECTIONS_RECORDED = Counter(
    "geobus_rejections_recorded",
    "Rejections the writer recorded, by the stage that rejected and the reason",
    ["stage", "reason"],
)
CALLBACKS = Counter(
    "geobus_callbacks",
    "Job callbacks the writer sent, by outcome: delivered (a 2xx answer), refused (an address"
    " the SSRF guard refuses, or a redirect; never retried), failed (every attempt failed)",
    ["outcome"],
)

INTERVAL = 0.05
"""The loop-lag probe's sleep."""
LAG_WINDOW = 1200
"""Recent loop-lag samples kept in memory (a minute at :data:`INTERVAL`)."""
_recent_lag: collections.deque[float] = collections.deque(maxlen=LAG_WINDOW)


_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
}


def metric_types() -> dict[str, str]:
    """geobus's metric families: name (without suffix) → type."""
    return {m.name: m.type for m in REGISTRY.collect() if m.name.startswith("geobus_")}


def sample_names() -> set[str]:
    """Every series name geobus exposes (``…_total``, ``…_bucket`` …), labelled or not."""
    return {
        name + suffix
        for name, kind in metric_types().items()
        for suffix in _SUFFIXES.get(kind, ("",))
    }


def render() -> bytes:
    """The text exposition of every metric of this process."""
    return generate_latest(REGISTRY)


def reason_name(reason: int) -> str:
    """``"invalid_geometry"`` for ``REJECT_REASON_INVALID_GEOMETRY`` (the enum's value)."""
    try:
        name = rejection_pb2.RejectReason.Name(reason)  # type: ignore[arg-type]
    except ValueError:
        return str(reason)
    return name.removeprefix("REJECT_REASON_").lower()


def count_rejections(
    counter: Counter, stage: str | None, rejections: rejection_pb2.RejectionBatch | None
) -> None:
    """Count a rejection batch by reason (``stage`` None: each rejection's own stage)."""
    if rejections is None:
        return
    tally: collections.Counter[tuple[str, int]] = collections.Counter(
        (stage or r.stage, r.reason) for r in rejections.rejections
    )
    for (where, reason), n in tally.items():
        counter.labels(where, reason_name(reason)).inc(n)


def repaired(features: Iterable[feature_pb2.Feature], stage: str) -> int:
    """How many of ``features`` carry a repair made by ``stage``."""
    kind = feature_pb2.ADJUSTMENT_KIND_REPAIRED
    count = 0
    # A plain loop: about 1 µs a feature, most without adjustments (no generator per feature).
    for feature in features:
        adjustments = feature.adjustments
        if adjustments:
            for adjustment in adjustments:
                if adjustment.kind == kind and adjustment.stage == stage:
                    count += 1
                    break
    return count


def observe_batch(
    stage: str,
    batch: feature_pb2.FeatureBatch,
    out: feature_pb2.FeatureBatch,
    rejections: rejection_pb2.RejectionBatch | None,
    seconds: float,
    *,
    fixed: int | None = None,
) -> None:
    """Count one batch a stage transformed (its features in, out, repaired and rejected).

    ``fixed``: how many features the stage repaired, when the caller knows
    (a batch that came out as it went in, a stage that never repairs); None
    counts them in ``out``, a pass over every feature.
    """
    STAGE_FEATURES.labels(stage, "in").inc(len(batch.features))
    STAGE_FEATURES.labels(stage, "out").inc(len(out.features))
    if fixed is None:
        fixed = repaired(out.features, stage)
    if fixed:
        STAGE_REPAIRED.labels(stage).inc(fixed)
    count_rejections(STAGE_REJECTED, stage, rejections)
    STAGE_SECONDS.labels(stage).observe(seconds)


def observe_conversion(features: int, rejected: int, failed: bool, started: float) -> None:
    """Count one conversion the ingress finished (``started``: its :func:`now` at the start)."""
    CONVERSIONS.labels("failed" if failed else "sealed").inc()
    INGRESS_FEATURES.inc(features)
    INGRESS_REJECTED.inc(rejected)
    CONVERSION_SECONDS.observe(now() - started)


def observe_settled(stage: str, disposition: str, reason: str | None = None) -> None:
    """Count what became of one message (``ack``, ``retry``, ``dead-letter``)."""
    outcome = {"ack": "acked", "retry": "retried", "dead-letter": "dead_lettered"}.get(
        disposition, disposition
    )
    STAGE_BATCHES.labels(stage, outcome).inc()
    if outcome == "retried":
        STAGE_RETRIES.labels(stage).inc()
    elif outcome == "dead_lettered":
        STAGE_DEAD_LETTERED.labels(stage, reason or "error").inc()


def loop_lag_quantile(q: float) -> float | None:
    """The ``q`` quantile (0 to 1) of the recent loop-lag samples in seconds (None: no samples)."""
    samples = sorted(_recent_lag)
    if not samples:
        return None
    rank = min(len(samples) - 1, max(0, math.ceil(q * len(samples)) - 1))
    return samples[rank]


async def probe_loop_lag(interval: float = INTERVAL) -> None:
    """Sleep ``interval`` forever; record how much later than asked the loop woke us."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    while True:
        start = loop.time()
        await asyncio.sleep(interval)
        lag = max(0.0, loop.time() - start - interval)
        LOOP_LAG.observe(lag)
        _recent_lag.append(lag)
        if lag > worst:
            worst = lag
            LOOP_LAG_MAX.set(lag)


def loop_lag_probe(interval: float = INTERVAL) -> contextlib.AbstractAsyncContextManager[None]:
    """Run :func:`probe_loop_lag` for the duration of the block (the ingress's lifespan)."""
    return background.running(probe_loop_lag(interval), "loop lag probe")


def serve(host: str, port: int) -> int:
    """Serve this process's metrics on ``http://host:port/metrics`` (a daemon thread).

    Returns the port (0 picks a free one, for tests).
    """
    server, _thread = start_http_server(port, addr=host)
    bound: int = server.server_port
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return bound


def now() -> float:
    """A monotonic clock for durations."""
    return time.perf_counter()
