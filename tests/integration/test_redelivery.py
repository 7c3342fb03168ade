"""Retry through delay queues and dead-lettering with headers, against the real RabbitMQ."""

from __future__ import annotations

import asyncio
import contextlib
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
from geobus.broker.consumer import Handler, Redelivery, run_consumer
from geobus.broker.publisher import Publisher
from geobus.broker.topology import Topology, declare, delete, topology
from geobus.errors import PermanentError, TransientError
from geobus.v1 import feature_pb2

pytestmark = pytest.mark.integration

STAGE = "validator"


def _batch(job_id: str) -> feature_pb2.FeatureBatch:
    return feature_pb2.FeatureBatch(
        job_id=job_id,
        crs="OGC:CRS84",
        geometry_encoding=feature_pb2.GEOMETRY_ENCODING_ISO_WKB,
        features=[feature_pb2.Feature(index=0, geometry=shapely.to_wkb(shapely.Point(1, 2)))],
    )


@pytest.fixture
async def fast_topology(amqp_url: str) -> AsyncIterator[Topology]:
    """A topology with 0.2 s / 0.4 s retry levels under a random prefix, deleted after."""
    spec = topology(f"t{uuid.uuid4().hex[:8]}", delivery_limit=3, retry_delays=(0.2, 0.4))
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        await declare(await connection.channel(), spec)
        try:
            yield spec
        finally:
            await delete(await connection.channel(), spec)


@pytest.fixture
async def publisher(amqp_url: str, fast_topology: Topology) -> AsyncIterator[Publisher]:
    """A connected publisher on the fast topology."""
    async with await Publisher.connect(amqp_url, fast_topology) as connected:
        yield connected


@contextlib.asynccontextmanager
async def consuming(
    amqp_url: str, publisher: Publisher, spec: Topology, handle: Handler, max_attempts: int = 6
) -> AsyncIterator[None]:
    """The stage's consumer loop with redelivery, in the background."""
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_consumer(
            amqp_url,
            spec.stage_queue(STAGE),
            handle,
            prefetch=4,
            stop=stop,
            stage=STAGE,
            grace=5,
            redelivery=Redelivery(publisher, spec, max_attempts=max_attempts),
        )
    )
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _send(publisher: Publisher, spec: Topology, job: str) -> None:
    await publisher.publish(
        spec.features_exchange,
        routing.FEATURE_INGESTED,
        _batch(job),
        message_id=wire.message_id(job, routing.FEATURE_INGESTED, 0),
        correlation_id=job,
        stage="ingress",
    )


async def _get(channel: AbstractChannel, name: str, within: float = 10) -> AbstractIncomingMessage:
    queue = await channel.declare_queue(name, passive=True)
    deadline = time.monotonic() + within
    while (message := await queue.get(no_ack=True, fail=False)) is None:
        assert time.monotonic() < deadline, f"nothing on {name} within {within} s"
        await asyncio.sleep(0.05)
    return message


async def _count(channel: AbstractChannel, name: str) -> int:
    queue = await channel.declare_queue(name, passive=True)
    count = queue.declaration_result.message_count
    assert count is not None
    return count


async def test_transient_error_waits_in_the_delay_queue_then_succeeds(
    amqp_url: str, amqp_channel: AbstractChannel, publisher: Publisher, fast_topology: Topology
) -> None:
    """A TransientError goes through retry.<stage>.1 (≥ 0.16 s) and comes back as attempt 1."""
    seen: list[tuple[float, Any, Any]] = []
    done = asyncio.Event()

    async def handle(payload: ProtoMessage, message: AbstractIncomingMessage) -> None:
        headers = message.headers or {}
        seen.append((time.monotonic(), headers.get(wire.HEADER_ATTEMPT), message.routing_key))
        if len(seen) == 1:
            raise TransientError("database away")
        done.set()

    async with consuming(amqp_url, publisher, fast_topology, handle):
        await _send(publisher, fast_topology, "job-t")
        await asyncio.wait_for(done.wait(), 10)
    (t0, attempt0, key0), (t1, attempt1, key1) = seen
    assert (attempt0, key0) == (0, routing.FEATURE_INGESTED)
    # Back from the delay queue through the default exchange, by queue name.
    assert (attempt1, key1) == (1, fast_topology.stage_queue(STAGE))
    assert t1 - t0 >= 0.2 * 0.8 - 0.02
    assert await _count(amqp_channel, fast_topology.stage_queue(STAGE)) == 0
    assert await _count(amqp_channel, fast_topology.dead_letter_queue(STAGE)) == 0
    assert await _count(amqp_channel, fast_topology.retry_queue(STAGE, 1)) == 0


async def test_retries_exhausted_dead_letter_with_the_last_error(
    amqp_url: str, amqp_channel: AbstractChannel, publisher: Publisher, fast_topology: Topology
) -> None:
    """Always transient, max_attempts 3: three attempts, then the DLQ with reason and error."""
    attempts: list[int] = []

    async def handle(payload: ProtoMessage, message: AbstractIncomingMessage) -> None:
        attempts.append(wire.attempt(message))
        raise TransientError(f"database away (try {len(attempts)})")

    async with consuming(amqp_url, publisher, fast_topology, handle, max_attempts=3):
        await _send(publisher, fast_topology, "job-x")
        dead = await _get(amqp_channel, fast_topology.dead_letter_queue(STAGE))
    headers: Any = dead.headers
    print(f"attempts seen {attempts}; dead letter headers {sorted(headers)}")
    assert attempts == [0, 1, 2]
    assert headers["x-geobus-reason"] == "retries_exhausted"
    assert headers[wire.HEADER_EXCEPTION] == "TransientError: database away (try 3)"
    assert headers[wire.HEADER_ATTEMPT] == 3
    assert headers[wire.HEADER_ORIGINAL_EXCHANGE] == fast_topology.features_exchange
    assert headers[wire.HEADER_ORIGINAL_ROUTING_KEY] == routing.FEATURE_INGESTED
    assert dead.message_id == "job-x:feature.ingested:0"
    assert wire.decode_message(dead) == _batch("job-x")


async def test_permanent_error_dead_letters_a_copy_with_headers(
    amqp_url: str, amqp_channel: AbstractChannel, publisher: Publisher, fast_topology: Topology
) -> None:
    """A PermanentError: one attempt, the DLQ copy carries x-exception, stage and origin."""
    calls = 0

    async def handle(payload: ProtoMessage, message: AbstractIncomingMessage) -> None:
        nonlocal calls
        calls += 1
        raise PermanentError("polygon crashed GEOS")

    async with consuming(amqp_url, publisher, fast_topology, handle):
        await _send(publisher, fast_topology, "job-p")
        dead = await _get(amqp_channel, fast_topology.dead_letter_queue(STAGE))
    headers: Any = dead.headers
    assert calls == 1
    assert headers[wire.HEADER_EXCEPTION] == "PermanentError: polygon crashed GEOS"
    assert headers["x-geobus-reason"] == "error"
    assert headers[wire.HEADER_STAGE] == "ingress"
    assert headers[wire.HEADER_ATTEMPT] == 1
    assert "x-death" not in headers  # acked after the copy was confirmed, never rejected
    assert dead.correlation_id == "job-p"
    assert await _count(amqp_channel, fast_topology.stage_queue(STAGE)) == 0


async def test_unknown_type_is_dead_lettered_with_a_readable_reason(
    amqp_url: str, amqp_channel: AbstractChannel, publisher: Publisher, fast_topology: Topology
) -> None:
    """A message whose type geobus does not know lands in the DLQ saying so."""

    async def handle(payload: ProtoMessage, message: AbstractIncomingMessage) -> None:
        raise AssertionError("the handler must not see it")

    exchange = await amqp_channel.get_exchange(fast_topology.features_exchange)
    async with consuming(amqp_url, publisher, fast_topology, handle):
        await exchange.publish(
            aio_pika.Message(
                b"\x08\x01", content_type=wire.CONTENT_TYPE, type="acme.Thing", message_id="u1"
            ),
            routing.FEATURE_INGESTED,
        )
        dead = await _get(amqp_channel, fast_topology.dead_letter_queue(STAGE))
    headers: Any = dead.headers
    assert dead.message_id == "u1"
    assert headers[wire.HEADER_EXCEPTION] == (
        "MessageError: unknown message type 'acme.Thing' (not a geobus.v1 message)"
    )
    assert headers[wire.HEADER_STAGE] == STAGE


def _close_connections(client_name: str) -> int:
    """Close, from the broker's side, every connection named ``client_name``; how many."""
    out = subprocess.run(
        ["rabbitmqctl", "list_connections", "pid", "client_properties", "-q"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    pids = [line.split("\t")[0] for line in out.splitlines() if client_name in line]
    for pid in pids:
        subprocess.run(
            ["rabbitmqctl", "close_connection", pid, "test: broker-side close"],
            check=True,
            capture_output=True,
            timeout=60,
        )
    return len(pids)


async def test_consumer_comes_back_after_the_broker_closes_its_connection(
    amqp_url: str, publisher: Publisher, fast_topology: Topology
) -> None:
    """The robust connection reconnects and re-registers the consumer by itself."""
    got: list[str] = []
    arrived = asyncio.Event()

    async def handle(payload: ProtoMessage, message: AbstractIncomingMessage) -> None:
        assert message.message_id is not None
        got.append(message.message_id)
        arrived.set()

    name = f"geobus-test-{uuid.uuid4().hex[:8]}"
    url = f"{amqp_url}?name={name}"
    async with consuming(url, publisher, fast_topology, handle):
        await _send(publisher, fast_topology, "before")
        await asyncio.wait_for(arrived.wait(), 10)
        arrived.clear()
        closed = await asyncio.to_thread(_close_connections, name)
        assert closed == 1
        await asyncio.sleep(0.5)
        await _send(publisher, fast_topology, "after")
        await asyncio.wait_for(arrived.wait(), 20)
    assert got == ["before:feature.ingested:0", "after:feature.ingested:0"]
