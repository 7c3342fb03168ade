"""Crash containment and per-feature isolation against the real broker and PostGIS.

A stage runs in this process with a transform that exits, segfaults or
hangs its worker process on marked features (tests/unit/faulty.py); the
writer's bisection runs against a PostgreSQL that refuses a feature.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psycopg
import pytest
from aio_pika.abc import AbstractChannel

from geobus.broker import routing, wire
from geobus.broker.publisher import Publisher
from geobus.broker.topology import Topology
from geobus.errors import PermanentError
from geobus.runtime import run_transform_stage
from geobus.settings import Settings
from geobus.store import open_store
from geobus.v1 import feature_pb2, rejection_pb2
from geobus.writer.refusals import write_isolating
from tests.integration.conftest import Pipeline
from tests.integration.test_broker import _count, _get, _wait_count
from tests.integration.test_pipeline import post, wait_final
from tests.unit import faulty

pytestmark = pytest.mark.integration

R = rejection_pb2.RejectReason


@pytest.fixture
async def validator(amqp_url: str, broker_topology: Topology) -> AsyncIterator[asyncio.Task[None]]:
    """A validator stage with the faulty transform, 2 worker processes, a 2 s time limit."""
    settings = Settings(
        amqp_url=amqp_url,
        prefix=broker_topology.prefix,
        delivery_limit=3,
        stage_workers=2,
        batch_timeout_s=2.0,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_transform_stage(
            settings,
            "validator",
            faulty.factory,
            output_key=routing.FEATURE_VALIDATED,
            stop=stop,
        )
    )
    yield task
    stop.set()
    await asyncio.wait_for(task, 30)


async def publish(publisher: Publisher, names: Topology, batch: feature_pb2.FeatureBatch) -> None:
    """Publish ``batch`` as the ingress does."""
    await publisher.publish(
        names.features_exchange,
        routing.FEATURE_INGESTED,
        batch,
        message_id=wire.message_id(batch.job_id, routing.FEATURE_INGESTED, batch.sequence),
        correlation_id=batch.job_id,
        stage="ingress",
    )


async def test_a_stage_rejects_the_features_that_kill_or_hang_its_worker_and_goes_on(
    amqp_url: str,
    broker_topology: Topology,
    amqp_channel: AbstractChannel,
    validator: asyncio.Task[None],
) -> None:
    """Segfault, exit and hang on 3 features: those rejected with why, the rest validated."""
    batches = [
        faulty.marked_batch({7: "segv"}, 32),
        faulty.marked_batch({0: "exit", 20: "hang"}, 24),
        faulty.marked_batch({}, 16),
    ]
    for sequence, batch in enumerate(batches):
        batch.sequence = sequence
    async with await Publisher.connect(amqp_url, broker_topology) as publisher:
        for batch in batches:
            await publish(publisher, broker_topology, batch)
    validated = {}
    for _ in batches:
        message = await _get(amqp_channel, broker_topology.stage_queue("reprojector"), 60)
        out = wire.decode_message(message)
        assert isinstance(out, feature_pb2.FeatureBatch)
        validated[out.sequence] = [f.index for f in out.features]
    assert validated == {
        0: [i for i in range(32) if i != 7],
        1: [i for i in range(24) if i not in (0, 20)],
        2: list(range(16)),
    }
    rejected = {}
    for _ in range(2):
        message = await _get(amqp_channel, broker_topology.stage_queue("writer"), 10)
        rb = wire.decode_message(message)
        assert isinstance(rb, rejection_pb2.RejectionBatch)
        for r in rb.rejections:
            assert r.reason == R.REJECT_REASON_PROCESSING_FAILED
            assert r.stage == "validator"
            rejected[(rb.sequence, r.feature_index)] = r.message
    print("rejected:", json.dumps({f"{k[0]}/{k[1]}": v for k, v in rejected.items()}, indent=1))
    assert rejected.keys() == {(0, 7), (1, 0), (1, 20)}
    assert "crashed (killed by SIGSEGV)" in rejected[(0, 7)]
    assert "crashed (exit code 3)" in rejected[(1, 0)]
    assert "did not finish within 2 s" in rejected[(1, 20)]
    assert await _count(amqp_channel, broker_topology.dead_letter_queue("validator")) == 0
    assert not validator.done()


async def test_a_batch_nothing_of_which_goes_through_is_dead_lettered(
    amqp_url: str,
    broker_topology: Topology,
    amqp_channel: AbstractChannel,
    validator: asyncio.Task[None],
) -> None:
    """A one-feature batch that crashes its worker is dead-lettered with why; the stage goes on."""
    lone = faulty.marked_batch({0: "exit"}, 1)
    fine = faulty.marked_batch({}, 3)
    fine.sequence = 1
    async with await Publisher.connect(amqp_url, broker_topology) as publisher:
        await publish(publisher, broker_topology, lone)
        await publish(publisher, broker_topology, fine)
    dlq = broker_topology.dead_letter_queue("validator")
    await _wait_count(amqp_channel, dlq, 1, within=30)
    dead = await _get(amqp_channel, dlq)
    headers = dead.headers or {}
    print("x-exception:", headers.get("x-exception"))
    assert "crashed (exit code 3)" in str(headers.get("x-exception"))
    message = await _get(amqp_channel, broker_topology.stage_queue("reprojector"), 30)
    out = wire.decode_message(message)
    assert isinstance(out, feature_pb2.FeatureBatch)
    assert len(out.features) == 3


def test_the_writer_rejects_only_the_feature_postgresql_refuses(fresh_pg_url: str) -> None:
    """A \\u0000 in one feature's properties: that feature rejected, the rest stored once."""
    store = open_store(Settings(database_url=fresh_pg_url))
    store.ensure_schema()
    batch = faulty.marked_batch({13: "nul\u0000here"}, 40)
    batch.sequence = 5
    try:
        for _delivery in range(2):  # the second one is a redelivery
            result = asyncio.run(write_isolating(store, batch, "writer"))
            assert [f.index for f in result.batch.features] == [i for i in range(40) if i != 13]
            assert result.rejections is not None
            (rejection,) = result.rejections.rejections
            assert rejection.feature_index == 13
            assert rejection.stage == "writer"
            assert rejection.reason == R.REJECT_REASON_PROCESSING_FAILED
            assert "PostgreSQL refused the data" in rejection.message
        with pytest.raises(PermanentError, match="refused every feature"):
            asyncio.run(write_isolating(store, faulty.marked_batch({0: "\u0000"}, 1), "writer"))
    finally:
        store.close()
    with psycopg.connect(fresh_pg_url) as conn:
        count, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT feature_index) FROM geobus.features"
        ).fetchone() or (0, 0)
        (ledger,) = conn.execute(
            "SELECT sum(stored) FROM geobus.batches WHERE job_id = 'job-f'"
        ).fetchone() or (0,)
    print(f"stored rows {count}, distinct {distinct}, ledger {ledger}")
    assert (count, distinct, ledger) == (39, 39, 39)


@pytest.mark.slow
def test_a_feature_postgresql_refuses_is_rejected_by_the_writer_end_to_end(
    pipeline: Pipeline, fresh_pg_url: str, tmp_path: Path
) -> None:
    """Through the whole pipeline: the \\u0000 feature rejected by stage writer, 59 stored once."""
    features = [
        {
            "type": "Feature",
            "id": f"f{i}",
            "properties": {"name": "nul\u0000" if i == 42 else f"n{i}"},
            "geometry": {"type": "Point", "coordinates": [i, i / 2]},
        }
        for i in range(60)
    ]
    document = tmp_path / "nul.geojson"
    document.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    pipeline.env["GEOBUS_DATABASE_URL"] = fresh_pg_url
    pipeline.env["GEOBUS_BATCH_MAX_FEATURES"] = "25"
    pipeline.start_all()
    job = wait_final(pipeline, post(pipeline, document)["jobID"])
    print("counts", job["counts"])
    assert job["counts"]["stored"] == 59
    assert job["counts"]["rejected"] == 1
    url = f"{pipeline.base_url}/v1/jobs/{job['jobID']}/rejects"
    (reject,) = httpx.get(url, timeout=10).json()["rejects"]
    print("reject", reject)
    assert (reject["index"], reject["id"], reject["stage"]) == (42, "f42", "writer")
    assert reject["reason"] == "processing_failed"
    assert "PostgreSQL refused the data" in reject["message"]
    with psycopg.connect(fresh_pg_url) as conn:
        rows, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT feature_index) FROM geobus.features"
        ).fetchone() or (0, 0)
    assert rows == distinct == 59
