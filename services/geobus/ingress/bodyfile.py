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
systems), the same threads write the blocks through the page cache and
``fdatasync`` every ``WRITEBACK_BYTES``, so that the final fsync stays short.

The file is created by the first thread that writes to it: a body smaller
than a block (every webhook of a few KB) costs no thread hop before its
fsync.

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
import threading
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


class BodyFile:
    """A new spool body file at ``path``, written as the body arrives (see the module)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._opening = threading.Lock()
        self._fd: int | None = None
        self._direct: int | None = None
        self._offset = 0  # where the block being filled starts
        self._block: mmap.mmap | None = None
        self._fill = 0
        self._free: list[mmap.mmap] = []
        self._in_flight: collections.deque[tuple[asyncio.Future[None], mmap.mmap]] = (
            collections.deque()
        )
        self._closed = False

    def _open(self) -> int:
        """The file's descriptor; creates the file (it must not exist) first. Blocking."""
        with self._opening:
            if self._closed:
                raise OSError(errno.EBADF, f"{self.path}: closed")
            if self._fd is None:
                self._fd = os.open(self.path, _FLAGS | os.O_CREAT | os.O_EXCL, _MODE)
                if hasattr(os, "O_DIRECT"):
                    # EINVAL: no O_DIRECT on this file system.
                    with contextlib.suppress(OSError):
                        self._direct = os.open(self.path, _FLAGS | os.O_DIRECT)
            return self._fd

    def _write_block(self, data: memoryview, offset: int) -> None:
        """Write a full block with O_DIRECT, or the ordinary way. Blocking: a thread."""
        fd = self._open()
        if self._direct is not None:
            try:
                _pwrite_all(self._direct, data, offset)
                return
            except OSError as exc:
                # Accepted at open, refused at write (alignment the device wants
                # bigger than ours, a file system that only pretends): same
                # bytes, same place, the ordinary way.
                if exc.errno != errno.EINVAL:
                    raise
        _pwrite_all(fd, data, offset)
        # Through the page cache: flushed in parts, so that the fsync before
        # the 202 does not have the whole body left to write.
        if (offset + len(data)) // WRITEBACK_BYTES != offset // WRITEBACK_BYTES:
            os.fdatasync(fd)

    @property
    def direct(self) -> bool:
        """Whether full blocks bypass the page cache (known once the file exists)."""
        return self._direct is not None

    @property
    def size(self) -> int:
        """Bytes written or waiting in the block being filled."""
        return self._offset + self._fill

    async def write(self, chunk: bytes) -> None:
        """Append ``chunk``; wait only when every block is in flight (the disk is slower)."""
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
        block, self._block, self._fill = self._block, None, 0
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, self._write_block, memoryview(block), self._offset)
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

    async def finish(self) -> None:
        """Wait for every block and flush in flight; raise the first error (body not safe)."""
        while self._in_flight:
            await self._reclaim()

    def sync_and_close(self) -> None:
        """Write the partial last block, fsync and close. Blocking: a thread, after finish()."""
        try:
            fd = self._open()
            if self._block is not None and self._fill:
                _pwrite_all(fd, memoryview(self._block)[: self._fill], self._offset)
            os.fsync(fd)
        finally:
            self.close()

    async def abandon(self) -> None:
        """Wait for the writes in flight, ignoring their outcome, and close."""
        while self._in_flight:
            with contextlib.suppress(Exception):
                await self._reclaim()
        self.close()

    def close(self) -> None:
        """Close the file without syncing it (idempotent; never with writes in flight)."""
        with self._opening:
            if self._closed:
                return
            self._closed = True
            for fd in (self._fd, self._direct):
                if fd is not None:
                    os.close(fd)
        for block in (*self._free, *([self._block] if self._block is not None else [])):
            # A view the GC has not dropped yet keeps the memory; it goes with the view.
            with contextlib.suppress(BufferError):
                block.close()
        self._free.clear()
        self._block = None
