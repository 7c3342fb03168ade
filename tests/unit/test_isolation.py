"""Bisection of a failing batch down to the features that fail alone (geobus.isolation)."""

from __future__ import annotations

import json

import faulty
import pytest

from geobus.errors import MessageError, PermanentError, TransientError
from geobus.isolation import Isolated, bisect, merge, sub_batch
from geobus.stage import StageResult
from geobus.stagerunner import is_failure
from geobus.v1 import feature_pb2, rejection_pb2

R = rejection_pb2.RejectReason


def failing_on(bad: set[int], error: Exception | None = None, calls: list[int] | None = None):  # type: ignore[no-untyped-def]
    """An attempt that fails when the sub-batch holds a feature index in ``bad``."""

    async def attempt(batch: feature_pb2.FeatureBatch, depth: int) -> StageResult:
        if calls is not None:
            calls.append(len(batch.features))
        if any(f.index in bad for f in batch.features):
            raise error or ValueError(f"bad in {[f.index for f in batch.features]}")
        out = feature_pb2.FeatureBatch()
        out.CopyFrom(batch)
        out.crs = "EPSG:3857"  # a stage may change batch-level fields
        return StageResult(out)

    return attempt


async def isolate(batch: feature_pb2.FeatureBatch, bad: set[int]) -> StageResult:
    """Bisect and merge with an attempt that fails on ``bad``."""
    return merge(batch, "validator", await bisect(batch, failing_on(bad), is_failure))


async def test_only_the_failing_features_are_rejected_and_the_rest_go_on_in_order() -> None:
    """Features 3 and 17 of 40 are rejected with their index, id and reason; 38 go on in order."""
    batch = faulty.marked_batch({}, 40)
    result = await isolate(batch, {3, 17})
    assert [f.index for f in result.batch.features] == [i for i in range(40) if i not in (3, 17)]
    assert result.batch.job_id == batch.job_id
    assert result.batch.sequence == batch.sequence
    assert result.batch.crs == "EPSG:3857"
    assert result.rejections is not None
    assert result.rejections.sequence == batch.sequence
    assert result.rejections.stage == "validator"
    rejections = list(result.rejections.rejections)
    assert [r.feature_index for r in rejections] == [3, 17]
    assert [r.feature_id.string_id for r in rejections] == ["f3", "f17"]
    assert {r.reason for r in rejections} == {R.REJECT_REASON_PROCESSING_FAILED}
    assert "ValueError: bad in [3]" in rejections[0].message
    assert "isolated by bisection" in rejections[0].message


async def test_a_batch_that_works_is_tried_once_and_returned_as_is() -> None:
    """No failure: one attempt on the whole batch, its result unchanged."""
    batch = faulty.marked_batch({}, 10)
    calls: list[int] = []
    found = await bisect(batch, failing_on(set(), calls=calls), is_failure)
    assert calls == [10]
    assert found.whole
    assert merge(batch, "validator", found) is found.parts[0].result


async def test_one_bad_feature_costs_about_two_passes() -> None:
    """Bisection of 2,000 features with one bad one attempts at most ~3x the batch's features."""
    batch = faulty.marked_batch({}, 2000)
    calls: list[int] = []
    found = await bisect(batch, failing_on({1234}, calls=calls), is_failure)
    assert list(found.failed) == [1234]
    assert sum(calls) <= 3 * 2000
    assert len(calls) <= 2 * 12 + 1


async def test_rejections_of_the_stage_itself_are_kept_in_document_order() -> None:
    """Rejections made by the transform in a part merge with the bisection's, sorted by index."""
    batch = faulty.marked_batch({}, 8)

    async def attempt(part: feature_pb2.FeatureBatch, depth: int) -> StageResult:
        if any(f.index == 5 for f in part.features):
            raise ValueError("no")
        kept = [f for f in part.features if f.index != 1]
        out = sub_batch(part, 0, 0)
        out.features.extend(kept)
        rejected = [
            rejection_pb2.Rejection(job_id=part.job_id, feature_index=f.index, stage="validator")
            for f in part.features
            if f.index == 1
        ]
        rb = rejection_pb2.RejectionBatch(job_id=part.job_id, rejections=rejected)
        return StageResult(out, rb if rejected else None)

    result = merge(batch, "validator", await bisect(batch, attempt, is_failure))
    assert [f.index for f in result.batch.features] == [0, 2, 3, 4, 6, 7]
    assert result.rejections is not None
    assert [r.feature_index for r in result.rejections.rejections] == [1, 5]


async def test_a_batch_where_every_feature_fails_is_a_permanent_error() -> None:
    """Nothing went through: the batch is dead-lettered (PermanentError), no feature rejected."""
    batch = faulty.marked_batch({}, 5)
    with pytest.raises(PermanentError, match=r"every feature of batch \d+ of job job-f failed"):
        await isolate(batch, {0, 1, 2, 3, 4})


async def test_a_one_feature_batch_that_fails_is_a_permanent_error() -> None:
    """A lone feature that fails is no evidence against the data: PermanentError."""
    with pytest.raises(PermanentError, match="1 of 1"):
        await isolate(faulty.marked_batch({}, 1), {0})


async def test_a_failure_of_the_combination_only_keeps_every_feature() -> None:
    """The whole batch fails but both halves pass: every feature goes on, nothing rejected."""
    batch = faulty.marked_batch({}, 6)

    async def attempt(part: feature_pb2.FeatureBatch, depth: int) -> StageResult:
        if len(part.features) == 6:
            raise ValueError("too much at once")
        return StageResult(part)

    result = merge(batch, "validator", await bisect(batch, attempt, is_failure))
    assert [f.index for f in result.batch.features] == list(range(6))
    assert result.rejections is None


@pytest.mark.parametrize("error", [MessageError("broken"), TransientError("db away")])
async def test_geobus_errors_are_not_bisected_but_raised_as_they_are(error: Exception) -> None:
    """A broken message or an absent dependency is not the features' fault: raised unchanged."""
    batch = faulty.marked_batch({}, 16)
    calls: list[int] = []
    with pytest.raises(type(error)):
        await bisect(batch, failing_on({3}, error, calls), is_failure)
    assert calls == [16]


async def test_an_error_deep_in_the_bisection_is_raised_without_a_group() -> None:
    """A TransientError met while bisecting reaches the caller as itself, not an ExceptionGroup."""
    batch = faulty.marked_batch({}, 16)

    async def attempt(part: feature_pb2.FeatureBatch, depth: int) -> StageResult:
        if depth == 2:
            raise TransientError("db away")
        raise ValueError("no")

    with pytest.raises(TransientError):
        await bisect(batch, attempt, is_failure)


def test_sub_batch_keeps_every_batch_field() -> None:
    """A part carries the batch's job, sequence, CRS, collection and source."""
    batch = faulty.marked_batch({}, 4)
    batch.sequence = 7
    batch.source.uri = "file:///x.geojson"
    part = sub_batch(batch, 1, 3)
    assert [f.index for f in part.features] == [1, 2]
    expected = feature_pb2.FeatureBatch()
    expected.CopyFrom(batch)
    del expected.features[:]
    del part.features[:]
    assert part == expected
    assert json.loads(batch.features[1].properties) == {"i": 1}


def test_isolated_whole_means_one_part_and_no_failure() -> None:
    """``whole`` is true only for a batch that went through in one attempt."""
    assert not Isolated[int]().whole
