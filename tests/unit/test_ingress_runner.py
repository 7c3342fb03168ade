"""The runner's retries and shutdown, with a thread pool and a fake conversion."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from geobus.errors import TransientError
from geobus.ingress import conversion, spool
from geobus.ingress.conversion import ConversionResult
from geobus.ingress.ports import JobRecord
from geobus.ingress.runner import CRASH_ATTEMPTS, PoolRunner
from geobus.ingress.spool import SpoolMeta
from geobus.settings import Settings
from tests.unit.fakes import FakeStore, RecordingPublisher


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _setup(
    tmp_path: Path, retry_first: float = 0.01, **changes: object
) -> tuple[PoolRunner, FakeStore, SpoolMeta]:
    settings = replace(Settings(), spool_dir=tmp_path, **changes)  # type: ignore[arg-type]
    meta = SpoolMeta(
        job_id="j1",
        collection="features",
        media_type="application/geo+json",
        content_encoding="identity",
        source_crs=None,
        callback_url=None,
        created="2026-01-01T00:00:00Z",
        body_bytes=2,
        document_bytes=2,
    )
    spool.body_path(tmp_path, "j1").write_bytes(b"{}")
    spool.write_meta(tmp_path, meta)
    store = FakeStore()
    store.create_job(JobRecord(job_id="j1", created=datetime.now(UTC)))
    runner = PoolRunner(
        settings,
        store,
        RecordingPublisher(),
        lambda: ThreadPoolExecutor(1),
        retry_first=retry_first,
    )
    return runner, store, meta


def _result() -> ConversionResult:
    return ConversionResult(job_id="j1", features=1, batches=1, rejected=0)


async def test_transient_failures_are_retried_until_the_job_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Broker away twice, then fine: the job completes and its spool files go."""
    calls: list[str] = []

    def convert(path: str, meta: SpoolMeta, settings: Settings) -> ConversionResult:
        calls.append(path)
        if len(calls) < 3:
            raise TransientError("publishes are not confirmed")
        return _result()

    monkeypatch.setattr(conversion, "convert_and_publish", convert)
    runner, _, meta = _setup(tmp_path)
    runner.submit(meta)
    assert [m.job_id for m in runner.pending()] == ["j1"]
    for _ in range(500):
        if not runner.pending():
            break
        await asyncio.sleep(0.01)
    assert not runner.pending()
    assert len(calls) == 3
    assert _names(tmp_path) == []
    await runner.aclose()


async def test_a_conversion_that_keeps_crashing_fails_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conversion that raises unexpectedly CRASH_ATTEMPTS times fails the job, spool removed."""
    calls: list[str] = []

    def convert(path: str, meta: SpoolMeta, settings: Settings) -> ConversionResult:
        calls.append(path)
        raise RuntimeError("segfault-like")

    monkeypatch.setattr(conversion, "convert_and_publish", convert)
    runner, store, meta = _setup(tmp_path)
    result = await runner.run(meta)
    assert result is None
    assert len(calls) == CRASH_ATTEMPTS
    assert store.jobs["j1"].status == "failed"
    assert _names(tmp_path) == []
    await runner.aclose()


async def test_shutdown_does_not_wait_for_a_job_waiting_to_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job backing off from a broker failure stops at once at shutdown and stays spooled."""

    def convert(path: str, meta: SpoolMeta, settings: Settings) -> ConversionResult:
        raise TransientError("broker away")

    monkeypatch.setattr(conversion, "convert_and_publish", convert)
    runner, _, meta = _setup(tmp_path, retry_first=60.0, shutdown_timeout=30.0)
    runner.submit(meta)
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await runner.aclose()
    assert time.monotonic() - started < 2
    assert _names(tmp_path) == ["j1.body", "j1.json"]


async def test_shutdown_lets_the_conversion_in_flight_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conversion running at shutdown completes within the timeout; its spool goes."""
    running = threading.Event()

    def convert(path: str, meta: SpoolMeta, settings: Settings) -> ConversionResult:
        running.set()
        time.sleep(0.3)
        return _result()

    monkeypatch.setattr(conversion, "convert_and_publish", convert)
    runner, _, meta = _setup(tmp_path, shutdown_timeout=10.0)
    runner.submit(meta)
    await asyncio.to_thread(running.wait, 5)
    await runner.aclose()
    assert _names(tmp_path) == []
    assert not runner.pending()


async def test_shutdown_timeout_leaves_a_long_conversion_spooled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conversion outlasting GEOBUS_SHUTDOWN_TIMEOUT is interrupted; it stays spooled."""
    running = threading.Event()

    def convert(path: str, meta: SpoolMeta, settings: Settings) -> ConversionResult:
        running.set()
        time.sleep(0.5)
        return _result()

    monkeypatch.setattr(conversion, "convert_and_publish", convert)
    runner, _, meta = _setup(tmp_path, shutdown_timeout=0.05)
    runner.submit(meta)
    await asyncio.to_thread(running.wait, 5)
    await runner.aclose()
    assert _names(tmp_path) == ["j1.body", "j1.json"]
