"""Prometheus metrics: names and types, what stages count, the ingress middleware, the dashboard."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from geobus import metrics, tracing
from geobus.errors import PermanentError
from geobus.ingress.telemetry import Telemetry
from geobus.supervisor import commands
from geobus.v1 import feature_pb2, rejection_pb2

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana-dashboard.json"

EXPECTED = {
    "geobus_http_requests": "counter",
    "geobus_http_request_bytes": "counter",
    "geobus_http_request_duration_seconds": "histogram",
    "geobus_ingress_accept_seconds": "histogram",
    "geobus_jobs_accepted": "counter",
    "geobus_event_loop_lag_seconds": "histogram",
    "geobus_event_loop_lag_max_seconds": "gauge",
    "geobus_spool_bytes": "gauge",
    "geobus_ingress_conversions": "counter",
    "geobus_ingress_features": "counter",
    "geobus_ingress_features_rejected": "counter",
    "geobus_ingress_conversion_seconds": "histogram",
    "geobus_stage_batches": "counter",
    "geobus_stage_features": "counter",
    "geobus_stage_repaired": "counter",
    "geobus_stage_rejected": "counter",
    "geobus_stage_seconds": "histogram",
    "geobus_stage_retries": "counter",
    "geobus_stage_dead_lettered": "counter",
    "geobus_writer_commit_seconds": "histogram",
    "geobus_job_duration_seconds": "histogram",
    "geobus_rejections_recorded": "counter",
    "geobus_callbacks": "counter",
}


def value(name: str, **labels: str) -> float:
    """The current value of one series (0 when it does not exist yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_every_documented_metric_exists_with_its_type() -> None:
    """The metric families the README and dashboard name are registered with the right type."""
    assert metrics.metric_types() == EXPECTED


def test_names_follow_prometheus_conventions() -> None:
    """Counters end in _total, durations in _seconds, sizes in _bytes; all start with geobus_."""
    for name in metrics.sample_names():
        assert re.fullmatch(r"geobus_[a-z0-9_]+", name)
    for name, kind in EXPECTED.items():
        if "duration" in name or "latency" in name or "lag" in name:
            assert name.endswith("_seconds")
        if kind == "histogram":
            assert name.endswith("_seconds")


def test_a_transformed_batch_is_counted_in_out_repaired_and_rejected() -> None:
    """observe_batch counts features in and out, repairs of this stage and rejections by reason."""
    stage = "unit-stage"
    batch = feature_pb2.FeatureBatch(job_id="j", sequence=1)
    batch.features.add(index=0)
    batch.features.add(index=1)
    batch.features.add(index=2)
    out = feature_pb2.FeatureBatch(job_id="j", sequence=1)
    repaired = out.features.add(index=0)
    repaired.adjustments.add(kind=feature_pb2.ADJUSTMENT_KIND_REPAIRED, stage=stage)
    other = out.features.add(index=1)
    other.adjustments.add(kind=feature_pb2.ADJUSTMENT_KIND_REPAIRED, stage="elsewhere")
    rejections = rejection_pb2.RejectionBatch(job_id="j", sequence=1, stage=stage)
    rejections.rejections.add(
        job_id="j", feature_index=2, stage=stage, reason=rejection_pb2.REJECT_REASON_RING_NOT_CLOSED
    )
    metrics.observe_batch(stage, batch, out, rejections, 0.2)
    assert value("geobus_stage_features_total", stage=stage, direction="in") == 3
    assert value("geobus_stage_features_total", stage=stage, direction="out") == 2
    assert value("geobus_stage_repaired_total", stage=stage) == 1
    assert value("geobus_stage_rejected_total", stage=stage, reason="ring_not_closed") == 1
    assert value("geobus_stage_seconds_count", stage=stage) == 1


def test_settled_messages_count_retries_and_dead_letters() -> None:
    """Each disposition is one batch outcome; retries and dead letters also have their own."""
    stage = "unit-settle"
    metrics.observe_settled(stage, "ack")
    metrics.observe_settled(stage, "retry")
    metrics.observe_settled(stage, "dead-letter", "retries_exhausted")
    assert value("geobus_stage_batches_total", stage=stage, outcome="acked") == 1
    assert value("geobus_stage_batches_total", stage=stage, outcome="retried") == 1
    assert value("geobus_stage_batches_total", stage=stage, outcome="dead_lettered") == 1
    assert value("geobus_stage_retries_total", stage=stage) == 1
    assert value("geobus_stage_dead_lettered_total", stage=stage, reason="retries_exhausted") == 1


def test_recorded_rejections_are_counted_by_their_own_stage() -> None:
    """The writer counts every stage's rejections under that stage (stage=None)."""
    batch = rejection_pb2.RejectionBatch(job_id="j", sequence=0, stage="ingress")
    reason = rejection_pb2.REJECT_REASON_RING_NOT_CLOSED
    batch.rejections.add(job_id="j", feature_index=0, stage="unit-a", reason=reason)
    batch.rejections.add(job_id="j", feature_index=1, stage="unit-a", reason=reason)
    before = value("geobus_rejections_recorded_total", stage="unit-a", reason="ring_not_closed")
    metrics.count_rejections(metrics.REJECTIONS_RECORDED, None, batch)
    after = value("geobus_rejections_recorded_total", stage="unit-a", reason="ring_not_closed")
    assert after - before == 2


async def _features(request: Request) -> Response:
    body = await request.body()
    return JSONResponse({"bytes": len(body), "trace": tracing.current()}, status_code=202)


def _app() -> Starlette:
    routes = [Route("/v1/features", _features, methods=["POST"])]
    return Starlette(routes=routes, middleware=[Middleware(Telemetry)])


def test_middleware_counts_requests_bytes_and_the_202_latency() -> None:
    """A POST answered 202 counts under its route template, with its body bytes and latency."""
    labels = {"method": "POST", "route": "/v1/features", "status": "202"}
    requests_before = value("geobus_http_requests_total", **labels)
    bytes_before = value("geobus_http_request_bytes_total", route="/v1/features")
    accepted_before = value("geobus_ingress_accept_seconds_count")
    jobs_before = value("geobus_jobs_accepted_total")
    with TestClient(_app()) as client:
        assert client.post("/v1/features", content=b"x" * 1000).status_code == 202
        assert client.get("/nowhere").status_code == 404
    assert value("geobus_http_requests_total", **labels) - requests_before == 1
    assert value("geobus_http_request_bytes_total", route="/v1/features") - bytes_before == 1000
    assert value("geobus_ingress_accept_seconds_count") - accepted_before == 1
    assert value("geobus_jobs_accepted_total") - jobs_before == 1
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert value("geobus_http_requests_total", **unmatched) >= 1


def test_middleware_continues_the_clients_trace() -> None:
    """The request's traceparent is current in the endpoint and answered with the same trace id."""
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    sent = f"00-{trace_id}-00f067aa0ba902b7-01"
    with TestClient(_app()) as client:
        response = client.post("/v1/features", content=b"{}", headers={"traceparent": sent})
        fresh = client.post("/v1/features", content=b"{}")
    inside = tracing.parse(response.json()["trace"])
    answered = tracing.parse(response.headers["traceparent"])
    assert inside is not None
    assert answered is not None
    assert inside.trace_id == answered.trace_id == trace_id
    assert inside.parent_id != "00f067aa0ba902b7"  # the ingress's own span
    started = tracing.parse(fresh.headers["traceparent"])
    assert started is not None
    assert started.trace_id != trace_id


async def test_loop_lag_probe_sees_a_blocked_loop() -> None:
    """Blocking the event loop for 150 ms shows up in the lag histogram, its max and quantiles."""
    count_before = value("geobus_event_loop_lag_seconds_count")
    async with metrics.loop_lag_probe(interval=0.01):
        await asyncio.sleep(0.05)
        time.sleep(0.15)  # noqa: ASYNC251 - the point: block the loop
        await asyncio.sleep(0.05)
    assert value("geobus_event_loop_lag_seconds_count") - count_before >= 3
    assert value("geobus_event_loop_lag_max_seconds") >= 0.1
    worst = metrics.loop_lag_quantile(1.0)
    assert worst is not None
    assert worst >= 0.1


def test_render_is_the_prometheus_text_format() -> None:
    """render() gives the text exposition with HELP and TYPE lines for geobus's metrics."""
    text = metrics.render().decode()
    assert "# TYPE geobus_stage_features_total counter" in text
    assert "# TYPE geobus_ingress_accept_seconds histogram" in text


def _exprs(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for v in node.values() for e in _exprs(v)]
    if isinstance(node, list):
        return [e for v in node for e in _exprs(v)]
    return []


def test_dashboard_queries_only_metrics_that_exist() -> None:
    """Every expression of deploy/grafana-dashboard.json names geobus series that are exposed."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = _exprs(dashboard["panels"])
    assert len(exprs) >= 15
    exposed = metrics.sample_names()
    used: set[str] = set()
    for expr in exprs:
        names = set(re.findall(r"\bgeobus_[a-z0-9_]+", expr))
        assert names, expr
        assert names <= exposed, f"{expr}: {names - exposed}"
        used |= names
    # Every metric family is on the dashboard somewhere.
    families = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in used}
    assert set(EXPECTED) - families == set()


async def test_settle_counts_the_dead_letter_and_logs_it_once_with_its_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A dead-lettered message is counted under its stage and reason and logged once."""
    from tests.unit.test_broker_settle import FakePublisher, _settle

    before = value("geobus_stage_dead_lettered_total", stage="writer", reason="error")
    acked_before = value("geobus_stage_batches_total", stage="writer", outcome="acked")
    log: list[object] = []
    with caplog.at_level("WARNING", logger="geobus.broker.consumer"):
        await _settle(PermanentError("bad"), FakePublisher(log), log)
        await _settle(None, FakePublisher(log), log)
    assert value("geobus_stage_dead_lettered_total", stage="writer", reason="error") - before == 1
    assert value("geobus_stage_batches_total", stage="writer", outcome="acked") - acked_before == 1
    (record,) = [r for r in caplog.records if "dead-lettered" in r.getMessage()]
    assert record.__dict__["reason"] == "error"
    assert record.__dict__["error"] == "PermanentError"


def test_geobus_up_gives_each_worker_its_own_metrics_port() -> None:
    """With GEOBUS_METRICS_PORT=P, `geobus up`'s workers get P+1, P+2, ... (distinct ports)."""
    children = commands(2, metrics_port=9100)
    ports = [c.env.get("GEOBUS_METRICS_PORT") for c in children if c.name != "ingress"]
    assert ports == [str(9100 + n) for n in range(1, 7)]
    assert all(not c.env for c in commands(2))
