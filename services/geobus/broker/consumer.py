"""The consumer loop every stage runs: decode, call the stage's handler, settle.

A stage supplies ``handle(payload, message)``, which does the work and
publishes its outputs (awaiting their confirms). This module decides what
happens to the input afterwards, in one place (:func:`disposition` and
:func:`settle`):

=====================================  ==========================================
outcome of decode + ``handle``         what the broker is told
=====================================  ==========================================
returned                               ``ack``
MessageError / PermanentError, or any  a copy with ``x-exception`` etc. to the
other Exception (a bug, logged with    stage's DLQ, confirmed, then ``ack``
its traceback)                         (if that publish fails: ``reject``, and
                                       the queue's own DLX keeps it)
TransientError                         a copy to the delay queue of the next
                                       back-off level, confirmed, then ``ack``;
                                       after ``max_attempts`` → DLQ as above
                                       (if that publish fails: back off in
                                       place, then ``nack(requeue=True)``)
cancelled (shutdown past the grace)    nothing: the channel closes, the broker
                                       requeues the message
=====================================  ==========================================

The copies go out on the stage's publisher (:class:`Redelivery`), never on
the consuming connection: the publisher's connection may be blocked by a
resource alarm while acks must keep flowing. The loop's connection is
robust; it keeps the queue object, and with it the consumer, referenced, so
that aio-pika re-registers the consumer after a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from aiormq.exceptions import AMQPError, ChannelNotFoundEntity
from google.protobuf.message import Message as ProtoMessage

from geobus import logs, metrics, tracing
from geobus.broker import wire
from geobus.broker.redelivery import (
    DEFAULT_JITTER,
    DEFAULT_MAX_ATTEMPTS,
    REASON_ERROR,
    REASON_RETRIES_EXHAUSTED,
    Disposition,
    dead_letter_copy,
    disposition,
    retry_copy,
)
from geobus.broker.topology import Topology
from geobus.errors import ConfigurationError, GeobusError, PermanentError, TransientError

log = logging.getLogger(__name__)

Handler = Callable[[ProtoMessage, AbstractIncomingMessage], Awaitable[None]]
"""What a stage does with one decoded message; it publishes its outputs itself."""

DEFAULT_GRACE = 30.0
RETRY_BACKOFF_BASE = 0.5
RETRY_BACKOFF_MAX = 5.0


class Republisher(Protocol):
    """What settling needs of a publisher (:class:`~geobus.broker.publisher.Publisher`)."""

    async def publish_message(
        self, exchange_name: str, routing_key: str, message: aio_pika.Message
    ) -> None:
        """Publish ``message`` mandatory and return once the broker confirmed it."""


@dataclass(frozen=True, slots=True)
class Redelivery:
    """Where failed messages go: delay queues and the DLX of ``topology``, via ``publisher``."""

    publisher: Republisher
    topology: Topology
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    jitter: float = DEFAULT_JITTER
    uniform: Callable[[], float] = field(default=random.random)


__all__ = [
    "Disposition",
    "Handler",
    "Redelivery",
    "Republisher",
    "disposition",
    "run_consumer",
    "settle",
]


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
    redelivery: Redelivery | None = None,
) -> Disposition:
    """Tell the broker the fate of ``message`` (the one place that acks, rejects or nacks).

    Without ``redelivery`` (no publisher at hand) only the fallbacks are
    left: ``reject`` into the queue's DLX, and back-off + requeue.
    """
    attempt = wire.attempt(message)
    max_attempts = redelivery.max_attempts if redelivery else DEFAULT_MAX_ATTEMPTS
    decision = disposition(error, attempt, max_attempts)
    ident = f"{stage}: message {message.message_id!r} ({message.type}, attempt {attempt + 1})"
    try:
        if decision is Disposition.ACK:
            await message.ack()
        elif decision is Disposition.DEAD_LETTER:
            assert error is not None
            await _dead_letter(message, error, ident, stage, redelivery)
        else:
            assert error is not None
            await _retry(message, error, ident, stage, stop, redelivery)
    except (AMQPError, ConnectionError, RuntimeError) as exc:
        # The channel went away: the broker requeues the unacked message itself.
        log.warning("%s could not be settled (%s): the broker will redeliver it", ident, exc)
    else:
        metrics.observe_settled(stage, decision.value, _dead_letter_reason(error))
    return decision


def _dead_letter_reason(error: Exception | None) -> str:
    return REASON_RETRIES_EXHAUSTED if isinstance(error, TransientError) else REASON_ERROR


async def _dead_letter(
    message: AbstractIncomingMessage,
    error: Exception,
    ident: str,
    stage: str,
    redelivery: Redelivery | None,
) -> None:
    reason = _dead_letter_reason(error)
    # The one log line of a dead letter: why, and which message.
    extra = {"reason": reason, "message_id": message.message_id, "error": type(error).__name__}
    if isinstance(error, TransientError):
        log.error(
            "%s dead-lettered: still failing after the last attempt: %s", ident, error, extra=extra
        )
    elif isinstance(error, PermanentError):
        log.warning("%s dead-lettered: %s", ident, error, extra=extra)
    else:
        log.error("%s dead-lettered after an unexpected error", ident, exc_info=error, extra=extra)
    if redelivery is not None:
        exchange, key, copy = dead_letter_copy(
            message, error, stage=stage, topology=redelivery.topology, reason=reason
        )
        try:
            await redelivery.publisher.publish_message(exchange, key, copy)
        except GeobusError as exc:
            log.warning("%s: the dead letter could not be published (%s); rejecting", ident, exc)
        else:
            # Only now: until the copy is confirmed the original is the one copy.
            await message.ack()
            return
    # The queue's dead-letter settings route it to <prefix>.dlq.<stage>, with
    # x-death but without geobus's headers.
    await message.reject(requeue=False)


async def _retry(
    message: AbstractIncomingMessage,
    error: Exception,
    ident: str,
    stage: str,
    stop: asyncio.Event,
    redelivery: Redelivery | None,
) -> None:
    if redelivery is not None:
        exchange, key, copy = retry_copy(
            message,
            error,
            stage=stage,
            topology=redelivery.topology,
            jitter=redelivery.jitter,
            uniform=redelivery.uniform,
        )
        try:
            await redelivery.publisher.publish_message(exchange, key, copy)
        except GeobusError as exc:
            log.warning("%s: the retry could not be published (%s)", ident, exc)
        else:
            log.warning(
                "%s failed transiently (%s); retrying within %.1fs via %s",
                ident,
                error,
                redelivery.topology.retry_delay(wire.attempt(message) + 1),
                key,
            )
            await message.ack()
            return
    # Last resort (no publisher, or it is blocked too): wait here, then
    # requeue; this spends one of the quorum queue's delivery limit.
    delay = retry_delay(message)
    log.warning("%s failed transiently (%s); requeueing in %.1fs", ident, error, delay)
    # A stopping consumer requeues at once rather than delay shutdown.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)
    await message.nack(requeue=True)


class _Deliveries:
    """The callback given to ``basic.consume``; tracks handlers that are still running."""

    def __init__(
        self,
        handle: Handler,
        stage: str,
        stop: asyncio.Event,
        redelivery: Redelivery | None,
    ) -> None:
        self._handle = handle
        self._stage = stage
        self._stop = stop
        self._redelivery = redelivery
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
            # Log lines and published messages carry the job and its trace.
            with (
                logs.bind(stage=self._stage, job_id=message.correlation_id),
                tracing.span(
                    f"geobus {self._stage}",
                    (message.headers or {}).get(tracing.HEADER),
                    stage=self._stage,
                ),
            ):
                error: Exception | None = None
                try:
                    await self._handle(wire.decode_message(message), message)
                except Exception as exc:  # every outcome goes to settle()
                    error = exc
                await settle(
                    message, error, stage=self._stage, stop=self._stop, redelivery=self._redelivery
                )
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
    redelivery: Redelivery | None = None,
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
    deliveries = _Deliveries(handle, stage, stop, redelivery)
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
