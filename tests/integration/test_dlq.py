"""geobus.dlq against the real RabbitMQ: listing keeps every dead letter, replay and purge work."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import shapely
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from google.protobuf.message import Message as ProtoMessage

from geobus import dlq
from geobus.broker import routing, wire
from geobus.broker.consumer import Redelivery, run_consumer
from geobus.broker.publisher import Publisher
from geobus.broker.topology import Topology, declare, delete, from_settings
from geobus.errors import PermanentError
from geobus.settings import Settings
from geobus.v1 import feature_pb2

pytestmark = pytest.mark.integration

STAGE = "validator"
BOWTIE = shapely.from_wkt("POLYGON ((0 0, 2 2, 2 0, 0 2, 0 0))")


def _batch(job_id: str, sequence: int) -> feature_pb2.FeatureBatch:
    geometries = [shapely.Point(1, 2), BOWTIE]
    return feature_pb2.FeatureBatch(
        job_id=job_id,
        sequence=sequence,
        crs="OGC:CRS84",
        geometry_encoding=feature_pb2.GEOMETRY_ENCODING_ISO_WKB,
        features=[
            feature_pb2.Feature(
                index=10 * sequence + i,
                id=feature_pb2.FeatureId(string_id=f"f{i}"),
                geometry=shapely.to_wkb(g),
                properties=b'{"big": 9007199254740993}',
            )
            for i, g in enumerate(geometries)
        ],
    )


@pytest.fixture
async def settings(amqp_url: str) -> AsyncIterator[Settings]:
    """Settings of a fresh prefix whose topology is declared, and deleted after."""
    settings = Settings.from_env(
        {"GEOBUS_AMQP_URL": amqp_url, "GEOBUS_PREFIX": f"t{uuid.uuid4().hex[:8]}"}
    )
    spec = from_settings(settings)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        await declare(await connection.channel(), spec)
        try:
            yield settings
        finally:
            await delete(await connection.channel(), spec)


async def _dead_letter(settings: Settings, spec: Topology) -> list[str]:
    """Fill the validator DLQ: 3 batches failing permanently, 1 rejected by the broker path."""
    ids = []
    async with await Publisher.connect(settings.amqp_url, spec) as publisher:

        async def fail(payload: ProtoMessage, message: AbstractIncomingMessage) -> None:
            raise PermanentError(f"transform crashed on {message.message_id}")

        for seq, redelivery in ((0, True), (1, True), (2, True), (3, False)):
            job = "job-dlq"
            ids.append(wire.message_id(job, routing.FEATURE_INGESTED, seq))
            stop = asyncio.Event()
            task = asyncio.create_task(
                run_consumer(
                    settings.amqp_url,
                    spec.stage_queue(STAGE),
                    fail,
                    prefetch=1,
                    stop=stop,
                    stage=STAGE,
                    redelivery=Redelivery(publisher, spec) if redelivery else None,
                )
            )
            await publisher.publish(
                spec.features_exchange,
                routing.FEATURE_INGESTED,
                _batch(job, seq),
                message_id=ids[-1],
                correlation_id=job,
                stage="ingress",
            )
            await _wait_count(settings, spec.dead_letter_queue(STAGE), seq + 1)
            stop.set()
            await asyncio.wait_for(task, 10)
    return ids


async def _wait_count(settings: Settings, name: str, expected: int) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        deadline = time.monotonic() + 10
        while True:
            queue = await channel.declare_queue(name, passive=True)
            if queue.declaration_result.message_count == expected:
                return
            assert time.monotonic() < deadline, f"{name} never held {expected}"
            await asyncio.sleep(0.05)


async def _ids_in_order(channel: AbstractChannel, settings: Settings) -> list[str | None]:
    seen: list[str | None] = []

    async def note(message: AbstractIncomingMessage, stage: str) -> bool:
        seen.append(message.message_id)
        return False

    await dlq.browse(channel, from_settings(settings), [STAGE], note)
    return seen


async def test_listing_groups_and_loses_nothing(settings: Settings) -> None:
    """ls counts by reason and error class; five listings later all four are there, in order."""
    spec = from_settings(settings)
    ids = await _dead_letter(settings, spec)
    listing = await dlq.list_dead_letters(settings)
    print(json.dumps(listing))
    assert listing[STAGE]["count"] == 4
    assert listing[STAGE]["groups"] == [
        {"reason": "error", "error_class": "PermanentError", "count": 3},
        {"reason": "rejected", "error_class": "-", "count": 1},
    ]
    assert listing["writer"] == {"count": 0, "groups": []}
    for _ in range(4):
        await dlq.list_dead_letters(settings)
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        assert await _ids_in_order(await connection.channel(), settings) == ids


async def test_show_decodes_features_and_finds_the_offending_coordinate(
    settings: Settings,
) -> None:
    """show: envelope, error, job, and per feature type, vertices, bbox and the bad vertex."""
    spec = from_settings(settings)
    ids = await _dead_letter(settings, spec)
    (document,) = await dlq.show(settings, ids[1])
    assert document["error"] == f"PermanentError: transform crashed on {ids[1]}"
    assert document["job_id"] == "job-dlq"
    assert document["envelope"]["original_routing_key"] == "feature.ingested"
    assert document["envelope"]["stage"] == "ingress"
    assert document["payload"]["sequence"] == 1
    point, bowtie = document["features"]
    assert point["geometry"] == {
        "type": "Point",
        "vertices": 1,
        "bbox": [1.0, 2.0, 1.0, 2.0],
        "validity": "Valid Geometry",
    }
    assert bowtie["index"] == 11
    assert bowtie["id"] == {"stringId": "f1"}
    assert bowtie["geometry"]["vertices"] == 5
    assert bowtie["geometry"]["offending_coordinate"] == [1.0, 1.0]
    assert (await dlq.list_dead_letters(settings))[STAGE]["count"] == 4
    assert await dlq.show(settings, "nope") == []


async def test_export_writes_the_features_with_their_error(
    settings: Settings, tmp_path: Path
) -> None:
    """export: a FeatureCollection of the 8 dead-lettered features, error in the properties."""
    spec = from_settings(settings)
    await _dead_letter(settings, spec)
    path = tmp_path / "dead.geojson"
    counts = await dlq.export_geojson(settings, path)
    assert counts == {"features": 8, "batches": 4, "other_messages": 0}
    collection: dict[str, Any] = json.loads(path.read_text())
    first = collection["features"][0]
    assert first["geometry"] == {"type": "Point", "coordinates": [1.0, 2.0]}
    assert first["properties"]["big"] == 9007199254740993
    assert first["properties"]["geobus_error"].startswith("PermanentError: transform crashed")
    assert first["properties"]["geobus_stage"] == STAGE
    assert collection["features"][-1]["properties"]["geobus_reason"] == "rejected"
    assert (await dlq.list_dead_letters(settings))[STAGE]["count"] == 4


async def test_replay_returns_one_message_to_its_stage_and_purge_empties(
    settings: Settings,
) -> None:
    """replay ID: back on the stage queue with replays 1, attempt 0; the rest stay; purge."""
    spec = from_settings(settings)
    ids = await _dead_letter(settings, spec)
    report = await dlq.replay(settings, ids[3])
    assert report.replayed == [ids[3]]
    assert report.failed == []
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(spec.stage_queue(STAGE), passive=True)
        replayed = await queue.get(no_ack=True, timeout=5)
        assert replayed.message_id == ids[3]
        assert replayed.routing_key == routing.FEATURE_INGESTED
        headers: Any = replayed.headers
        assert headers[wire.HEADER_REPLAYS] == 1
        assert headers[wire.HEADER_ATTEMPT] == 0
        assert wire.decode_message(replayed) == _batch("job-dlq", 3)
        assert await _ids_in_order(channel, settings) == ids[:3]
    all_report = await dlq.replay(settings, None)
    assert sorted(all_report.replayed) == sorted(ids[:3])
    await _wait_count(settings, spec.stage_queue(STAGE), 3)
    await dlq.replay(settings, None)  # nothing left: a no-op
    assert await dlq.purge(settings) == {"validator": 0, "reprojector": 0, "writer": 0}
