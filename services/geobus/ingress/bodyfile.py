"""The spool file of a body that is still arriving: written past the page cache.

Written through the page cache on the event loop, the body cost the loop a
copy of every byte into the kernel (~25 ms for a 38 MB body, measured: the
202 came that much later than a bare endpoint that drops the body), and the
fsync before the 202 then had to write out what was still dirty.

Here the loop copies each chunk into one of a few page-aligned blocks
(``BLOCK_BYTES``, a user-space copy at memory speed) and a thread writes each
full block with ``O_DIRECT``: the disk reads it from that memory (DMA, no
kernel copy, no dirty pages) while the loop receives the next one, at most
``IN_FLIGHT`` blocks at a time. The last, partial block goes through the
page cache (``O_DIRECT`` wants whole blocks), and the fsync before the 202
has only that part and the device's cache left to flush.

Where the file system refuses ``O_DIRECT`` (tmpfs, some network file
systems), the body is written through the page cache on the loop, flushed
every ``WRITEBACK_BYTES`` by a background ``fdatasync`` so that the final
fsync stays short.

On the event loop: :meth:`BodyFile.write` each chunk, :meth:`finish` once the
body is complete (it raises the first failed write), then
:meth:`sync_and_close` in a thread; :meth:`abandon` and :meth:`close` when the
body is given up.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import mmap
import os
from pathlib import Path

BLOCK_BYTES = 2 * 1024 * 1024
"""One O_DIRECT write: a multiple of every block size a disk has."""
IN_FLIGHT = 2
"""Blocks being written at a time; one more is filled meanwhile."""
WRITEBACK_BYTES = 16 * 1024 * 1024
"""Without O_DIRECT: how much is written between two background flushes."""
_FLAGS = os.O_WRONLY | os.O_CLOEXEC
_MODE = 0o666  # as open(): the umask decides


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (a regular file may take part of it: a signal)."""
    while data:
        written = os.pwrite(fd, data, offset)
        data = data[written:]
        offset += written


def _write_block(direct: int, fd: int, data: memoryview, offset: int) -> None:
    """Write a full block with O_DIRECT, through the page cache if the file system refuses."""
    try:
        _pwrite_all(direct, data, offset)
    except OSError as exc:
        # Accepted at open, refused at write (alignment the device wants
        # bigger than ours, a file system that only pretends): same bytes,
        # same place, the ordinary way.
        if exc.errno != errno.EINVAL:
            raise
        _pwrite_all(fd, data, offset)


class BodyFile:
    """A new spool body file, written as the body arrives (see the module)."""

    def __init__(self, fd: int, direct: int | None) -> None:
        self._fd = fd
        self._direct = direct
        self._offset = 0  # where the block being filled starts
        self._block: mmap.mmap | None = None
        self._fill = 0
        self._free: list[mmap.mmap] = []
        self._in_flight: collections.deque[tuple[asyncio.Future[None], mmap.mmap]] = (
            collections.deque()
        )
        self._flushed = 0
        self._flushing: asyncio.Future[None] | None = None
        self._closed = False

    @classmethod
    def create(cls, path: Path) -> BodyFile:
        """Create ``path`` (it must not exist). Blocking: call it in a thread."""
        fd = os.open(path, _FLAGS | os.O_CREAT | os.O_EXCL, _MODE)
        direct: int | None = None
        if hasattr(os, "O_DIRECT"):
            with contextlib.suppress(OSError):  # EINVAL: no O_DIRECT on this file system
                direct = os.open(path, _FLAGS | os.O_DIRECT)
        return cls(fd, direct)

    @property
    def direct(self) -> bool:
        """Whether full blocks bypass the page cache."""
        return self._direct is not None

    async def write(self, chunk: bytes) -> None:
        """Append ``chunk``; wait only when every block is in flight (the disk is slower)."""
        if self._direct is None:
            _pwrite_all(self._fd, memoryview(chunk), self._offset)
            self._offset += len(chunk)
            self._flush_if_due()
            return
        data = memoryview(chunk)
        while data:
            if self._block is None:
                self._block = self._free.pop() if self._free else mmap.mmap(-1, BLOCK_BYTES)
            part = min(len(data), BLOCK_BYTES - self._fill)
            self._block[self._fill : self._fill + part] = data[:part]
            self._fill += part
            data = data[part:]
            if self._fill == BLOCK_BYTES:
                await self._submit()

    async def _submit(self) -> None:
        assert self._block is not None
        assert self._direct is not None
        block, self._block, self._fill = self._block, None, 0
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            None, _write_block, self._direct, self._fd, memoryview(block), self._offset
        )
        self._in_flight.append((future, block))
        self._offset += BLOCK_BYTES
        while self._in_flight and (
            len(self._in_flight) >= IN_FLIGHT or self._in_flight[0][0].done()
        ):
            await self._reclaim()

    async def _reclaim(self) -> None:
        """Wait for the oldest block in flight; raise its error, reuse its memory."""
        future, block = self._in_flight[0]
        try:
            await asyncio.shield(future)
        finally:
            if future.done():
                self._in_flight.popleft()
                self._free.append(block)

    def _flush_if_due(self) -> None:
        if self._offset - self._flushed < WRITEBACK_BYTES:
            return
        if self._flushing is not None and not self._flushing.done():
            return  # the previous flush is still running: the next one catches up
        if self._flushing is not None and self._flushing.exception() is not None:
            return  # finish() reports it
        self._flushed = self._offset
        self._flushing = asyncio.ensure_future(asyncio.to_thread(os.fdatasync, self._fd))

    @property
    def size(self) -> int:
        """Bytes written or waiting in the block being filled."""
        return self._offset + self._fill

    async def finish(self) -> None:
        """Wait for every block and flush in flight; raise the first error (body not safe)."""
        while self._in_flight:
            await self._reclaim()
        if self._flushing is not None:
            await self._flushing

    def sync_and_close(self) -> None:
        """Write the partial last block, fsync and close. Blocking: a thread, after finish()."""
        try:
            if self._block is not None and self._fill:
                _pwrite_all(self._fd, memoryview(self._block)[: self._fill], self._offset)
            os.fsync(self._fd)
        finally:
            self.close()

    async def abandon(self) -> None:
        """Wait for the writes in flight, ignoring their outcome, and close."""
        while self._in_flight:
            with contextlib.suppress(Exception):
                await self._reclaim()
        if self._flushing is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._flushing)
        self.close()

    def close(self) -> None:
        """Close the file without syncing it (idempotent; never with writes in flight)."""
        if self._closed:
            return
        self._closed = True
        for fd in (self._fd, self._direct):
            if fd is not None:
                os.close(fd)
        # Blocks still in flight stay referenced by their futures' callers.
        for block in (*self._free, *([self._block] if self._block is not None else [])):
            # A view the GC has not dropped yet keeps the memory; it goes with the view.
            with contextlib.suppress(BufferError):
                block.close()
        self._free.clear()
        self._block = None
