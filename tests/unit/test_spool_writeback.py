"""The spool body is flushed to disk in parts while it streams in (spool.Writeback)."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from pathlib import Path

import pytest

from geobus.ingress import spool


async def test_a_body_is_flushed_in_the_background_every_few_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past each ``every`` bytes the written part reaches the kernel and is fdatasynced."""
    synced: list[int] = []

    def fdatasync(fd: int) -> None:
        synced.append(os.fstat(fd).st_size)

    monkeypatch.setattr(spool.os, "fdatasync", fdatasync)
    with (tmp_path / "a.body").open("xb") as handle:
        writeback = spool.Writeback(handle, every=10)
        size = 0
        for _ in range(5):
            handle.write(b"x" * 6)
            size += 6
            writeback.wrote(size)
            await writeback.finish()  # let each flush run before the next write
        await writeback.finish()
    # Flushed at 12 (first time past 10) and 24 (12 more); not at 30 (only 6 more).
    assert synced == [12, 24]


async def test_only_one_flush_runs_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a flush waits for the disk, more writes start no second one."""
    release = threading.Event()
    calls: list[int] = []

    def fdatasync(fd: int) -> None:
        calls.append(fd)
        release.wait(5)

    monkeypatch.setattr(spool.os, "fdatasync", fdatasync)
    with (tmp_path / "a.body").open("xb") as handle:
        writeback = spool.Writeback(handle, every=1)
        handle.write(b"ab")
        writeback.wrote(2)
        await asyncio.sleep(0.05)
        for size in range(3, 10):
            handle.write(b"c")
            writeback.wrote(size)
        assert len(calls) == 1
        release.set()
        await writeback.finish()


async def test_a_failed_flush_fails_the_body(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An I/O error of a background flush is raised by finish(); abandon() swallows it."""

    def fdatasync(fd: int) -> None:
        raise OSError(errno.EIO, "disk on fire")

    monkeypatch.setattr(spool.os, "fdatasync", fdatasync)
    with (tmp_path / "a.body").open("xb") as handle:
        writeback = spool.Writeback(handle, every=1)
        handle.write(b"ab")
        writeback.wrote(2)
        with pytest.raises(OSError, match="disk on fire"):
            await writeback.finish()
        await writeback.abandon()
