"""Running a stage: connections, the consume loop, and shutdown on signals.

A stage is a pure transform (``FeatureBatch`` → ``StageResult``) plus what
this module gives it: a consumer on its own connection, a confirming
publisher on another (RabbitMQ blocks publishing connections under a memory
or disk alarm; a shared one would stop consuming too), and a clean stop on
SIGINT/SIGTERM that finishes in-flight batches before closing.

A transform stage's CPU work runs in worker processes
(:class:`~geobus.stagerunner.StageRunner`), where a crash or a hang is
contained and the guilty features are isolated; the pool is started before
consuming and stopped after the consumer has drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable

from aio_pika.abc import AbstractIncomingMessage
from google.protobuf.message import Message

from geobus import logs, metrics
from geobus.broker import routing
from geobus.broker.consumer import Redelivery, run_consumer
from geobus.broker.publisher import Publisher
from geobus.broker.topology import Topology, declare_from_settings
from geobus.broker.wire import message_id
from geobus.errors import MessageError
from geobus.settings import Settings
from geobus.stage import StageResult
from geobus.stagerunner import StageRunner, TransformFactory
from geobus.v1 import feature_pb2

log = logging.getLogger(__name__)

Runner = Callable[[feature_pb2.FeatureBatch, bytes], Awaitable[StageResult]]
"""Transforms a batch, given with its serialized form (the message body)."""
Handler = Callable[[Message, AbstractIncomingMessage], Awaitable[None]]

# Batches in flight per stage process: enough to keep both cores busy while
# one batch waits for confirms, small enough that a crash re-delivers little
# (every redelivery spends one of the quorum queue's delivery limit).
PREFETCH = 4


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (installed on the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def publish_result(
    publisher: Publisher,
    topology: Topology,
    result: StageResult,
    *,
    stage: str,
    output_key: str,
) -> None:
    """Publish a stage's output batch and rejections; return after both are confirmed."""
    batch = result.batch
    sends = []
    if result.has_features:
        sends.append(
            publisher.publish(
                topology.features_exchange,
                output_key,
                # The bytes a worker sent (or the input's, unchanged): not encoded again.
                result.encoded if result.encoded is not None else batch,
                message_id=message_id(batch.job_id, output_key, batch.sequence),
                correlation_id=batch.job_id,
                stage=stage,
            )
        )
    if result.rejections is not None and len(result.rejections.rejections):
        key = routing.FEATURE_REJECTED
        sends.append(
            publisher.publish(
                topology.features_exchange,
                key,
                result.rejections,
                # Rejections of one batch by different stages must not share an id.
                message_id=message_id(batch.job_id, f"{key}.{stage}", batch.sequence),
                correlation_id=batch.job_id,
                stage=stage,
            )
        )
    await asyncio.gather(*sends)


def transform_handler(
    runner: Runner,
    publisher: Publisher,
    topology: Topology,
    *,
    stage: str,
    output_key: str,
) -> Handler:
    """The consumer callback of a transform stage: decode, transform off the loop, publish."""

    async def handle(payload: Message, message: AbstractIncomingMessage) -> None:
        if not isinstance(payload, feature_pb2.FeatureBatch):
            msg = f"the {stage} takes geobus.v1.FeatureBatch, not {payload.DESCRIPTOR.full_name}"
            raise MessageError(msg)
        with logs.bind(batch=payload.sequence):
            started = metrics.now()
            result = await runner(payload, message.body)
            # Counted here, from the result the worker process sent back.
            metrics.observe_batch(
                stage,
                payload,
                result.batch,
                result.rejections,
                metrics.now() - started,
                # The batch came back as it went in: the stage repaired nothing.
                fixed=0 if result.batch is payload else None,
            )
            await publish_result(publisher, topology, result, stage=stage, output_key=output_key)

    return handle


async def run_transform_stage(
    settings: Settings,
    stage: str,
    factory: TransformFactory,
    *,
    output_key: str,
    stop: asyncio.Event | None = None,
) -> None:
    """Run a transform stage: worker processes for ``factory``'s transform, then consume."""
    stop = stop or stop_on_signals()
    runner = StageRunner(
        factory,
        stage=stage,
        workers=settings.stage_workers,
        time_limit=settings.batch_timeout_s,
        stopping=stop.is_set,
    )
    await runner.start()
    try:

        def make_handler(publisher: Publisher, topology: Topology) -> Handler:
            return transform_handler(
                runner, publisher, topology, stage=stage, output_key=output_key
            )

        await run_stage(settings, stage, make_handler, stop)
    finally:
        # After the consumer drained: no batch is in a worker any more.
        await runner.close()


async def run_stage(
    settings: Settings,
    stage: str,
    make_handler: Callable[[Publisher, Topology], Handler],
    stop: asyncio.Event | None = None,
) -> None:
    """Declare the topology, connect, and consume the stage's queue until ``stop`` is set."""
    stop = stop or stop_on_signals()
    # Declared (or, GEOBUS_DECLARE_TOPOLOGY=false, checked) once, not again
    # on the publisher's connection.
    topology = await declare_from_settings(settings)
    publisher = await Publisher.connect(settings.amqp_url, topology, declare_topology=False)
    try:
        log.info("%s consuming %s", stage, topology.stage_queue(stage))
        await run_consumer(
            settings.amqp_url,
            topology.stage_queue(stage),
            make_handler(publisher, topology),
            prefetch=PREFETCH,
            stop=stop,
            stage=stage,
            redelivery=Redelivery(publisher, topology, max_attempts=settings.max_attempts),
        )
    finally:
        with contextlib.suppress(Exception):
            await publisher.close()
