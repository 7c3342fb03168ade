"""The consumer loop every stage runs: decode, call the stage's handler, settle.

A stage supplies ``handle(payload, message)``, which does the work and
publishes its outputs (awaiting their confirms). This module decides what
happens to the input afterwards, in one place (:func:`disposition` and
:func:`settle`):

=====================================  ==========================================
outcome of decode + ``handle``         what the broker is told
=====================================  ==========================================
returned                               ``ack``
MessageError / PermanentError          ``reject(requeue=False)`` → stage DLQ
any other Exception (a bug)            same, with the traceback logged
TransientError                         back-off, then ``nack(requeue=True)``
cancelled (shutdown past the grace)    nothing: the channel closes, the broker
                                       requeues the message
=====================================  ==========================================

The loop runs on its own robust connection: the publisher's connection may
be blocked by a resource alarm while acks must keep flowing.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from aiormq.exceptions import AMQPError, ChannelNotFoundEntity
from google.protobuf.message import Message as ProtoMessage

from geobus.broker import wire
from geobus.errors import ConfigurationError, PermanentError, TransientError

log = logging.getLogger(__name__)

Handler = Callable[[ProtoMessage, AbstractIncomingMessage], Awaitable[None]]
"""What a stage does with one decoded message; it publishes its outputs itself."""

DEFAULT_GRACE = 30.0
RETRY_BACKOFF_BASE = 0.5
RETRY_BACKOFF_MAX = 5.0


class Disposition(enum.Enum):
    """What becomes of a delivered message."""

    ACK = "ack"
    RETRY = "retry"
    DEAD_LETTER = "dead-letter"


def disposition(error: Exception | None) -> Disposition:
    """The fate of a message whose processing ended with ``error`` (None: success)."""
    if error is None:
        return Disposition.ACK
    if isinstance(error, TransientError):
        return Disposition.RETRY
    # PermanentError, and anything unexpected: retrying a bug only burns the
    # delivery limit, and the dead letter keeps the message for a person.
    return Disposition.DEAD_LETTER


def retry_delay(message: AbstractIncomingMessage) -> float:
    """Seconds to wait before requeueing, growing with the quorum queue's delivery count."""
    count = (message.headers or {}).get("x-delivery-count")
    deliveries = count if isinstance(count, int) and count >= 0 else 0
    return float(min(RETRY_BACKOFF_BASE * 2**deliveries, RETRY_BACKOFF_MAX))


async def settle(
    message: AbstractIncomingMessage,
    error: Exception | None,
    *,
    stage: str,
    stop: asyncio.Event,
) -> Disposition:
    """Tell the broker the fate of ``message`` (the one place that acks, rejects or nacks)."""
    decision = disposition(error)
    ident = f"{stage}: message {message.message_id!r} ({message.type})"
    try:
        if decision is Disposition.ACK:
            await message.ack()
        elif decision is Disposition.DEAD_LETTER:
            if isinstance(error, PermanentError):
                log.warning("%s dead-lettered: %s", ident, error)
            else:
                log.error("%s dead-lettered after an unexpected error", ident, exc_info=error)
            # The queue's dead-letter settings route it to <prefix>.dlq.<stage>.
            await message.reject(requeue=False)
        else:
            # TODO(issue 4): replace this in-place back-off with delay queues
            # (exponential TTL queues that dead-letter back to the stage), and
            # republish to the DLQ with x-exception instead of reject().
            delay = retry_delay(message)
            log.warning("%s failed transiently (%s); retrying in %.1fs", ident, error, delay)
            # A stopping consumer requeues at once rather than delay shutdown.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            await message.nack(requeue=True)
    except (AMQPError, ConnectionError, RuntimeError) as exc:
        # The channel went away: the broker requeues the unacked message itself.
        log.warning("%s could not be settled (%s): the broker will redeliver it", ident, exc)
    return decision


class _Deliveries:
    """The callback given to ``basic.consume``; tracks handlers that are still running."""

    def __init__(self, handle: Handler, stage: str, stop: asyncio.Event) -> None:
        self._handle = handle
        self._stage = stage
        self._stop = stop
        self.running: set[asyncio.Task[object]] = set()

    async def __call__(self, message: AbstractIncomingMessage) -> None:
        if self._stop.is_set():
            # Delivered between basic.cancel and cancel-ok: leave it unacked,
            # the broker requeues it when the channel closes.
            return
        task = asyncio.current_task()
        if task is not None:
            self.running.add(task)
        try:
            error: Exception | None = None
            try:
                await self._handle(wire.decode_message(message), message)
            except Exception as exc:  # every outcome goes to settle()
                error = exc
            await settle(message, error, stage=self._stage, stop=self._stop)
        finally:
            if task is not None:
                self.running.discard(task)


async def run_consumer(
    amqp_url: str,
    queue_name: str,
    handle: Handler,
    *,
    prefetch: int,
    stop: asyncio.Event,
    stage: str,
    grace: float = DEFAULT_GRACE,
) -> None:
    """Consume ``queue_name`` with ``handle`` until ``stop`` is set, then shut down cleanly.

    On stop: cancel the consumer, give running handlers ``grace`` seconds to
    finish and settle, cancel the rest (their messages return to the queue),
    close channel and connection. Raises TransientError when the broker
    cannot be reached at start and ConfigurationError when the queue does
    not exist (declare the topology first).
    """
    try:
        connection = await aio_pika.connect_robust(amqp_url)
    except (AMQPError, OSError) as exc:
        msg = f"cannot connect to RabbitMQ for consuming: {exc}"
        raise TransientError(msg) from exc
    deliveries = _Deliveries(handle, stage, stop)
    try:
        channel = await connection.channel()
        # Per consumer, not global: quorum queues refuse global QoS.
        await channel.set_qos(prefetch_count=prefetch)
        try:
            queue = await channel.declare_queue(queue_name, passive=True)
        except ChannelNotFoundEntity as exc:
            msg = f"queue {queue_name!r} does not exist: declare the topology first"
            raise ConfigurationError(msg) from exc
        # The robust queue holds the consumer so that it is restored after a
        # reconnect; `queue` stays referenced until we return.
        tag = await queue.consume(deliveries)
        log.info("%s: consuming %s (prefetch %d)", stage, queue_name, prefetch)
        await stop.wait()
        await _drain(queue, tag, deliveries, grace, stage)
    finally:
        await connection.close()
    log.info("%s: stopped consuming %s", stage, queue_name)


async def _drain(
    queue: AbstractQueue, tag: str, deliveries: _Deliveries, grace: float, stage: str
) -> None:
    try:
        await queue.cancel(tag)
    except (AMQPError, ConnectionError, RuntimeError) as exc:
        log.warning("%s: basic.cancel failed (%s); closing anyway", stage, exc)
    if deliveries.running:
        _, pending = await asyncio.wait(set(deliveries.running), timeout=grace)
        if pending:
            log.warning(
                "%s: %d handler(s) still running after %.1fs; their messages go back to the queue",
                stage,
                len(pending),
                grace,
            )
            for task in pending:
                task.cancel()
            await asyncio.wait(pending)
