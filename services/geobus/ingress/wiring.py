"""The real dependencies of the ingress: the store and the broker publisher.

Imported lazily by the application's lifespan and by the worker process, so
that unit tests with fakes never need a broker or a database.
"""

from __future__ import annotations

from geobus.ingress.monitor import AmqpProbe
from geobus.ingress.ports import JobStore, Publisher
from geobus.settings import Settings


async def connect_publisher(settings: Settings, *, declare_topology: bool = True) -> Publisher:
    """A confirming publisher connected to ``settings.amqp_url``.

    The ingress process declares the topology once at start-up; its worker
    processes connect per job and skip the declaration round trips.
    """
    from geobus.broker.publisher import Publisher as BrokerPublisher
    from geobus.broker.topology import from_settings

    return await BrokerPublisher.connect(
        settings.amqp_url,
        # Every process must declare the same queue arguments (delivery limit, retry TTLs).
        from_settings(settings),
        max_message_bytes=settings.max_message_bytes,
        declare_topology=declare_topology,
        # A least-privilege user only checks that the topology exists.
        passive=not settings.declare_topology,
    )


def open_job_store(settings: Settings) -> JobStore:
    """The store named by ``settings.database_url``, its schema ensured (blocking)."""
    from geobus.store import open_store

    store = open_store(settings)
    store.ensure_schema()
    return store


async def connect_probe(settings: Settings) -> AmqpProbe:
    """The broker monitor's probe: the stage queues' depth and a publishing canary."""
    from geobus.broker.topology import STAGES, canary_exchange, stage_queue

    queues = [stage_queue(settings.prefix, stage) for stage in STAGES]
    return await AmqpProbe.connect(
        settings.amqp_url, queues, f"{settings.prefix}.canary", canary_exchange(settings.prefix)
    )
