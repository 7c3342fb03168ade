"""The shared broker runtime: topology, wire format, confirming publisher, consumer loop.

- :mod:`~geobus.broker.routing` — the stable routing keys and the type each carries;
- :mod:`~geobus.broker.topology` — exchanges, queues, bindings as data; declare / delete;
- :mod:`~geobus.broker.wire` — Protobuf ⇄ AMQP message (pure);
- :mod:`~geobus.broker.publisher` — :class:`Publisher`, publishes with confirms;
- :mod:`~geobus.broker.consumer` — :func:`run_consumer`, the loop with the ack decisions.
"""

from geobus.broker.consumer import Disposition, Handler, disposition, run_consumer
from geobus.broker.publisher import Outgoing, Publisher, UnroutableError

# The function ``topology`` is not re-exported: it would shadow the module of the same name.
from geobus.broker.topology import Topology, declare, declare_from_settings, describe

__all__ = [
    "Disposition",
    "Handler",
    "Outgoing",
    "Publisher",
    "Topology",
    "UnroutableError",
    "declare",
    "declare_from_settings",
    "describe",
    "disposition",
    "run_consumer",
]
