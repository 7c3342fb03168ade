"""Metrics, JSON logs and one trace id across the real pipeline (ingress, workers as processes)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aio_pika
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from geobus import tracing
from geobus.broker.topology import topology
from tests.integration.conftest import STAGES, Pipeline, free_port

pytestmark = pytest.mark.integration

TRACE_ID = "5c1e6f0d2a9b4c7e8f1a2b3c4d5e6f70"
TRACEPARENT = f"00-{TRACE_ID}-a1b2c3d4e5f60718-01"


def _feature(geometry: dict[str, Any], n: int) -> dict[str, Any]:
    return {"type": "Feature", "geometry": geometry, "properties": {"n": n}}


# Five good points, a bow-tie the validator repairs, a point beyond latitude 90 it rejects
# (the reason code is whatever the validator says: the test follows the metric's label).
FEATURES = [_feature({"type": "Point", "coordinates": [i, i]}, i) for i in range(5)]
FEATURES.append(
    _feature({"type": "Polygon", "coordinates": [[[0, 0], [2, 2], [2, 0], [0, 2], [0, 0]]]}, 5)
)
FEATURES.append(_feature({"type": "Point", "coordinates": [10, 95]}, 6))
DOCUMENT = json.dumps({"type": "FeatureCollection", "features": FEATURES}).encode()


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics page: (name, labels) → value."""
    text = httpx.get(url, timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """One sample's value (0 when absent)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def _bind_observer(
    amqp_url: str, prefix: str
) -> tuple[aio_pika.abc.AbstractConnection, aio_pika.abc.AbstractQueue]:
    spec = topology(prefix)
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    for exchange in (spec.features_exchange, spec.jobs_exchange):
        await queue.bind(exchange, "#")
    return connection, queue


async def _drain(
    queue: aio_pika.abc.AbstractQueue, until: float
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    seen = []
    while time.monotonic() < until:
        message = await queue.get(fail=False, no_ack=True)
        if message is None:
            await asyncio.sleep(0.1)
            continue
        seen.append(message)
        if message.routing_key == "job.completed":
            break
    return seen


def _start(pipeline: Pipeline) -> dict[str, int]:
    """Workers each with their own metrics port, then the ingress; JSON logs everywhere."""
    pipeline.env["GEOBUS_LOG_FORMAT"] = "json"
    ports = {}
    for stage in STAGES:
        ports[stage] = free_port()
        pipeline.env["GEOBUS_METRICS_PORT"] = str(ports[stage])
        pipeline.start(stage, "worker", stage)
    pipeline.env.pop("GEOBUS_METRICS_PORT")
    pipeline.start("ingress", "ingress")
    pipeline.wait_ready()
    return ports


async def test_metrics_logs_and_trace_of_one_job(pipeline: Pipeline) -> None:
    """After one job: counters add up on every process, every log line is JSON, one trace id
    runs from the POST through every message to the writer's rejection log line."""
    ports = await asyncio.to_thread(_start, pipeline)
    connection, queue = await _bind_observer(
        pipeline.env["GEOBUS_AMQP_URL"], pipeline.env["GEOBUS_PREFIX"]
    )
    try:
        async with httpx.AsyncClient(base_url=pipeline.base_url, timeout=30) as client:
            response = await client.post(
                "/v1/features",
                content=DOCUMENT,
                headers={"Content-Type": "application/geo+json", "traceparent": TRACEPARENT},
            )
            assert response.status_code == 202, response.text
            assert tracing.parse(response.headers["traceparent"]).trace_id == TRACE_ID
            job_id = response.json()["jobID"]
            messages = await _drain(queue, time.monotonic() + 60)
            job = (await client.get(f"/v1/jobs/{job_id}")).json()
    finally:
        await connection.close()
    assert job["status"] == "successful", job
    assert job["counts"]["stored"] == 6
    assert job["counts"]["rejected"] == 1

    # One trace id on every message of the job, from every stage.
    keys = {m.routing_key for m in messages}
    assert {
        "feature.ingested",
        "feature.validated",
        "feature.reprojected",
        "feature.stored",
        "feature.rejected",
        "job.sealed",
        "job.completed",
    } <= keys, keys
    for message in messages:
        header = (message.headers or {}).get("traceparent")
        parsed = tracing.parse(header)
        assert parsed is not None, (message.routing_key, header)
        assert parsed.trace_id == TRACE_ID, (message.routing_key, header)
    stages = {(m.headers or {}).get("x-geobus-stage") for m in messages}
    assert {"ingress", "validator", "reprojector", "writer"} <= stages

    # The ingress's /metrics.
    ingress = scrape(pipeline.base_url + "/metrics")
    post = {"method": "POST", "route": "/v1/features", "status": "202"}
    assert sample(ingress, "geobus_http_requests_total", **post) == 1
    assert sample(ingress, "geobus_http_request_bytes_total", route="/v1/features") == len(DOCUMENT)
    assert sample(ingress, "geobus_ingress_accept_seconds_count") == 1
    assert sample(ingress, "geobus_jobs_accepted_total") == 1
    assert sample(ingress, "geobus_ingress_features_total") == 7
    assert sample(ingress, "geobus_ingress_conversions_total", outcome="sealed") == 1
    assert sample(ingress, "geobus_event_loop_lag_seconds_count") > 0

    # Each worker's own port: features in = out + rejected, per stage.
    workers = {s: scrape(f"http://127.0.0.1:{p}/metrics") for s, p in ports.items()}
    validator = workers["validator"]
    v_in = sample(validator, "geobus_stage_features_total", stage="validator", direction="in")
    v_out = sample(validator, "geobus_stage_features_total", stage="validator", direction="out")
    reasons = {
        dict(labels)["reason"]: v
        for (name, labels), v in validator.items()
        if name == "geobus_stage_rejected_total" and dict(labels)["stage"] == "validator"
    }
    assert (v_in, v_out, sum(reasons.values())) == (7, 6, 1), reasons
    (reason,) = reasons
    assert sample(validator, "geobus_stage_repaired_total", stage="validator") == 1
    assert sample(validator, "geobus_stage_batches_total", stage="validator", outcome="acked") >= 1
    assert sample(validator, "geobus_stage_seconds_count", stage="validator") >= 1
    reprojector = workers["reprojector"]
    assert (
        sample(reprojector, "geobus_stage_features_total", stage="reprojector", direction="out")
        == 6
    )
    writer = workers["writer"]
    stored = sample(writer, "geobus_stage_features_total", stage="writer", direction="out")
    recorded = sample(writer, "geobus_rejections_recorded_total", stage="validator", reason=reason)
    assert stored + recorded == 7
    assert sample(writer, "geobus_writer_commit_seconds_count") >= 1
    assert sample(writer, "geobus_job_duration_seconds_count", status="successful") == 1
    assert sample(writer, "geobus_stage_dead_lettered_total", stage="writer", reason="error") == 0

    # Logs: every line of every process is one JSON object.
    await asyncio.to_thread(pipeline.stop)
    records: dict[str, list[dict[str, Any]]] = {}
    for name in pipeline.processes:
        lines = pipeline.log(name).splitlines()
        assert lines, name
        records[name] = [json.loads(line) for line in lines]
        for record in records[name]:
            assert {"ts", "level", "logger", "msg"} <= record.keys()
    rejected = [r for r in records["writer"] if r.get("feature_index") == 6]
    assert len(rejected) == 1, rejected
    (line,) = rejected
    assert line["reason"] == reason
    assert line["stage"] == "validator"
    assert line["coordinate"][:2] == [10.0, 95.0]
    assert line["job_id"] == job_id
    assert line["trace_id"] == TRACE_ID
    # For a person reading `pytest -s`: what the closing note quotes.
    print(
        f"\ntrace {TRACE_ID}: {len(messages)} messages from {sorted(s for s in stages if s)}"
        f"\nvalidator in={v_in:g} out={v_out:g} rejected={reasons}"
        f" | writer stored={stored:g} rejections recorded={recorded:g}"
        f"\nwriter log line: {json.dumps(line)}"
    )
