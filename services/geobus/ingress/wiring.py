"""The real dependencies of the ingress: the store and the broker publisher.

Imported lazily by the application's lifespan and by the worker process, so
that unit tests with fakes never need a broker or a database.
"""

from __future__ import annotations

from geobus.ingress.ports import JobStore, Publisher
from geobus.settings import Settings


async def connect_publisher(settings: Settings, *, declare_topology: bool = True) -> Publisher:
    """A confirming publisher connected to ``settings.amqp_url``.

    The ingress process declares the topology once at start-up; its worker
    processes connect per job and skip the declaration round trips.
    """
    from geobus.broker.publisher import Publisher as BrokerPublisher
    from geobus.broker.topology import topology

    return await BrokerPublisher.connect(
        settings.amqp_url,
        topology(settings.prefix),
        max_message_bytes=settings.max_message_bytes,
        declare_topology=declare_topology,
    )


def open_job_store(settings: Settings) -> JobStore:
    """The store named by ``settings.database_url``, its schema ensured (blocking)."""
    from geobus.store import open_store

    store = open_store(settings)
    store.ensure_schema()
    return store
