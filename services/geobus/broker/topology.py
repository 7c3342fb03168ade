"""The broker topology of geobus as typed data, and the code that declares it.

Every exchange, queue, binding and ``x-`` argument lives in :func:`topology`,
built from a name prefix so that tests and tenants run side by side. The
same value is declared at start-up (idempotently: a second declaration with
equal arguments is a no-op, one with different arguments fails loudly),
printed by ``geobus topology`` and deleted by test fixtures.

Stage queues are quorum queues: replicated, with a delivery limit that turns
a message that keeps crashing its consumer into a dead letter, and
at-least-once dead-lettering so that the dead letter itself is not lost.
Each stage dead-letters to its own queue ``<prefix>.dlq.<stage>`` through the
topic exchange ``<prefix>.dlx``: ``x-dead-letter-routing-key`` overrides the
original routing key, so one exchange serves every stage.

Transient failures are retried through delay queues, one per stage and
back-off level: ``<prefix>.retry.<stage>.<n>`` holds a message for its TTL
(``x-message-ttl``, the level's delay; a shorter per-message ``expiration``
adds jitter) and then dead-letters it, at least once, through the default
exchange straight back into ``<prefix>.<stage>``. They are quorum queues:
RabbitMQ 3.10+ supports message TTL on them, and at-least-once
dead-lettering (which classic queues lack) means an expiring retry is never
dropped on its way back. Nobody consumes them; each stage publishes its
retries to its own direct exchange ``<prefix>.retry.<stage>``, where every
level's queue is bound under its own name. (Not through the default
exchange: a user who may write to ``amq.default`` may put a message into
*any* queue of the vhost, which a least-privilege user must not; see
:mod:`geobus.broker.permissions`.)

``<prefix>.canary`` is a fanout exchange with nothing bound: the ingress
publishes a throw-away message there every second to notice a blocked
broker (:mod:`geobus.ingress.monitor`); the broker drops and confirms it.

The topology is declared by a user that may configure it (``geobus
topology``; or every process at start-up while ``GEOBUS_DECLARE_TOPOLOGY``
is on, the default). With ``GEOBUS_DECLARE_TOPOLOGY=false`` the services
only check with passive declares, which need no permission, that their
exchanges and queues exist, and fail with a clear message when one is
missing.

Dead-letter queues carry an explicit, very high delivery limit: ``geobus dlq
ls`` reads them with ``basic.get`` and returns every message (each read adds
one to the quorum queue's delivery count), and RabbitMQ 4.x would otherwise
apply its default limit of 20 and drop dead letters after 20 listings.
(``-1``, 4.x's "unlimited", is not an option: 3.10 takes it literally and
drops every returned message.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, ExchangeType
from aiormq.exceptions import (
    AMQPConnectionError,
    ChannelAccessRefused,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    ProbableAuthenticationError,
)
from pamqp.common import FieldTable

from geobus.broker import routing
from geobus.errors import ConfigurationError, TransientError
from geobus.settings import Settings

DEFAULT_DELIVERY_LIMIT = 10
DEFAULT_RETRY_DELAYS: tuple[float, ...] = (1.0, 5.0, 30.0, 120.0, 600.0)
"""Seconds a transient failure waits before its 1st, 2nd, … retry (the last level repeats)."""
DEAD_LETTER_DELIVERY_LIMIT = 2**31 - 1
"""Delivery limit of the dead-letter queues: in effect none, on 3.x and 4.x alike."""

VALIDATOR = "validator"
REPROJECTOR = "reprojector"
WRITER = "writer"
STAGES = (VALIDATOR, REPROJECTOR, WRITER)
"""The stages that own a queue, in pipeline order."""

ArgumentValue = str | int


@dataclass(frozen=True, slots=True)
class ExchangeSpec:
    """A durable exchange."""

    name: str
    type: ExchangeType = ExchangeType.TOPIC
    durable: bool = True


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A durable queue and its ``x-`` arguments (kept as pairs: the spec stays hashable)."""

    name: str
    arguments: tuple[tuple[str, ArgumentValue], ...] = ()
    durable: bool = True

    @property
    def argument_table(self) -> dict[str, ArgumentValue]:
        """The arguments as the AMQP table sent with ``queue.declare``."""
        return dict(self.arguments)


@dataclass(frozen=True, slots=True)
class BindingSpec:
    """``queue`` receives what ``exchange`` routes with ``routing_key``."""

    queue: str
    exchange: str
    routing_key: str


@dataclass(frozen=True, slots=True)
class Topology:
    """Every exchange, queue and binding of one prefix."""

    prefix: str
    exchanges: tuple[ExchangeSpec, ...]
    queues: tuple[QueueSpec, ...]
    bindings: tuple[BindingSpec, ...]
    retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS

    @property
    def features_exchange(self) -> str:
        """The topic exchange of ``feature.*`` messages."""
        return features_exchange(self.prefix)

    @property
    def jobs_exchange(self) -> str:
        """The topic exchange of ``job.*`` messages."""
        return jobs_exchange(self.prefix)

    @property
    def dead_letter_exchange(self) -> str:
        """The exchange every stage queue dead-letters to."""
        return dead_letter_exchange(self.prefix)

    @property
    def canary_exchange(self) -> str:
        """The exchange with nothing bound that the ingress's broker monitor publishes to."""
        return canary_exchange(self.prefix)

    def retry_exchange(self, stage: str) -> str:
        """The direct exchange a stage publishes its retries to."""
        _check_stage(stage)
        return retry_exchange(self.prefix, stage)

    def stage_queue(self, stage: str) -> str:
        """The queue a stage consumes."""
        _check_stage(stage)
        return stage_queue(self.prefix, stage)

    def dead_letter_queue(self, stage: str) -> str:
        """The queue holding the dead letters of a stage."""
        _check_stage(stage)
        return dead_letter_queue(self.prefix, stage)

    def retry_queue(self, stage: str, level: int) -> str:
        """The delay queue of back-off ``level`` (1-based; past the last, the last)."""
        _check_stage(stage)
        if level < 1:
            msg = f"retry levels start at 1, got {level}"
            raise ValueError(msg)
        return retry_queue(self.prefix, stage, min(level, len(self.retry_delays)))

    def retry_delay(self, level: int) -> float:
        """Seconds a message waits at back-off ``level`` (1-based; past the last, the last)."""
        return self.retry_delays[min(max(level, 1), len(self.retry_delays)) - 1]

    def queue(self, name: str) -> QueueSpec:
        """The spec of the queue called ``name``."""
        for spec in self.queues:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def binds(self, routing_key: str) -> bool:
        """Whether a geobus queue consumes ``routing_key``.

        Such messages must reach a queue (published ``mandatory``); the others
        (``feature.stored``, ``job.accepted``, ``job.completed``,
        ``job.failed``) are events for consumers outside geobus and may have
        no listener at all.
        """
        return any(b.routing_key == routing_key for b in self.bindings)

    def exchange_for(self, routing_key: str) -> str:
        """The exchange a message with ``routing_key`` is published to."""
        if routing_key.startswith("feature."):
            return self.features_exchange
        if routing_key.startswith("job."):
            return self.jobs_exchange
        msg = f"no geobus exchange routes {routing_key!r}"
        raise ValueError(msg)


def features_exchange(prefix: str) -> str:
    """``<prefix>.features``."""
    return f"{prefix}.features"


def jobs_exchange(prefix: str) -> str:
    """``<prefix>.jobs``."""
    return f"{prefix}.jobs"


def dead_letter_exchange(prefix: str) -> str:
    """``<prefix>.dlx``."""
    return f"{prefix}.dlx"


def canary_exchange(prefix: str) -> str:
    """``<prefix>.canary``."""
    return f"{prefix}.canary"


def retry_exchange(prefix: str, stage: str) -> str:
    """``<prefix>.retry.<stage>``."""
    return f"{prefix}.retry.{stage}"


def observer_queue(prefix: str, name: str) -> str:
    """``<prefix>.observer.<name>``: an exclusive queue of a job-event listener (``geobus up``).

    Named by the client: aio-pika's robust channels name an unnamed queue
    themselves (``amq_<hex>``), so it is not ``amq.gen-…`` either way.
    """
    return f"{prefix}.observer.{name}"


def stage_queue(prefix: str, stage: str) -> str:
    """``<prefix>.<stage>``."""
    return f"{prefix}.{stage}"


def dead_letter_queue(prefix: str, stage: str) -> str:
    """``<prefix>.dlq.<stage>``."""
    return f"{prefix}.dlq.{stage}"


def retry_queue(prefix: str, stage: str, level: int) -> str:
    """``<prefix>.retry.<stage>.<level>``."""
    return f"{prefix}.retry.{stage}.{level}"


def dead_letter_routing_key(stage: str) -> str:
    """``dlq.<stage>``: the key a stage's dead letters carry on the dead-letter exchange."""
    return f"dlq.{stage}"


def _check_stage(stage: str) -> None:
    if stage not in STAGES:
        msg = f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}"
        raise ValueError(msg)


def topology(
    prefix: str,
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT,
    retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS,
) -> Topology:
    """The whole topology of ``prefix``; pure, nothing is declared."""
    if delivery_limit <= 0:
        msg = f"delivery_limit must be positive, got {delivery_limit}"
        raise ValueError(msg)
    if not retry_delays or any(d <= 0 for d in retry_delays):
        msg = f"retry_delays must be one or more positive numbers, got {retry_delays}"
        raise ValueError(msg)
    features, jobs, dlx = (
        features_exchange(prefix),
        jobs_exchange(prefix),
        dead_letter_exchange(prefix),
    )
    inputs: Mapping[str, tuple[tuple[str, str], ...]] = {
        VALIDATOR: ((features, routing.FEATURE_INGESTED),),
        REPROJECTOR: ((features, routing.FEATURE_VALIDATED),),
        # The writer takes every kind of message that ends in the store and
        # dispatches on the AMQP type property.
        WRITER: (
            (features, routing.FEATURE_REPROJECTED),
            (features, routing.FEATURE_REJECTED),
            (jobs, routing.JOB_SEALED),
        ),
    }
    queues: list[QueueSpec] = []
    bindings: list[BindingSpec] = []
    for stage in STAGES:
        name = stage_queue(prefix, stage)
        queues.append(
            QueueSpec(
                name,
                (
                    ("x-queue-type", "quorum"),
                    ("x-dead-letter-exchange", dlx),
                    ("x-dead-letter-routing-key", dead_letter_routing_key(stage)),
                    ("x-dead-letter-strategy", "at-least-once"),
                    # A full queue nacks the publish (the publisher retries)
                    # instead of dropping the oldest message.
                    ("x-overflow", "reject-publish"),
                    ("x-delivery-limit", delivery_limit),
                ),
            )
        )
        bindings += [BindingSpec(name, exchange, key) for exchange, key in inputs[stage]]
    for stage in STAGES:
        # Dead-letter queues have no DLX: a dead letter stays until a person
        # replays or purges it.
        name = dead_letter_queue(prefix, stage)
        queues.append(
            QueueSpec(
                name,
                (("x-queue-type", "quorum"), ("x-delivery-limit", DEAD_LETTER_DELIVERY_LIMIT)),
            )
        )
        bindings.append(BindingSpec(name, dlx, dead_letter_routing_key(stage)))
    for stage in STAGES:
        for level, delay in enumerate(retry_delays, start=1):
            name = retry_queue(prefix, stage, level)
            # Bound under its own name: the consumer publishes to the stage's
            # retry exchange with the level's queue name as routing key.
            bindings.append(BindingSpec(name, retry_exchange(prefix, stage), name))
            queues.append(
                QueueSpec(
                    name,
                    (
                        ("x-queue-type", "quorum"),
                        ("x-message-ttl", round(delay * 1000)),
                        # "" is the default exchange: the routing key is the
                        # stage queue's name.
                        ("x-dead-letter-exchange", ""),
                        ("x-dead-letter-routing-key", stage_queue(prefix, stage)),
                        ("x-dead-letter-strategy", "at-least-once"),
                        # Required by at-least-once dead-lettering.
                        ("x-overflow", "reject-publish"),
                    ),
                )
            )
    return Topology(
        prefix=prefix,
        exchanges=(
            ExchangeSpec(features),
            ExchangeSpec(jobs),
            ExchangeSpec(dlx),
            *(ExchangeSpec(retry_exchange(prefix, stage), ExchangeType.DIRECT) for stage in STAGES),
            ExchangeSpec(canary_exchange(prefix), ExchangeType.FANOUT),
        ),
        queues=tuple(queues),
        bindings=tuple(bindings),
        retry_delays=tuple(float(d) for d in retry_delays),
    )


def from_settings(settings: Settings) -> Topology:
    """The topology ``settings`` describe (prefix, delivery limit, retry delays)."""
    return topology(settings.prefix, settings.delivery_limit, settings.retry_delays)


async def declare(channel: AbstractChannel, topology: Topology) -> None:
    """Declare every exchange, queue and binding; a no-op when they already exist as specified.

    Raises ConfigurationError when an existing queue or exchange has other
    arguments (the broker closes ``channel`` in that case).
    """
    try:
        for exchange in topology.exchanges:
            await channel.declare_exchange(exchange.name, exchange.type, durable=exchange.durable)
        queues = {}
        for spec in topology.queues:
            queues[spec.name] = await channel.declare_queue(
                spec.name,
                durable=spec.durable,
                arguments=cast(FieldTable, spec.argument_table),
            )
        for binding in topology.bindings:
            await queues[binding.queue].bind(binding.exchange, binding.routing_key)
    except ChannelPreconditionFailed as exc:
        msg = (
            f"the broker holds a geobus object with other settings than this geobus expects "
            f"({exc}); delete it or use another GEOBUS_PREFIX"
        )
        raise ConfigurationError(msg) from exc
    except ChannelAccessRefused as exc:
        msg = (
            f"this RabbitMQ user may not declare the geobus topology ({exc}): run "
            f"`geobus topology` once as a user that may, and start the services with "
            f"GEOBUS_DECLARE_TOPOLOGY=false"
        )
        raise ConfigurationError(msg) from exc


async def check(connection: AbstractConnection, topology: Topology) -> None:
    """Assert that every exchange and queue of ``topology`` exists, with passive declares.

    Passive declares need no permission at all, so a least-privilege user can
    run this. Bindings cannot be checked this way. Raises ConfigurationError
    naming every missing object.
    """
    missing: list[str] = []
    channel = await connection.channel()
    try:
        for exchange in topology.exchanges:
            try:
                await channel.declare_exchange(exchange.name, passive=True)
            except ChannelNotFoundEntity:
                missing.append(f"exchange {exchange.name}")
                channel = await _replace(connection, channel)
        for spec in topology.queues:
            try:
                await channel.declare_queue(spec.name, passive=True)
            except ChannelNotFoundEntity:
                missing.append(f"queue {spec.name}")
                channel = await _replace(connection, channel)
    finally:
        if not channel.is_closed:
            await channel.close()
    if missing:
        msg = (
            f"the geobus topology of prefix {topology.prefix!r} is not declared (missing: "
            f"{', '.join(missing)}); run `geobus topology` as a RabbitMQ user that may "
            f"configure it (GEOBUS_DECLARE_TOPOLOGY is off)"
        )
        raise ConfigurationError(msg)


async def _replace(connection: AbstractConnection, channel: AbstractChannel) -> AbstractChannel:
    """A new channel for one the broker closed (404); closing ours too stops a robust reopen."""
    with contextlib.suppress(Exception):
        await channel.close()
    return await connection.channel()


async def ensure(connection: AbstractConnection, topology: Topology, *, declare_it: bool) -> None:
    """Declare ``topology`` on ``connection`` (``declare_it``), or only :func:`check` it."""
    if not declare_it:
        await check(connection, topology)
        return
    # A channel of its own: a failed declare closes it.
    channel = await connection.channel()
    await declare(channel, topology)
    await channel.close()


async def delete(channel: AbstractChannel, topology: Topology) -> None:
    """Delete every queue and exchange of ``topology``, messages included (tests, ``purge``)."""
    for spec in topology.queues:
        # Quorum queues refuse if_unused / if_empty deletes (the broker closes
        # the connection), so both must be off.
        await channel.queue_delete(spec.name, if_unused=False, if_empty=False)
    for exchange in topology.exchanges:
        await channel.exchange_delete(exchange.name, if_unused=False)


def describe(topology: Topology) -> str:
    """A human-readable listing of ``topology`` (what ``geobus topology`` prints)."""
    lines = [f"prefix {topology.prefix}", "", "exchanges:"]
    lines += [
        f"  {e.name}  ({e.type.value}{', durable' if e.durable else ''})"
        for e in topology.exchanges
    ]
    lines += ["", "queues:"]
    for spec in topology.queues:
        lines.append(f"  {spec.name}{'  (durable)' if spec.durable else ''}")
        lines += [f"      {key} = {value}" for key, value in spec.arguments]
        lines += [
            f"      <- {b.exchange} [{b.routing_key}]"
            for b in topology.bindings
            if b.queue == spec.name
        ]
    unbound = [key for key in routing.MESSAGE_TYPES if not topology.binds(key)]
    if unbound:
        lines += ["", "routing keys without a geobus queue (bind your own):"]
        lines += [f"  {topology.exchange_for(key)} [{key}]" for key in unbound]
    return "\n".join(lines)


async def declare_from_settings(settings: Settings, *, force: bool = False) -> Topology:
    """Connect to ``settings.amqp_url``, declare the topology of ``settings``, disconnect.

    With ``GEOBUS_DECLARE_TOPOLOGY=false`` (and not ``force``, which
    ``geobus topology`` sets) it only checks that the topology exists.
    Raises TransientError when the broker cannot be reached and
    ConfigurationError when it refuses the credentials, holds conflicting
    objects, or lacks some (checking).
    """
    spec = from_settings(settings)
    connection = await connect(settings.amqp_url)
    async with connection:
        await ensure(connection, spec, declare_it=force or settings.declare_topology)
    return spec


async def connect(amqp_url: str) -> AbstractConnection:
    """A plain connection to ``amqp_url``, its errors translated into geobus's tree.

    Refused credentials are a ConfigurationError (retrying does not help);
    an unreachable broker, or a TLS failure, is a TransientError. The URL is
    never part of the message (it may hold a password).
    """
    try:
        return await aio_pika.connect(amqp_url)
    except ProbableAuthenticationError as exc:
        msg = f"RabbitMQ refused the credentials ({exc}); check GEOBUS_AMQP_URL"
        raise ConfigurationError(msg) from exc
    except (AMQPConnectionError, OSError) as exc:
        msg = f"cannot connect to RabbitMQ: {exc}"
        raise TransientError(msg) from exc
