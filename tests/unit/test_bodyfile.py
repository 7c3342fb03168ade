"""A spool body written as it arrives: O_DIRECT blocks, or page cache with flushes (BodyFile)."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from pathlib import Path

import pytest

from geobus.ingress import bodyfile
from geobus.ingress.bodyfile import BLOCK_BYTES, BodyFile

CHUNK = 256 * 1024


def _body(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + b"t" * (size % 256)


async def _write_all(body: BodyFile, data: bytes, chunk: int = CHUNK) -> None:
    for start in range(0, len(data), chunk):
        await body.write(data[start : start + chunk])
    await body.finish()
    await asyncio.to_thread(body.sync_and_close)


@pytest.mark.parametrize("size", [1, 4096, BLOCK_BYTES, 3 * BLOCK_BYTES + 12345])
async def test_the_file_holds_the_body_exactly(tmp_path: Path, size: int) -> None:
    """Whole blocks, a partial last block and a body smaller than a block."""
    data = _body(size)
    body = BodyFile(tmp_path / "a.body")
    await _write_all(body, data, chunk=1000 if size < 10_000 else CHUNK)
    assert (tmp_path / "a.body").read_bytes() == data
    assert body.size == size


async def test_full_blocks_bypass_the_page_cache(tmp_path: Path) -> None:
    """On this machine's file system the blocks go out with O_DIRECT (what the 202 relies on)."""
    body = BodyFile(tmp_path / "a.body")
    assert not (tmp_path / "a.body").exists()  # created by the first write, in a thread
    await body.write(b"a" * BLOCK_BYTES)
    await body.finish()
    try:
        assert body.direct
    finally:
        body.close()


async def test_a_small_body_is_created_by_its_fsync(tmp_path: Path) -> None:
    """A body below one block reaches the disk only in sync_and_close (one thread hop)."""
    body = BodyFile(tmp_path / "a.body")
    await body.write(b"{}")
    await body.finish()
    assert not (tmp_path / "a.body").exists()
    await asyncio.to_thread(body.sync_and_close)
    assert (tmp_path / "a.body").read_bytes() == b"{}"


async def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    """O_EXCL: a job id that somehow exists fails the request instead of mixing bodies."""
    (tmp_path / "a.body").write_bytes(b"other")
    body = BodyFile(tmp_path / "a.body")
    await body.write(b"{}")
    with pytest.raises(FileExistsError):
        await asyncio.to_thread(body.sync_and_close)
    assert (tmp_path / "a.body").read_bytes() == b"other"


async def test_at_most_two_blocks_are_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the disk is slow, the reader waits instead of filling more memory."""
    release = threading.Event()
    started: list[int] = []
    real = BodyFile._write_block

    def slow(self: BodyFile, data: memoryview, offset: int) -> None:
        started.append(offset)
        release.wait(5)
        real(self, data, offset)

    monkeypatch.setattr(BodyFile, "_write_block", slow)
    body = BodyFile(tmp_path / "a.body")
    await body.write(b"a" * BLOCK_BYTES)
    await body.write(b"b" * (BLOCK_BYTES - 1))  # second block not full: nothing waits
    blocked = asyncio.ensure_future(body.write(b"b"))  # second block full: two in flight
    await asyncio.sleep(0.1)
    assert not blocked.done()
    assert started == [0, BLOCK_BYTES]
    release.set()
    await asyncio.wait_for(blocked, 5)
    await _write_all(body, b"c" * 10)
    expected = b"a" * BLOCK_BYTES + b"b" * BLOCK_BYTES + b"c" * 10
    assert (tmp_path / "a.body").read_bytes() == expected


async def test_a_failed_block_write_fails_the_body(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk is raised to the request (which deletes the file), never ignored."""

    def full(fd: int, data: memoryview, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bodyfile.os, "pwrite", full)
    body = BodyFile(tmp_path / "a.body")
    await body.write(b"a" * BLOCK_BYTES)
    with pytest.raises(OSError, match="No space left"):
        await body.finish()
    await body.abandon()


async def test_a_refused_o_direct_write_goes_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EINVAL from an O_DIRECT write (alignment the device wants): same bytes, other way."""
    body = BodyFile(tmp_path / "a.body")
    pwrite = os.pwrite
    refused: list[int] = []

    def picky(fd: int, data: memoryview, offset: int) -> int:
        if fd == body._direct:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return pwrite(fd, data, offset)

    monkeypatch.setattr(bodyfile.os, "pwrite", picky)
    data = _body(2 * BLOCK_BYTES + 7)
    await _write_all(body, data)
    assert refused == [0, BLOCK_BYTES]
    assert (tmp_path / "a.body").read_bytes() == data


async def test_without_o_direct_the_body_is_flushed_every_few_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system that refuses O_DIRECT at open: page cache, fdatasync now and then."""
    synced: list[int] = []

    def fdatasync(fd: int) -> None:
        synced.append(os.fstat(fd).st_size)

    real_open = os.open

    def no_direct(path: Path, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    monkeypatch.setattr(bodyfile.os, "open", no_direct)
    monkeypatch.setattr(bodyfile, "BLOCK_BYTES", 6)
    monkeypatch.setattr(bodyfile, "WRITEBACK_BYTES", 10)
    monkeypatch.setattr(bodyfile.os, "fdatasync", fdatasync)
    body = BodyFile(tmp_path / "a.body")
    for _ in range(5):
        await body.write(b"x" * 6)
        await body.finish()
    assert not body.direct
    await asyncio.to_thread(body.sync_and_close)
    # Flushed when a block crossed 10 (6..12) and 20 (18..24); 30 ends the last block.
    assert synced == [12, 24, 30]
    assert (tmp_path / "a.body").read_bytes() == b"x" * 30


def test_a_short_write_is_resumed_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pwrite may take part of the data (a signal): the rest follows, nothing twice."""
    pwrite = os.pwrite

    def short(fd: int, data: memoryview, offset: int) -> int:
        return pwrite(fd, data[: max(1, len(data) // 2)], offset)

    monkeypatch.setattr(bodyfile.os, "pwrite", short)
    path = tmp_path / "a.body"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        bodyfile._pwrite_all(fd, memoryview(b"hello wide world"), 0)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"hello wide world"
