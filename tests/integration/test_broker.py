"""The broker runtime against the real RabbitMQ: topology, confirming publisher, consumer loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
import shapely
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from google.protobuf.message import Message as ProtoMessage

from geobus.broker import routing, wire
from geobus.broker.consumer import Handler, run_consumer
from geobus.broker.publisher import Outgoing, Publisher, UnroutableError
from geobus.broker.topology import Topology, declare, topology
from geobus.errors import ConfigurationError, MessageError, PermanentError, TransientError
from geobus.v1 import feature_pb2, job_pb2, rejection_pb2

pytestmark = pytest.mark.integration

STAGE = "validator"


def _batch(job_id: str, sequence: int = 0) -> feature_pb2.FeatureBatch:
    return feature_pb2.FeatureBatch(
        job_id=job_id,
        sequence=sequence,
        crs="OGC:CRS84",
        collection="things",
        features=[
            feature_pb2.Feature(
                index=7,
                id=feature_pb2.FeatureId(string_id="a"),
                geometry=shapely.to_wkb(shapely.Point(1.5, 2.25)),
                properties=b'{"n": 9007199254740993}',
            )
        ],
    )


async def _publish_batch(publisher: Publisher, names: Topology, job_id: str, seq: int = 0) -> None:
    await publisher.publish(
        names.features_exchange,
        routing.FEATURE_INGESTED,
        _batch(job_id, seq),
        message_id=wire.message_id(job_id, routing.FEATURE_INGESTED, seq),
        correlation_id=job_id,
        stage="ingress",
    )


async def _get(
    channel: AbstractChannel, queue_name: str, within: float = 5.0
) -> AbstractIncomingMessage:
    """The next message of ``queue_name`` (consumed), waiting up to ``within`` seconds."""
    queue = await channel.declare_queue(queue_name, passive=True)
    deadline = time.monotonic() + within
    while (message := await queue.get(no_ack=True, fail=False)) is None:
        assert time.monotonic() < deadline, f"no message on {queue_name} within {within}s"
        await asyncio.sleep(0.05)
    return message


async def _count(channel: AbstractChannel, queue_name: str) -> int:
    """Messages ready in ``queue_name``."""
    queue = await channel.declare_queue(queue_name, passive=True)
    assert queue.declaration_result.message_count is not None
    return queue.declaration_result.message_count


async def _wait_count(
    channel: AbstractChannel, queue_name: str, expected: int, within: float = 5.0
) -> None:
    deadline = time.monotonic() + within
    while (count := await _count(channel, queue_name)) != expected:
        assert time.monotonic() < deadline, f"{queue_name} holds {count}, expected {expected}"
        await asyncio.sleep(0.05)


@pytest.fixture
async def publisher(amqp_url: str, broker_topology: Topology) -> AsyncIterator[Publisher]:
    """A connected publisher on the test topology."""
    async with await Publisher.connect(amqp_url, broker_topology) as connected:
        yield connected


@contextlib.asynccontextmanager
async def consuming(
    amqp_url: str, queue_name: str, handle: Handler, *, grace: float = 5.0
) -> AsyncIterator[tuple[asyncio.Event, asyncio.Task[None]]]:
    """Run the consumer loop in the background; stop it and wait for it on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_consumer(amqp_url, queue_name, handle, prefetch=4, stop=stop, stage=STAGE, grace=grace)
    )
    try:
        yield stop, task
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def _queue_arguments(name: str) -> dict[str, Any]:
    out = subprocess.run(
        ["rabbitmqctl", "list_queues", "name", "type", "arguments", "--formatter", "json", "-q"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    for row in json.loads(out):
        if row["name"] == name:
            return {"x-queue-type-listed": row["type"]} | {k: v for k, _, v in row["arguments"]}
    raise AssertionError(f"queue {name} not listed by rabbitmqctl")


# -- topology -------------------------------------------------------------------


async def test_declare_is_idempotent_and_sets_the_queue_arguments(
    amqp_channel: AbstractChannel, broker_topology: Topology
) -> None:
    """Declaring twice succeeds and the broker holds quorum queues with the DLX arguments."""
    await declare(amqp_channel, broker_topology)
    prefix = broker_topology.prefix
    args = await asyncio.to_thread(_queue_arguments, f"{prefix}.validator")
    assert args == {
        "x-queue-type-listed": "quorum",
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": f"{prefix}.dlx",
        "x-dead-letter-routing-key": "dlq.validator",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-delivery-limit": 3,
    }
    dlq = await asyncio.to_thread(_queue_arguments, f"{prefix}.dlq.writer")
    assert dlq == {
        "x-queue-type-listed": "quorum",
        "x-queue-type": "quorum",
        "x-delivery-limit": 2**31 - 1,
    }


async def test_declare_with_other_arguments_fails_clearly(
    amqp_channel: AbstractChannel, broker_topology: Topology
) -> None:
    """A delivery limit other than the broker's is refused with ConfigurationError."""
    with pytest.raises(ConfigurationError, match="other settings"):
        await declare(amqp_channel, topology(broker_topology.prefix, delivery_limit=5))


async def test_writer_queue_receives_reprojected_rejected_and_sealed(
    amqp_channel: AbstractChannel, publisher: Publisher, broker_topology: Topology
) -> None:
    """The writer gets feature.reprojected, feature.rejected, job.sealed; bytes get their type."""
    job = str(uuid.uuid4())
    sealed = job_pb2.JobSealed(job_id=job, features_total=1, batches_total=1)
    rejected = rejection_pb2.RejectionBatch(job_id=job)
    await publisher.publish_many(
        [
            Outgoing(
                broker_topology.features_exchange,
                routing.FEATURE_REPROJECTED,
                _batch(job),
                wire.message_id(job, routing.FEATURE_REPROJECTED, 0),
                job,
                "reprojector",
            ),
            Outgoing(
                broker_topology.features_exchange,
                routing.FEATURE_REJECTED,
                rejected.SerializeToString(),
                wire.message_id(job, routing.FEATURE_REJECTED, 0),
                job,
                "validator",
            ),
            Outgoing(
                broker_topology.jobs_exchange,
                routing.JOB_SEALED,
                sealed,
                wire.message_id(job, routing.JOB_SEALED, 0),
                job,
                "ingress",
            ),
        ]
    )
    queue = broker_topology.stage_queue("writer")
    types = {(await _get(amqp_channel, queue)).type for _ in range(3)}
    assert types == {"geobus.v1.FeatureBatch", "geobus.v1.RejectionBatch", "geobus.v1.JobSealed"}
    assert await _count(amqp_channel, broker_topology.stage_queue("validator")) == 0


# -- publisher ------------------------------------------------------------------


async def test_published_batch_arrives_with_its_properties(
    amqp_channel: AbstractChannel, publisher: Publisher, broker_topology: Topology
) -> None:
    """A FeatureBatch on feature.ingested reaches the validator queue, persistent and decodable."""
    job = str(uuid.uuid4())
    await _publish_batch(publisher, broker_topology, job, 3)
    message = await _get(amqp_channel, broker_topology.stage_queue("validator"))
    assert message.content_type == "application/x-protobuf"
    assert message.type == "geobus.v1.FeatureBatch"
    assert message.message_id == f"{job}:feature.ingested:3"
    assert message.correlation_id == job
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.timestamp is not None
    headers = {k: v for k, v in (message.headers or {}).items() if k.startswith("x-geobus-")}
    assert headers == {
        "x-geobus-schema": "geobus.v1",
        "x-geobus-stage": "ingress",
        "x-geobus-attempt": 0,
    }
    assert wire.decode_message(message) == _batch(job, 3)


async def test_unroutable_publish_raises_and_the_channel_survives(
    amqp_channel: AbstractChannel, publisher: Publisher, broker_topology: Topology
) -> None:
    """A key geobus consumes but whose queue is gone raises UnroutableError; later ones work."""
    job = str(uuid.uuid4())
    queue = broker_topology.stage_queue("reprojector")
    await amqp_channel.queue_delete(queue, if_unused=False, if_empty=False)
    with pytest.raises(UnroutableError, match=r"feature\.validated"):
        await publisher.publish(
            broker_topology.features_exchange,
            routing.FEATURE_VALIDATED,
            _batch(job),
            message_id=wire.message_id(job, routing.FEATURE_VALIDATED, 0),
            correlation_id=job,
            stage="validator",
        )
    assert isinstance(UnroutableError("x"), PermanentError)
    await _publish_batch(publisher, broker_topology, job)
    assert publisher.is_open
    await _wait_count(amqp_channel, broker_topology.stage_queue("validator"), 1)


async def test_events_for_outside_consumers_need_no_listener(
    publisher: Publisher, broker_topology: Topology
) -> None:
    """feature.stored and job.completed are published even when nobody is bound to them."""
    job = str(uuid.uuid4())
    await publisher.publish(
        broker_topology.features_exchange,
        routing.FEATURE_STORED,
        _batch(job),
        message_id=wire.message_id(job, routing.FEATURE_STORED, 0),
        correlation_id=job,
        stage="writer",
    )
    assert publisher.is_open


async def test_publish_to_a_foreign_exchange_is_refused_before_the_broker(
    publisher: Publisher, broker_topology: Topology
) -> None:
    """An exchange outside the topology raises MessageError and leaves the channel open."""
    with pytest.raises(MessageError, match="not an exchange"):
        await publisher.publish(
            "nobody.features",
            routing.FEATURE_INGESTED,
            _batch("j"),
            message_id="j:feature.ingested:0",
            correlation_id="j",
            stage="ingress",
        )
    assert publisher.is_open


async def test_publish_many_confirms_every_message(
    amqp_channel: AbstractChannel, publisher: Publisher, broker_topology: Topology
) -> None:
    """publish_many returns once all messages are confirmed: they are all in the queue."""
    job = str(uuid.uuid4())
    exchange = broker_topology.features_exchange
    await publisher.publish_many(
        [
            Outgoing(
                exchange,
                routing.FEATURE_INGESTED,
                _batch(job, seq),
                wire.message_id(job, routing.FEATURE_INGESTED, seq),
                job,
                "ingress",
            )
            for seq in range(20)
        ]
    )
    assert await _count(amqp_channel, broker_topology.stage_queue("validator")) == 20


# -- consumer loop --------------------------------------------------------------


async def test_successful_handler_acks(
    amqp_url: str, amqp_channel: AbstractChannel, publisher: Publisher, broker_topology: Topology
) -> None:
    """A handler that returns gets its message acked: queue and DLQ stay empty."""
    seen: list[ProtoMessage] = []
    done = asyncio.Event()

    async def handle(payload: ProtoMessage, message: AbstractIncomingMessage) -> None:
        seen.append(payload)
        done.set()

    job = str(uuid.uuid4())
    async with consuming(amqp_url, broker_topology.stage_queue(STAGE), handle):
        await _publish_batch(publisher, broker_topology, job)
        await asyncio.wait_for(done.wait(), 5)
    assert seen == [_batch(job)]
    assert await _count(amqp_channel, broker_topology.stage_queue(STAGE)) == 0
    assert await _count(amqp_channel, broker_topology.dead_letter_queue(STAGE)) == 0


async def test_permanent_error_dead_letters_to_the_stage_dlq(
    amqp_url: str, amqp_channel: AbstractChannel, publisher: Publisher, broker_topology: Topology
) -> None:
    """A PermanentError sends the message to <prefix>.dlq.validator with x-death reason rejected."""

    async def handle(payload: ProtoMessage, message: AbstractIncomingMessage) -> None:
        raise PermanentError("cannot ever work")

    job = str(uuid.uuid4())
    async with consuming(amqp_url, broker_topology.stage_queue(STAGE), handle):
        await _publish_batch(publisher, broker_topology, job)
        dead = await _get(amqp_channel, broker_topology.dead_letter_queue(STAGE))
    assert dead.message_id == f"{job}:feature.ingested:0"
    deaths: Any = dead.headers["x-death"]
    death = deaths[0]
    assert death["reason"] == "rejected"
    assert death["queue"] == broker_topology.stage_queue(STAGE)
    assert wire.decode_message(dead) == _batch(job)
    assert await _count(amqp_channel, broker_topology.stage_queue(STAGE)) == 0


async def test_undecodable_body_is_dead_lettered_without_calling_the_handler(
    amqp_url: str, amqp_channel: AbstractChannel, broker_topology: Topology
) -> None:
    """A body that is not the announced Protobuf type goes to the DLQ; the handler never runs."""
    calls = 0

    async def handle(payload: ProtoMessage, message: AbstractIncomingMessage) -> None:
        nonlocal calls
        calls += 1

    exchange = await amqp_channel.get_exchange(broker_topology.features_exchange)
    garbage = aio_pika.Message(
        b"\xff\xff\xff\xff not protobuf",
        content_type=wire.CONTENT_TYPE,
        type="geobus.v1.FeatureBatch",
        message_id="garbage",
    )
    async with consuming(amqp_url, broker_topology.stage_queue(STAGE), handle):
        await exchange.publish(garbage, routing.FEATURE_INGESTED)
        dead = await _get(amqp_channel, broker_topology.dead_letter_queue(STAGE))
    assert dead.message_id == "garbage"
    assert calls == 0


async def test_transient_error_is_retried_then_acked(
    amqp_url: str, amqp_channel: AbstractChannel, publisher: Publisher, broker_topology: Topology
) -> None:
    """A TransientError requeues the message; the second delivery succeeds and is acked."""
    deliveries: list[Any] = []
    done = asyncio.Event()

    async def handle(payload: ProtoMessage, message: AbstractIncomingMessage) -> None:
        deliveries.append((message.headers or {}).get("x-delivery-count"))
        if len(deliveries) == 1:
            raise TransientError("database away")
        done.set()

    async with consuming(amqp_url, broker_topology.stage_queue(STAGE), handle):
        await _publish_batch(publisher, broker_topology, str(uuid.uuid4()))
        await asyncio.wait_for(done.wait(), 5)
    assert deliveries == [None, 1]
    assert await _count(amqp_channel, broker_topology.stage_queue(STAGE)) == 0
    assert await _count(amqp_channel, broker_topology.dead_letter_queue(STAGE)) == 0


async def test_stop_lets_a_running_handler_finish_and_ack(
    amqp_url: str,
    amqp_channel: AbstractChannel,
    publisher: Publisher,
    broker_topology: Topology,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Setting stop mid-handler: run_consumer returns within a second, after the handler acked."""
    started, finished = asyncio.Event(), asyncio.Event()

    async def handle(payload: ProtoMessage, message: AbstractIncomingMessage) -> None:
        started.set()
        await asyncio.sleep(0.3)
        finished.set()

    async with consuming(amqp_url, broker_topology.stage_queue(STAGE), handle) as (stop, task):
        await _publish_batch(publisher, broker_topology, str(uuid.uuid4()))
        await asyncio.wait_for(started.wait(), 5)
        stop.set()
        began = time.monotonic()
        await asyncio.wait_for(asyncio.shield(task), 1.0)
        elapsed = time.monotonic() - began
    assert finished.is_set()
    assert elapsed < 1.0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert await _count(amqp_channel, broker_topology.stage_queue(STAGE)) == 0
    assert await _count(amqp_channel, broker_topology.dead_letter_queue(STAGE)) == 0


async def test_stop_past_the_grace_returns_the_message_to_the_queue(
    amqp_url: str,
    amqp_channel: AbstractChannel,
    publisher: Publisher,
    broker_topology: Topology,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler outliving the grace period is cancelled; its message stays in the queue."""
    started = asyncio.Event()

    async def handle(payload: ProtoMessage, message: AbstractIncomingMessage) -> None:
        started.set()
        await asyncio.sleep(30)

    queue = broker_topology.stage_queue(STAGE)
    async with consuming(amqp_url, queue, handle, grace=0.2) as (stop, task):
        await _publish_batch(publisher, broker_topology, str(uuid.uuid4()))
        await asyncio.wait_for(started.wait(), 5)
        stop.set()
        await asyncio.wait_for(asyncio.shield(task), 1.0)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    await _wait_count(amqp_channel, queue, 1)
    assert await _count(amqp_channel, broker_topology.dead_letter_queue(STAGE)) == 0


async def test_consuming_a_missing_queue_fails_clearly(amqp_url: str) -> None:
    """run_consumer on an undeclared queue raises ConfigurationError instead of hanging."""
    with pytest.raises(ConfigurationError, match="declare the topology"):
        await run_consumer(
            amqp_url,
            f"missing-{uuid.uuid4().hex}",
            _never,
            prefetch=1,
            stop=asyncio.Event(),
            stage=STAGE,
        )


async def _never(payload: ProtoMessage, message: AbstractIncomingMessage) -> None:
    raise AssertionError("no message expected")
