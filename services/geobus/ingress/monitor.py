"""Keep :class:`~geobus.ingress.admission.BrokerPressure` current, off the request path.

Once a second the monitor

- reads the depth of every stage queue with a passive ``queue.declare`` (its
  reply carries the count of ready messages), on a connection that never
  publishes, so that a blocked broker still answers it;
- publishes a *canary* — a tiny, unroutable, non-persistent message to the
  ``<prefix>.canary`` exchange (nothing is bound to it; not the default
  exchange, which a least-privilege user may not write to), which the broker
  drops and confirms at once — on a second
  connection with publisher confirms, and waits for the confirm.

Under a memory or disk alarm RabbitMQ stops reading from every connection
that publishes: the canary's confirm does not come, and after
``canary_timeout`` seconds the broker counts as blocked. The same holds when
the broker is unreachable or overloaded past answering: the ingress cannot
pass documents on, so it should not take more. When the alarm clears, the
broker reads the waiting canary, confirms it and the ingress takes documents
again. (aio-pika 10 / aiormq 7 log ``connection.blocked`` / ``unblocked``
but offer no callback for them; the canary also covers brokers or proxies
that never send the notification.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractRobustChannel, AbstractRobustConnection
from aiormq.exceptions import AMQPError

from geobus.errors import TransientError
from geobus.ingress.admission import BrokerPressure

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0
CANARY_TIMEOUT = 3.0
# A canary that has waited this long is given up and a new one published
# (its connection was likely replaced by a reconnect).
CANARY_ABANDON = 60.0
DEPTH_TIMEOUT = 5.0


class BrokerProbe(Protocol):
    """The two questions the monitor asks the broker."""

    async def queue_depths(self) -> Mapping[str, int]:
        """Ready messages per stage queue."""

    async def publish_canary(self) -> None:
        """Publish one throw-away message; return once the broker confirmed it."""

    async def close(self) -> None:
        """Close the probe's connections."""


async def watch(
    probe: BrokerProbe,
    pressure: BrokerPressure,
    *,
    interval: float = POLL_INTERVAL,
    canary_timeout: float = CANARY_TIMEOUT,
    canary_abandon: float = CANARY_ABANDON,
) -> None:
    """Update ``pressure`` every ``interval`` seconds until cancelled.

    Depths and the canary are watched side by side: a depth poll that hangs
    (broker unreachable) must not delay noticing that publishes stall.
    """
    log.info("watching the broker every %g s", interval)
    await asyncio.gather(
        _watch_depths(probe, pressure, interval),
        _watch_canary(probe, pressure, interval, canary_timeout, canary_abandon),
    )


async def _watch_depths(probe: BrokerProbe, pressure: BrokerPressure, interval: float) -> None:
    while True:
        started = time.monotonic()
        await _poll_depths(probe, pressure)
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


async def _watch_canary(
    probe: BrokerProbe,
    pressure: BrokerPressure,
    interval: float,
    canary_timeout: float,
    canary_abandon: float,
) -> None:
    canary: asyncio.Task[None] | None = None
    started = 0.0
    try:
        while True:
            if canary is None:
                canary = asyncio.create_task(probe.publish_canary(), name="broker canary")
                started = time.monotonic()
            await asyncio.wait({canary}, timeout=interval)
            waited = time.monotonic() - started
            if canary.done():
                _settle(canary, pressure)
                canary = None
                await asyncio.sleep(max(0.0, interval - waited))
            elif waited >= canary_timeout:
                _set_blocked(pressure, f"publishes are not confirmed within {canary_timeout:g} s")
                if waited >= canary_abandon:
                    canary.cancel()
                    canary = None
    finally:
        if canary is not None:
            canary.cancel()
            with contextlib.suppress(BaseException):
                await canary


async def _poll_depths(probe: BrokerProbe, pressure: BrokerPressure) -> None:
    try:
        depths = await asyncio.wait_for(probe.queue_depths(), DEPTH_TIMEOUT)
    except Exception as exc:  # stale depths stop counting after a while (STALE_AFTER)
        if pressure.depth_error is None:
            log.warning("cannot read the stage queues' depth: %s", exc)
        pressure.depth_error = f"{type(exc).__name__}: {exc}"
        return
    if pressure.depth_error is not None:
        log.warning("the stage queues' depth is known again")
    pressure.depth_error = None
    pressure.set_depths(depths)


def _settle(canary: asyncio.Task[None], pressure: BrokerPressure) -> None:
    error = None if canary.cancelled() else canary.exception()
    if error is None:
        if pressure.blocked is not None:
            log.warning("the broker takes messages again")
        pressure.blocked = None
    else:
        _set_blocked(pressure, f"publishing fails: {type(error).__name__}: {error}")


def _set_blocked(pressure: BrokerPressure, why: str) -> None:
    if pressure.blocked is None:
        log.warning("refusing new documents: %s", why)
    pressure.blocked = why


class AmqpProbe:
    """:class:`BrokerProbe` over two robust aio-pika connections; create with :meth:`connect`."""

    def __init__(
        self,
        reading: AbstractRobustConnection,
        publishing: AbstractRobustConnection,
        queues: Sequence[str],
        canary_key: str,
        canary_exchange: str = "",
    ) -> None:
        self._reading = reading
        self._publishing = publishing
        self._queues = tuple(queues)
        self._canary_key = canary_key
        self._canary_exchange = canary_exchange
        self._read_channel: AbstractRobustChannel | None = None
        self._publish_channel: AbstractChannel | None = None

    @classmethod
    async def connect(
        cls, amqp_url: str, queues: Sequence[str], canary_key: str, canary_exchange: str = ""
    ) -> AmqpProbe:
        """Open both connections (raises TransientError when the broker is away).

        The canary goes to ``canary_exchange`` with ``canary_key``; ``""`` is
        the default exchange, which routes by queue name.
        """
        try:
            reading = await aio_pika.connect_robust(amqp_url)
        except (AMQPError, OSError) as exc:
            msg = f"cannot connect to RabbitMQ to watch the queues: {exc}"
            raise TransientError(msg) from exc
        try:
            publishing = await aio_pika.connect_robust(amqp_url)
        except (AMQPError, OSError) as exc:
            await reading.close()
            msg = f"cannot connect to RabbitMQ to watch the queues: {exc}"
            raise TransientError(msg) from exc
        return cls(reading, publishing, queues, canary_key, canary_exchange)

    async def queue_depths(self) -> Mapping[str, int]:
        """Ready messages per stage queue (passive declares: nothing is created)."""
        channel = self._read_channel
        if channel is None or channel.is_closed:
            # A passive declare of a missing queue closes its channel: a
            # fresh one is opened for the next poll.
            channel = self._read_channel = await self._reading.channel()
        depths: dict[str, int] = {}
        for name in self._queues:
            # robust=False: a robust channel answers a repeated passive
            # declare from its cache (aio-pika 10), with the first count.
            queue = await channel.declare_queue(name, passive=True, robust=False)
            depths[name] = queue.declaration_result.message_count or 0
        return depths

    async def publish_canary(self) -> None:
        """Publish one empty, transient message nobody receives; wait for its confirm."""
        channel = self._publish_channel
        if channel is None or channel.is_closed:
            channel = self._publish_channel = await self._publishing.channel(
                publisher_confirms=True
            )
        # Nothing is bound to the canary exchange, and on the default exchange
        # no queue has the canary's name: the broker drops it and confirms.
        exchange = (
            await channel.get_exchange(self._canary_exchange, ensure=False)
            if self._canary_exchange
            else channel.default_exchange
        )
        await exchange.publish(
            aio_pika.Message(b"", delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT),
            self._canary_key,
            mandatory=False,
        )

    async def close(self) -> None:
        """Close both connections."""
        for connection in (self._publishing, self._reading):
            if not connection.is_closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(connection.close(), 5)
