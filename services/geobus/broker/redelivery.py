"""What becomes of a message whose processing failed, as data. Pure: no I/O.

:func:`disposition` decides from the outcome; the ``*_copy`` functions build
the message that carries the failed one on, keeping its body, ``type``,
``message_id`` and ``correlation_id`` so that it stays the same message:

- :func:`retry_copy` → a delay queue ``<prefix>.retry.<stage>.<n>`` (through
  the stage's retry exchange, which binds each level's queue under its
  name), which dead-letters it back to the stage
  after the level's delay; ``x-geobus-attempt`` counts the attempts made,
  because RabbitMQ 4.x ignores a client-set ``x-death`` and the copy is a new
  message to the quorum queue (its delivery count starts again at 0);
- :func:`dead_letter_copy` → ``<prefix>.dlx`` with key ``dlq.<stage>``,
  carrying the error (``x-exception``), why it died (``x-geobus-reason``)
  and where it was first published (``x-original-exchange`` /
  ``x-original-routing-key``);
- :func:`replay_copy` → back to that original exchange and routing key,
  attempts reset and ``x-geobus-replays`` incremented.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Mapping
from typing import Any

from aio_pika import DeliveryMode, Message
from aio_pika.abc import AbstractIncomingMessage, AbstractMessage

from geobus.broker import wire
from geobus.broker.topology import Topology, dead_letter_routing_key
from geobus.errors import MessageError, TransientError

HEADER_REASON = "x-geobus-reason"
REASON_ERROR = "error"
"""Dead-lettered by geobus: a permanent error, or an unexpected one (a bug)."""
REASON_RETRIES_EXHAUSTED = "retries_exhausted"
"""Dead-lettered by geobus: still failing transiently after the last attempt."""

DEFAULT_MAX_ATTEMPTS = 6
DEFAULT_JITTER = 0.2
# x-exception must fit, with every other header, in one AMQP frame (128 KiB
# by default); a traceback-sized message is plenty for a person.
MAX_EXCEPTION_BYTES = 8 * 1024

# Set by the broker or by geobus per hop; never carried over to the next one.
_HOP_HEADERS = ("x-delivery-count",)


class Disposition(enum.Enum):
    """What becomes of a delivered message."""

    ACK = "ack"
    RETRY = "retry"
    DEAD_LETTER = "dead-letter"


def disposition(
    error: Exception | None, attempt: int = 0, max_attempts: int = DEFAULT_MAX_ATTEMPTS
) -> Disposition:
    """The fate of a message whose processing ended with ``error`` (None: success).

    ``attempt`` is how many attempts came before this one (its
    ``x-geobus-attempt``); a transient failure of the ``max_attempts``-th
    attempt dead-letters the message.
    """
    if error is None:
        return Disposition.ACK
    if isinstance(error, TransientError):
        return Disposition.RETRY if attempt + 1 < max_attempts else Disposition.DEAD_LETTER
    # PermanentError, and anything unexpected: retrying a bug only burns the
    # delivery limit, and the dead letter keeps the message for a person.
    return Disposition.DEAD_LETTER


def exception_text(error: BaseException) -> str:
    """``"ErrorClass: message"``, cut to at most :data:`MAX_EXCEPTION_BYTES` of UTF-8."""
    text = f"{type(error).__name__}: {error}"
    encoded = text.encode()
    if len(encoded) <= MAX_EXCEPTION_BYTES:
        return text
    cut = encoded[: MAX_EXCEPTION_BYTES - 20].decode(errors="ignore")
    return cut + " … (truncated)"


def text_value(value: object) -> str | None:
    """A string field of an AMQP table, whether handed over as str or bytes."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else None


def header_text(headers: Mapping[str, Any] | None, name: str) -> str | None:
    """A string header (None when absent or not a string)."""
    return text_value((headers or {}).get(name))


def header_int(headers: Mapping[str, Any] | None, name: str) -> int:
    """A non-negative integer header (0 when absent or malformed)."""
    value = (headers or {}).get(name)
    return value if isinstance(value, int) and value >= 0 else 0


def retry_copy(
    message: AbstractIncomingMessage,
    error: Exception,
    *,
    stage: str,
    topology: Topology,
    jitter: float = DEFAULT_JITTER,
    uniform: Callable[[], float] = random.random,
) -> tuple[str, str, Message]:
    """(exchange, routing key, message) that retries ``message`` after the next back-off.

    Level n (1-based, the n-th retry) waits ``retry_delays[n-1]`` seconds
    (the last level repeats), shortened by up to ``jitter`` of it so that a
    burst of failures does not come back in one burst. The queue's TTL is
    the level's full delay: a message without an expiration still returns.
    """
    made = wire.attempt(message) + 1
    delay = topology.retry_delay(made)
    expiration = max(delay * (1.0 - jitter * uniform()), 0.001)
    headers = _failed_headers(message)
    headers[wire.HEADER_ATTEMPT] = made
    headers[wire.HEADER_EXCEPTION] = exception_text(error)
    copy = _copy(message, headers, expiration=expiration)
    return topology.retry_exchange(stage), topology.retry_queue(stage, made), copy


def dead_letter_copy(
    message: AbstractIncomingMessage,
    error: Exception,
    *,
    stage: str,
    topology: Topology,
    reason: str,
) -> tuple[str, str, Message]:
    """(exchange, routing key, message) that puts ``message`` in the stage's DLQ with its error."""
    headers = _failed_headers(message)
    headers[wire.HEADER_ATTEMPT] = wire.attempt(message) + 1
    headers[wire.HEADER_EXCEPTION] = exception_text(error)
    headers[HEADER_REASON] = reason
    # The stage that published it stays; a foreign message gets the stage it died in.
    headers.setdefault(wire.HEADER_STAGE, stage)
    return topology.dead_letter_exchange, dead_letter_routing_key(stage), _copy(message, headers)


def original_destination(message: AbstractMessage) -> tuple[str, str]:
    """Where ``message`` was first published: its x-original-* headers, else its x-death.

    Raises MessageError when neither says.
    """
    headers = message.headers or {}
    exchange = header_text(headers, wire.HEADER_ORIGINAL_EXCHANGE)
    key = header_text(headers, wire.HEADER_ORIGINAL_ROUTING_KEY)
    if exchange is not None and key is not None:
        return exchange, key
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[-1], Mapping):
        # The last entry is the oldest death: the hop from the original publish.
        first = deaths[-1]
        keys = first.get("routing-keys")
        exchange = text_value(first.get("exchange"))
        key = text_value(keys[0]) if isinstance(keys, list) and keys else None
        if exchange is not None and key is not None:
            return exchange, key
    msg = f"message {message.message_id!r} says neither where it came from nor how it died"
    raise MessageError(msg)


def replay_copy(message: AbstractMessage) -> tuple[str, str, Message]:
    """(exchange, routing key, message) that sends a dead letter back where it came from.

    The attempt counter starts again, ``x-geobus-replays`` grows by one (a
    replay that dies again is recognisable), the error of the previous death
    is dropped; ``x-death`` stays as history.
    """
    exchange, key = original_destination(message)
    headers = _carried_headers(message)
    headers[wire.HEADER_ORIGINAL_EXCHANGE] = exchange
    headers[wire.HEADER_ORIGINAL_ROUTING_KEY] = key
    for name in (wire.HEADER_EXCEPTION, HEADER_REASON):
        headers.pop(name, None)
    headers[wire.HEADER_ATTEMPT] = 0
    headers[wire.HEADER_REPLAYS] = header_int(headers, wire.HEADER_REPLAYS) + 1
    return exchange, key, _copy(message, headers)


def _carried_headers(message: AbstractMessage) -> dict[str, Any]:
    return {k: v for k, v in (message.headers or {}).items() if k not in _HOP_HEADERS}


def _failed_headers(message: AbstractIncomingMessage) -> dict[str, Any]:
    headers = _carried_headers(message)
    # Where it was first published survives any number of retries: a retried
    # delivery arrives from the default exchange, the first one does not.
    headers.setdefault(wire.HEADER_ORIGINAL_EXCHANGE, message.exchange or "")
    headers.setdefault(wire.HEADER_ORIGINAL_ROUTING_KEY, message.routing_key or "")
    return headers


def _copy(
    message: AbstractMessage, headers: dict[str, Any], *, expiration: float | None = None
) -> Message:
    # Not user_id (the broker checks it against the connection's user) and
    # not an expiration the original may carry (a dead letter must not expire).
    return Message(
        message.body,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=DeliveryMode.PERSISTENT,
        priority=message.priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        expiration=expiration,
        message_id=message.message_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )
