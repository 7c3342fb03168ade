"""The stable routing keys of geobus and the message type each one carries.

These keys are part of the public AMQP contract (DESIGN.md, decision 8):
services in any language bind what they need with the ``.proto`` files and
this table alone, so a key is never renamed, only added.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

FEATURE_INGESTED = "feature.ingested"
FEATURE_VALIDATED = "feature.validated"
FEATURE_REPROJECTED = "feature.reprojected"
# No geobus queue binds feature.stored: it exists for consumers outside geobus.
FEATURE_STORED = "feature.stored"
FEATURE_REJECTED = "feature.rejected"

JOB_ACCEPTED = "job.accepted"
JOB_SEALED = "job.sealed"
JOB_COMPLETED = "job.completed"
JOB_FAILED = "job.failed"

_FEATURE_BATCH = "geobus.v1.FeatureBatch"

MESSAGE_TYPES: Mapping[str, str] = MappingProxyType(
    {
        FEATURE_INGESTED: _FEATURE_BATCH,
        FEATURE_VALIDATED: _FEATURE_BATCH,
        FEATURE_REPROJECTED: _FEATURE_BATCH,
        FEATURE_STORED: _FEATURE_BATCH,
        FEATURE_REJECTED: "geobus.v1.RejectionBatch",
        JOB_ACCEPTED: "geobus.v1.JobAccepted",
        JOB_SEALED: "geobus.v1.JobSealed",
        JOB_COMPLETED: "geobus.v1.JobCompleted",
        JOB_FAILED: "geobus.v1.JobFailed",
    }
)
"""Routing key → fully qualified Protobuf name of the body it carries."""
