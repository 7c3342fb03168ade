"""The broker names the ingress uses: exchanges, routing keys, message ids."""

from __future__ import annotations

from geobus.broker.routing import (
    FEATURE_INGESTED,
    FEATURE_REJECTED,
    JOB_ACCEPTED,
    JOB_FAILED,
    JOB_SEALED,
)
from geobus.broker.topology import features_exchange, jobs_exchange
from geobus.broker.wire import message_id

__all__ = [
    "FEATURE_INGESTED",
    "FEATURE_REJECTED",
    "JOB_ACCEPTED",
    "JOB_FAILED",
    "JOB_SEALED",
    "features_exchange",
    "jobs_exchange",
    "message_id",
]
