"""Per-feature isolation: when a batch fails as a whole, find the features that fail alone.

A stage works on a whole batch with vectorised calls, so one pathological
feature makes the call fail for all of them (an exception out of GEOS or
PROJ, a worker process that crashes or hangs, a database that refuses one
row). :func:`bisect` then retries the two halves, recursively, until every
failure is pinned on single features; everything else goes on in the parts
that worked. A batch with one bad feature of 2,000 costs about two extra
passes over the batch (log2 2000 ≈ 11 levels, each re-running half of the
previous level's work).

Evidence rule: a feature is rejected only when other features of its batch
went through. When *nothing* went through (every feature failed alone, or a
one-feature batch failed) the stage itself is more likely broken than the
data: :func:`merge` raises :class:`~geobus.errors.PermanentError` and the
batch is dead-lettered, where a person can see it and replay it once the
stage is fixed.

The functions are pure: the attempt is passed in, and tests give one that
fails on chosen features.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from geobus.errors import PermanentError
from geobus.problems import Problem, R
from geobus.stage import StageResult
from geobus.v1 import feature_pb2, rejection_pb2

T = TypeVar("T")

Attempt = Callable[[feature_pb2.FeatureBatch, int], Awaitable[T]]
"""Process a (sub-)batch at a bisection depth (0: the whole batch); raise to fail."""


@dataclass(slots=True)
class Part(Generic[T]):
    """Positions ``[start, stop)`` of the original batch, processed together into ``result``."""

    start: int
    stop: int
    result: T


@dataclass(slots=True)
class Isolated(Generic[T]):
    """What bisection found: the parts that worked, and the single features that failed."""

    parts: list[Part[T]] = field(default_factory=list)
    # Position in the original batch → the error of that feature alone.
    failed: dict[int, Exception] = field(default_factory=dict)

    @property
    def whole(self) -> bool:
        """Whether the batch went through in one piece (no bisection was needed)."""
        return not self.failed and len(self.parts) == 1


def sub_batch(batch: feature_pb2.FeatureBatch, start: int, stop: int) -> feature_pb2.FeatureBatch:
    """The features ``[start, stop)`` of ``batch`` with its job, sequence, CRS and the rest."""
    if start == 0 and stop == len(batch.features):
        return batch
    part = feature_pb2.FeatureBatch()
    # Copy every field but the features, whatever fields the contract grows.
    for descriptor, value in batch.ListFields():
        if descriptor.name == "features":
            continue
        if descriptor.message_type is not None:
            getattr(part, descriptor.name).CopyFrom(value)
        else:
            setattr(part, descriptor.name, value)
    part.features.extend(batch.features[start:stop])
    return part


async def bisect(
    batch: feature_pb2.FeatureBatch,
    attempt: Attempt[T],
    is_failure: Callable[[Exception], bool],
) -> Isolated[T]:
    """Run ``attempt`` on ``batch``; on a failure, on its halves, down to single features.

    An exception for which ``is_failure`` is False (a broken message, a
    dependency away) is not the features' fault: it propagates at once and
    the other half is cancelled. Halves run concurrently, so a pool of
    workers bisects in parallel.
    """
    found: Isolated[T] = Isolated()
    await _bisect(batch, 0, len(batch.features), 0, attempt, is_failure, found)
    found.parts.sort(key=lambda part: part.start)
    return found


async def _bisect(
    batch: feature_pb2.FeatureBatch,
    start: int,
    stop: int,
    depth: int,
    attempt: Attempt[T],
    is_failure: Callable[[Exception], bool],
    found: Isolated[T],
) -> None:
    try:
        result = await attempt(sub_batch(batch, start, stop), depth)
    except Exception as exc:
        if not is_failure(exc):
            raise
        if stop - start <= 1:
            if stop > start:
                found.failed[start] = exc
            return
        middle = (start + stop) // 2
        try:
            async with asyncio.TaskGroup() as group:
                for lo, hi in ((start, middle), (middle, stop)):
                    group.create_task(_bisect(batch, lo, hi, depth + 1, attempt, is_failure, found))
        except ExceptionGroup as errors:
            # Callers decide on the error's class (retry, dead-letter): give
            # them the error, not a group (each level unwraps its own).
            raise errors.exceptions[0] from None
        return
    found.parts.append(Part(start, stop, result))


def failure_problem(stage: str, error: Exception) -> Problem:
    """The rejection reason of a feature that failed alone."""
    return Problem(
        R.REJECT_REASON_PROCESSING_FAILED,
        f"the {stage} failed on this feature alone (isolated by bisection): {describe(error)}",
    )


def describe(error: Exception) -> str:
    """A one-line account of ``error`` for a person: its class unless it speaks for itself."""
    text = str(error)
    if getattr(error, "self_describing", False):
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def merge(batch: feature_pb2.FeatureBatch, stage: str, found: Isolated[StageResult]) -> StageResult:
    """One result for ``batch`` (same job, sequence, order) from the parts and the failures.

    Raises PermanentError when nothing of the batch went through (see the
    module docstring).
    """
    if found.whole:
        return found.parts[0].result
    if found.failed and not found.parts:
        first = min(found.failed)
        msg = (
            f"every feature of batch {batch.sequence} of job {batch.job_id} failed in the"
            f" {stage} ({len(found.failed)} of {len(batch.features)}), e.g. feature"
            f" {batch.features[first].index}: {describe(found.failed[first])}"
        )
        raise PermanentError(msg) from found.failed[first]
    out = sub_batch(batch, 0, 0)
    for part in found.parts:
        # A stage may change batch-level fields (the reprojector sets the CRS).
        out.crs = part.result.batch.crs
        out.features.extend(part.result.batch.features)
    rejections: list[rejection_pb2.Rejection] = []
    for part in found.parts:
        if part.result.rejections is not None:
            rejections.extend(part.result.rejections.rejections)
    for position, error in found.failed.items():
        feature = batch.features[position]
        rejections.append(
            failure_problem(stage, error).to_rejection(
                job_id=batch.job_id,
                index=feature.index,
                stage=stage,
                feature_id=feature.id if feature.HasField("id") else None,
            )
        )
    if not rejections:
        return StageResult(out)
    rejections.sort(key=lambda r: r.feature_index)
    return StageResult(
        out,
        rejection_pb2.RejectionBatch(
            job_id=batch.job_id, sequence=batch.sequence, stage=stage, rejections=rejections
        ),
    )
