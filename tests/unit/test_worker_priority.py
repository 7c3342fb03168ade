"""Batch work runs in worker processes below the CPU priority of the event loops."""

from __future__ import annotations

import os

from geobus.ingress.runner import process_pool
from geobus.settings import Settings
from geobus.workerpool import WORKER_NICENESS, WorkerPool


def _niceness_handler() -> object:
    return lambda _request: os.nice(0)


def _expected(step: int) -> int:
    return min(19, os.nice(0) + step)


async def test_stage_workers_run_below_the_stage() -> None:
    """A stage's worker process is WORKER_NICENESS steps nicer than the stage process."""
    pool = WorkerPool(_niceness_handler, 1, name="validator")  # type: ignore[arg-type]
    await pool.start()
    try:
        assert await pool.run(b"", 30) == _expected(WORKER_NICENESS)
    finally:
        await pool.close()


def test_the_conversion_worker_runs_below_the_ingress() -> None:
    """The ingress's conversion worker is GEOBUS_BATCH_NICENESS steps nicer than the ingress."""
    niceness = Settings().batch_niceness
    assert niceness == 15
    pool = process_pool(1, niceness)
    try:
        assert pool.submit(os.nice, 0).result(timeout=60) == _expected(niceness)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
