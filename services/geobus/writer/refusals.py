"""Writing a batch when the database refuses some of its features.

PostgreSQL refuses a whole COPY for one bad row (``\\u0000`` in a jsonb
string, a number jsonb cannot hold): the batch fails with PermanentError.
:func:`write_isolating` then bisects it (:mod:`geobus.isolation`) so that
only the refused features are rejected and the others are stored.

Exactly-once: the whole batch is written under its usual ledger key
(``features``, sequence); a part under ``features:<first>-<last>`` (the
document indexes of its first and last feature). A failed write rolls back
with its key, so only parts that were stored hold one; the bisection of a
redelivered batch takes the same path (the refusals are deterministic) and
finds its parts' keys taken, and the store never holds a (job, feature
index) twice whatever keys were used. The rejections go out as a
``RejectionBatch`` of stage ``writer`` on ``feature.rejected`` (like every
stage's, so other consumers see them too), keyed ``rejections:writer`` and
the sequence when they come back to the writer.
"""

from __future__ import annotations

import asyncio

from geobus.errors import MessageError, PermanentError
from geobus.isolation import bisect, failure_problem, sub_batch
from geobus.stage import StageResult
from geobus.store.base import FeatureStore, WriteOutcome
from geobus.v1 import feature_pb2, rejection_pb2


def part_name(part: feature_pb2.FeatureBatch) -> str:
    """The ledger name of a part of a batch: its first and last feature index."""
    if not part.features:
        return "empty"
    return f"{part.features[0].index}-{part.features[-1].index}"


def refused(exc: Exception) -> bool:
    """Whether the store refused the data (bisect), as opposed to a broken message or an outage."""
    return isinstance(exc, PermanentError) and not isinstance(exc, MessageError)


async def write_isolating(
    store: FeatureStore, batch: feature_pb2.FeatureBatch, stage: str
) -> StageResult:
    """Store ``batch``; the features the store refuses alone become rejections of ``stage``.

    Returns the stored features (in order) and the rejections. Raises
    PermanentError when the store refuses every feature, TransientError when
    it is away.
    """

    async def attempt(part: feature_pb2.FeatureBatch, depth: int) -> WriteOutcome:
        name = "" if depth == 0 else part_name(part)
        return await asyncio.to_thread(store.write_batch, part, name)

    found = await bisect(batch, attempt, refused)
    if found.whole:
        return StageResult(batch)
    if not found.parts:
        first = min(found.failed)
        msg = (
            f"the store refused every feature of batch {batch.sequence} of job {batch.job_id}:"
            f" {found.failed[first]}"
        )
        raise PermanentError(msg) from found.failed[first]
    stored = sub_batch(batch, 0, 0)
    for part in found.parts:
        stored.features.extend(batch.features[part.start : part.stop])
    rejections = []
    for position in sorted(found.failed):
        feature = batch.features[position]
        rejections.append(
            failure_problem(stage, found.failed[position]).to_rejection(
                job_id=batch.job_id,
                index=feature.index,
                stage=stage,
                feature_id=feature.id if feature.HasField("id") else None,
            )
        )
    return StageResult(
        stored,
        rejection_pb2.RejectionBatch(
            job_id=batch.job_id, sequence=batch.sequence, stage=stage, rejections=rejections
        ),
    )
