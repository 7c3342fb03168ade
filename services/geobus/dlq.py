"""``geobus dlq``: list, show, export, replay and purge dead letters without losing one.

Reading is non-destructive: every dead-letter queue is read with
``basic.get`` and manual acknowledgement, at most as many messages as it held
when the read began (later arrivals wait for the next read), holding each
unacknowledged; at the end every message not replayed is returned with one
``basic.nack(multiple, requeue)``. A quorum queue puts returned messages
back in front in their original order (checked on 3.10), so a listing
neither reorders nor loses them; if the tool dies midway, its channel closes
and the broker returns them just the same. Each read adds one to the quorum
queue's delivery count, which is why the DLQs carry an explicit, practically
infinite delivery limit (see :mod:`geobus.broker.topology`).

A replay republishes the dead letter to where it was first published
(:func:`geobus.broker.redelivery.replay_copy`) on a confirming publisher and
acks the dead letter only after the broker confirmed the copy: a failed
replay leaves it where it was.

The admin HTTP endpoints (:mod:`geobus.ingress.admin`) call these same
functions, one at a time and bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiormq.exceptions import AMQPError, ChannelNotFoundEntity

from geobus import deadletters
from geobus.broker.publisher import Publisher
from geobus.broker.redelivery import replay_copy
from geobus.broker.topology import STAGES, Topology, from_settings
from geobus.codec.geojson import feature_texts
from geobus.errors import ConfigurationError, GeobusError, TransientError
from geobus.settings import Settings
from geobus.v1 import feature_pb2

CONNECT_TIMEOUT = 10.0
"""Seconds to wait for the broker to accept a connection."""

Visit = Callable[[AbstractIncomingMessage, str], Awaitable[bool]]
"""Called per dead letter with its stage; True when it was settled (acked) by the visitor."""


@dataclass
class ReplayReport:
    """What ``geobus dlq replay`` did."""

    replayed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def stages_of(stage: str | None) -> tuple[str, ...]:
    """The stages a command covers: one, or all."""
    if stage is None:
        return STAGES
    if stage not in STAGES:
        msg = f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}"
        raise ConfigurationError(msg)
    return (stage,)


@contextlib.asynccontextmanager
async def _channel(settings: Settings) -> AsyncIterator[AbstractChannel]:
    try:
        connection = await aio_pika.connect(settings.amqp_url, timeout=CONNECT_TIMEOUT)
    except (AMQPError, OSError) as exc:
        msg = f"cannot connect to RabbitMQ: {exc}"
        raise TransientError(msg) from exc
    async with connection:
        yield await connection.channel()


async def browse(
    channel: AbstractChannel, topology: Topology, stages: Iterable[str], visit: Visit
) -> None:
    """Show every dead letter of ``stages`` to ``visit``; return the unsettled ones in order."""
    for stage in stages:
        name = topology.dead_letter_queue(stage)
        try:
            queue = await channel.declare_queue(name, passive=True)
        except ChannelNotFoundEntity as exc:
            msg = f"queue {name!r} does not exist: declare the topology first (geobus topology)"
            raise ConfigurationError(msg) from exc
        held = queue.declaration_result.message_count or 0
        last_unsettled: AbstractIncomingMessage | None = None
        try:
            for _ in range(held):
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                if not await visit(message, stage):
                    last_unsettled = message
        finally:
            if last_unsettled is not None and not channel.is_closed:
                # Returns every unsettled message up to it (the acked ones are gone).
                await last_unsettled.nack(multiple=True, requeue=True)


async def list_dead_letters(settings: Settings, stage: str | None = None) -> dict[str, Any]:
    """Per stage: the count of dead letters and the count per (reason, error class)."""
    topology = from_settings(settings)
    groups: dict[str, Counter[tuple[str, str]]] = {s: Counter() for s in stages_of(stage)}

    async def count(message: AbstractIncomingMessage, stage: str) -> bool:
        head = deadletters.headline(message, stage)
        groups[stage][(head.reason, head.error_class)] += 1
        return False

    async with _channel(settings) as channel:
        await browse(channel, topology, groups, count)
    return {
        s: {
            "count": sum(counter.values()),
            "groups": [
                {"reason": reason, "error_class": cls, "count": n}
                for (reason, cls), n in sorted(counter.items(), key=lambda kv: -kv[1])
            ],
        }
        for s, counter in groups.items()
    }


async def show(
    settings: Settings, message_id: str, stage: str | None = None
) -> list[dict[str, Any]]:
    """The :func:`~geobus.deadletters.show_document` of each dead letter with ``message_id``."""
    found: list[dict[str, Any]] = []

    async def pick(message: AbstractIncomingMessage, stage: str) -> bool:
        if message.message_id == message_id:
            # Decoding and summarising thousands of geometries is CPU work:
            # off the event loop, which may be serving the ingress.
            found.append(await asyncio.to_thread(deadletters.show_document, message, stage))
        return False

    async with _channel(settings) as channel:
        await browse(channel, from_settings(settings), stages_of(stage), pick)
    return found


async def export_geojson(
    settings: Settings, path: Path, stage: str | None = None
) -> dict[str, int]:
    """Write the features of every dead-lettered FeatureBatch to ``path`` as a FeatureCollection.

    Returns the counts of features and of messages with and without features.
    """
    counts = {"features": 0, "batches": 0, "other_messages": 0}
    with path.open("wb") as out:
        out.write(b'{"type":"FeatureCollection","features":[')

        async def write(message: AbstractIncomingMessage, stage: str) -> bool:
            payload, _ = deadletters.payload_of(message)
            if not isinstance(payload, feature_pb2.FeatureBatch):
                counts["other_messages"] += 1
                return False
            batch = deadletters.exportable(payload, deadletters.headline(message, stage))
            for text in feature_texts(batch):
                out.write(text if counts["features"] == 0 else b"," + text)
                counts["features"] += 1
            counts["batches"] += 1
            return False

        async with _channel(settings) as channel:
            await browse(channel, from_settings(settings), stages_of(stage), write)
        out.write(b"]}\n")
    return counts


async def replay(
    settings: Settings, message_id: str | None, stage: str | None = None
) -> ReplayReport:
    """Republish the dead letters with ``message_id`` (None: all) to where they came from."""
    topology = from_settings(settings)
    report = ReplayReport()
    publisher = await Publisher.connect(
        settings.amqp_url,
        topology,
        max_message_bytes=settings.max_message_bytes,
        declare_topology=False,
    )

    async def send(message: AbstractIncomingMessage, stage: str) -> bool:
        if message_id is not None and message.message_id != message_id:
            return False
        ident = message.message_id or "(no message id)"
        try:
            exchange, key, copy = replay_copy(message)
            await publisher.publish_message(exchange, key, copy)
        except GeobusError as exc:
            report.failed.append((ident, str(exc)))
            return False
        # Only after the confirm: until then the dead letter is the one copy.
        await message.ack()
        report.replayed.append(ident)
        return True

    async with publisher, _channel(settings) as channel:
        await browse(channel, topology, stages_of(stage), send)
    return report


async def purge(settings: Settings, stage: str | None = None) -> dict[str, int]:
    """Delete every dead letter of ``stage`` (None: all stages); the count purged per stage."""
    topology = from_settings(settings)
    purged: dict[str, int] = {}
    async with _channel(settings) as channel:
        for s in stages_of(stage):
            name = topology.dead_letter_queue(s)
            try:
                queue = await channel.declare_queue(name, passive=True)
            except ChannelNotFoundEntity as exc:
                msg = f"queue {name!r} does not exist: declare the topology first"
                raise ConfigurationError(msg) from exc
            result = await queue.purge()
            purged[s] = int(getattr(result, "message_count", 0) or 0)
    return purged
