"""A publisher that returns only once RabbitMQ has taken responsibility for the message.

It owns one robust connection used for nothing but publishing: under a
memory or disk alarm the broker blocks publishing connections, and a
consumer sharing that connection would stop acking and deadlock its stage.
The channel has publisher confirms on and ``on_return_raises`` so that a
``mandatory`` message nobody is bound to raises instead of passing silently.

Errors are translated into geobus's tree where they enter:

- unroutable (``basic.return``) or too large → :class:`UnroutableError` /
  :class:`~geobus.errors.MessageError` (permanent: the same publish fails again);
- negative confirm (a full queue with ``x-overflow: reject-publish``),
  connection or channel loss, timeout → :class:`~geobus.errors.TransientError`.
  After a lost confirm the message may or may not have been routed: the
  caller retries and consumers deduplicate on ``message_id``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractRobustChannel, AbstractRobustConnection
from aiormq.exceptions import AMQPError, DeliveryError, PublishError
from google.protobuf.message import Message as ProtoMessage

from geobus import tracing
from geobus.broker import routing, wire
from geobus.broker.topology import Topology, ensure
from geobus.errors import MessageError, PermanentError, TransientError

log = logging.getLogger(__name__)

DEFAULT_CONFIRM_TIMEOUT = 30.0


class UnroutableError(MessageError):
    """The broker returned a mandatory message: no queue is bound to its routing key."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message for :meth:`Publisher.publish_many`."""

    exchange_name: str
    routing_key: str
    payload: ProtoMessage | bytes
    message_id: str
    correlation_id: str
    stage: str
    headers: Mapping[str, Any] | None = field(default=None)


class Publisher:
    """Publishes geobus messages with confirms; create with :meth:`connect`."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        channel: AbstractRobustChannel,
        topology: Topology,
        *,
        confirm_timeout: float,
        max_message_bytes: int | None,
    ) -> None:
        self._connection = connection
        self._channel = channel
        self._topology = topology
        self._timeout = confirm_timeout
        self._max_bytes = max_message_bytes
        self._exchanges: dict[str, AbstractExchange] = {}

    @classmethod
    async def connect(
        cls,
        amqp_url: str,
        topology: Topology,
        *,
        confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT,
        max_message_bytes: int | None = None,
        declare_topology: bool = True,
        passive: bool = False,
    ) -> Publisher:
        """Open the publishing connection and (by default) declare ``topology`` on it.

        Declaring is idempotent and asserts the broker's objects match this
        geobus; it raises ConfigurationError when they do not and
        TransientError when the broker is unreachable. With ``passive`` (a
        least-privilege user, ``GEOBUS_DECLARE_TOPOLOGY=false``) the topology
        is only checked to exist.
        """
        try:
            connection = await aio_pika.connect_robust(amqp_url)
        except (AMQPError, OSError) as exc:
            msg = f"cannot connect to RabbitMQ for publishing: {exc}"
            raise TransientError(msg) from exc
        try:
            if declare_topology:
                await ensure(connection, topology, declare_it=not passive)
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        except BaseException:
            await connection.close()
            raise
        return cls(
            connection,
            channel,
            topology,
            confirm_timeout=confirm_timeout,
            max_message_bytes=max_message_bytes,
        )

    @property
    def is_open(self) -> bool:
        """Whether the connection and channel are usable right now."""
        return not (self._connection.is_closed or self._channel.is_closed)

    @property
    def topology(self) -> Topology:
        """The topology this publisher publishes into."""
        return self._topology

    async def publish(
        self,
        exchange_name: str,
        routing_key: str,
        payload: ProtoMessage | bytes,
        *,
        message_id: str,
        correlation_id: str,
        stage: str,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        """Publish one message; return once the broker confirmed it.

        A serialized ``payload`` gets the type that ``routing_key`` carries
        (``routing.MESSAGE_TYPES``).
        """
        message = self._encode(
            Outgoing(
                exchange_name, routing_key, payload, message_id, correlation_id, stage, headers
            )
        )
        await self._send(
            exchange_name, routing_key, message, mandatory=self._topology.binds(routing_key)
        )

    async def publish_message(
        self, exchange_name: str, routing_key: str, message: aio_pika.Message
    ) -> None:
        """Publish an already built AMQP message, ``mandatory``; return once confirmed.

        For messages that travel on unchanged (retries, dead letters, replays):
        ``exchange_name`` may be ``""``, the default exchange, which routes by
        queue name.
        """
        if exchange_name and exchange_name not in {e.name for e in self._topology.exchanges}:
            msg = f"{exchange_name!r} is not an exchange of prefix {self._topology.prefix!r}"
            raise MessageError(msg)
        await self._send(exchange_name, routing_key, message, mandatory=True)

    async def _send(
        self, exchange_name: str, routing_key: str, message: aio_pika.Message, *, mandatory: bool
    ) -> None:
        message_id = message.message_id
        try:
            exchange = (
                self._channel.default_exchange
                if exchange_name == ""
                else await self._exchange(exchange_name)
            )
            await exchange.publish(message, routing_key, mandatory=mandatory, timeout=self._timeout)
        except PublishError as exc:
            msg = f"no queue is bound to {routing_key!r} on {exchange_name!r} ({message_id})"
            raise UnroutableError(msg) from exc
        except DeliveryError as exc:
            # A nack: with x-overflow reject-publish the target queue is full.
            msg = f"the broker refused {message_id} on {exchange_name!r} [{routing_key}]: {exc}"
            raise TransientError(msg) from exc
        except (TimeoutError, AMQPError, ConnectionError, OSError, RuntimeError) as exc:
            # RuntimeError covers aiormq's ChannelInvalidStateError (channel or
            # connection closed underneath, e.g. during a reconnect).
            msg = f"publishing {message_id} failed: {type(exc).__name__}: {exc}"
            raise TransientError(msg) from exc

    async def publish_many(self, messages: Sequence[Outgoing]) -> None:
        """Publish all ``messages`` concurrently; return once every confirm arrived.

        When some fail, the others still complete; then the first permanent
        error is raised, else the first transient one. Messages already
        confirmed stay published (consumers deduplicate on message_id).
        """
        results = await asyncio.gather(
            *(
                self.publish(
                    m.exchange_name,
                    m.routing_key,
                    m.payload,
                    message_id=m.message_id,
                    correlation_id=m.correlation_id,
                    stage=m.stage,
                    headers=m.headers,
                )
                for m in messages
            ),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        for error in errors:
            if not isinstance(error, Exception):
                raise error  # cancellation and the like
        for error in errors:
            if isinstance(error, PermanentError):
                raise error
        if errors:
            raise errors[0]

    async def close(self) -> None:
        """Close the channel and the connection."""
        if not self._connection.is_closed:
            await self._connection.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _encode(self, out: Outgoing) -> aio_pika.Message:
        if out.exchange_name not in {e.name for e in self._topology.exchanges}:
            # Publishing to a missing exchange would close the channel (404).
            msg = f"{out.exchange_name!r} is not an exchange of prefix {self._topology.prefix!r}"
            raise MessageError(msg)
        type_name = None
        if not isinstance(out.payload, ProtoMessage):
            type_name = routing.MESSAGE_TYPES.get(out.routing_key)
        message = wire.encode(
            out.payload,
            message_id=out.message_id,
            correlation_id=out.correlation_id,
            stage=out.stage,
            type_name=type_name,
            # The job's trace context, current while a stage handles its input.
            headers=tracing.inject(out.headers),
        )
        if self._max_bytes is not None and len(message.body) > self._max_bytes:
            # The broker would close the channel on an oversize message.
            msg = (
                f"{out.message_id} is {len(message.body)} bytes, "
                f"more than the {self._max_bytes} allowed"
            )
            raise MessageError(msg)
        return message

    async def _exchange(self, name: str) -> AbstractExchange:
        exchange = self._exchanges.get(name)
        if exchange is None:
            # ensure=False: the topology was declared; no round trip per exchange.
            exchange = await self._channel.get_exchange(name, ensure=False)
            self._exchanges[name] = exchange
        return exchange
