"""Crash and hang containment of a stage's transform in worker processes (geobus.stagerunner).

Real child processes: a transform that exits, segfaults, hangs or raises on
marked features (tests/unit/faulty.py) must cost only those features.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Callable

import faulty
import geometries as geo
import pytest

from geobus.errors import ConfigurationError, MessageError, PermanentError, TransientError
from geobus.reprojector.transform import Reprojector
from geobus.stagerunner import StageRunner, TransformFactory, time_limit_at
from geobus.v1 import rejection_pb2
from geobus.validator.transform import ValidationPolicy, validate
from geobus.workerpool import WorkerPool

R = rejection_pb2.RejectReason

RunnerMaker = Callable[..., StageRunner]


@pytest.fixture
async def make_runner() -> AsyncIterator[RunnerMaker]:
    """Started StageRunners, closed after the test."""
    runners: list[StageRunner] = []

    async def make(
        factory: TransformFactory = faulty.factory, workers: int = 2, time_limit: float = 30.0
    ) -> StageRunner:
        runner = StageRunner(factory, stage="validator", workers=workers, time_limit=time_limit)
        await runner.start()
        runners.append(runner)
        return runner

    yield make  # type: ignore[misc]
    for runner in runners:
        await runner.close()


@pytest.mark.parametrize(
    ("fault", "said"), [("exit", "crashed (exit code 3)"), ("segv", "crashed (killed by SIGSEGV)")]
)
async def test_a_feature_that_kills_its_worker_is_rejected_and_the_rest_go_on(
    make_runner: RunnerMaker, fault: str, said: str
) -> None:
    """Feature 7 of 32 kills the worker: only it is rejected, with why; the stage goes on."""
    runner = await make_runner()
    result = await runner(faulty.marked_batch({7: fault}, 32))
    assert [f.index for f in result.batch.features] == [i for i in range(32) if i != 7]
    assert result.rejections is not None
    (rejection,) = result.rejections.rejections
    assert rejection.feature_index == 7
    assert rejection.feature_id.string_id == "f7"
    assert rejection.reason == R.REJECT_REASON_PROCESSING_FAILED
    assert f"the validator's worker process {said}" in rejection.message
    # The pool was replaced: the next batches go through whole.
    for _ in range(3):
        again = await runner(faulty.marked_batch({}, 32))
        assert len(again.batch.features) == 32
        assert again.rejections is None


async def test_a_feature_that_hangs_is_rejected_within_a_bounded_time(
    make_runner: RunnerMaker,
) -> None:
    """A hanging feature is killed at the time limit and rejected within ~4 limits."""
    runner = await make_runner(time_limit=1.0)
    started = time.monotonic()
    result = await runner(faulty.marked_batch({5: "hang"}, 64))
    elapsed = time.monotonic() - started
    assert [f.index for f in result.batch.features] == [i for i in range(64) if i != 5]
    assert result.rejections is not None
    (rejection,) = result.rejections.rejections
    assert rejection.feature_index == 5
    assert "did not finish within 1 s" in rejection.message
    assert elapsed < 5.0, elapsed


async def test_a_slow_feature_is_not_blamed_for_a_shortened_limit(make_runner: RunnerMaker) -> None:
    """Parts that only exceed their shortened limit are retried with the full one: no rejection."""
    runner = await make_runner(time_limit=1.0)
    # 2 x 0.6 s: the batch exceeds 1 s; each half exceeds its 0.5 s but not 1 s.
    result = await runner(faulty.marked_batch({0: "slow", 1: "slow"}, 2))
    assert [f.index for f in result.batch.features] == [0, 1]
    assert result.rejections is None


def test_time_limits_shrink_with_depth_down_to_a_floor() -> None:
    """Depth d gets limit / 2**d, never less than a sixteenth of the limit."""
    assert [time_limit_at(160, d) for d in (0, 1, 2, 4, 5, 11)] == [160, 80, 40, 10, 10, 10]


@pytest.mark.parametrize("workers", [2, 0])
async def test_an_exception_of_the_transform_rejects_only_its_feature(
    make_runner: RunnerMaker, workers: int
) -> None:
    """An exception on feature 4 (in a process or a thread) rejects feature 4 with its message."""
    runner = await make_runner(workers=workers)
    result = await runner(faulty.marked_batch({4: "raise", 9: "memory"}, 12))
    assert len(result.batch.features) == 10
    assert result.rejections is not None
    messages = {r.feature_index: r.message for r in result.rejections.rejections}
    assert messages.keys() == {4, 9}
    assert "RuntimeError: boom on feature 4" in messages[4]
    assert "MemoryError" in messages[9]


async def test_a_batch_whose_every_feature_crashes_is_a_permanent_error(
    make_runner: RunnerMaker,
) -> None:
    """Nothing isolates (every feature crashes): PermanentError, for the dead-letter queue."""
    runner = await make_runner()
    with pytest.raises(PermanentError, match=r"every feature .* crashed"):
        await runner(faulty.marked_batch(dict.fromkeys(range(4), "exit"), 4))
    assert len((await runner(faulty.marked_batch({}, 3))).batch.features) == 3


async def test_a_geobus_error_in_the_worker_keeps_its_class(make_runner: RunnerMaker) -> None:
    """A MessageError raised in a worker (batch without CRS) reaches the consumer as such."""
    runner = await make_runner(functools.partial(Reprojector, "EPSG:3857"))
    batch = geo.batch_of([geo.point])
    batch.crs = ""
    with pytest.raises(MessageError, match="names no CRS"):
        await runner(batch)


async def test_the_process_path_gives_what_the_transform_gives(make_runner: RunnerMaker) -> None:
    """validate() through a worker process returns exactly what it returns when called directly."""
    factory = functools.partial(functools.partial, validate, policy=ValidationPolicy())
    runner = await make_runner(factory)
    batch = geo.batch_of([geo.point, geo.polygon_cw, geo.bowtie, None, geo.polygon])
    direct = validate(batch, ValidationPolicy())
    contained = await runner(batch)
    assert contained.batch == direct.batch
    assert contained.rejections == direct.rejections


async def test_a_worker_that_cannot_build_its_transform_fails_start_up() -> None:
    """A factory that raises in the child makes start() raise ConfigurationError, not hang."""
    pool = WorkerPool(faulty.broken_factory, 1, name="validator")
    with pytest.raises(ConfigurationError, match="cannot start: ConfigurationError"):
        await pool.start()


async def test_a_crash_while_the_stage_stops_is_transient_not_the_features_fault() -> None:
    """Workers dying during shutdown (SIGTERM to the group): TransientError, no rejection."""
    runner = StageRunner(
        faulty.factory, stage="validator", workers=1, time_limit=30, stopping=lambda: True
    )
    await runner.start()
    try:
        with pytest.raises(TransientError, match=r"crashed .* while the validator was stopping"):
            await runner(faulty.marked_batch({2: "exit"}, 4))
    finally:
        await runner.close()
