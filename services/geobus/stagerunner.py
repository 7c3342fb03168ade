"""Running a stage's transform on a batch: contained, time-limited, isolating bad features.

:class:`StageRunner` is what a transform stage's consumer awaits for each
batch. By default it sends the batch (serialized ``FeatureBatch`` bytes) to
a :class:`~geobus.workerpool.WorkerPool` child, which answers with the
serialized ``StageResult``; a crash, a hang past the time limit or an
exception of the vectorised transform makes it bisect the batch
(:mod:`geobus.isolation`) so that only the features that fail alone are
rejected with ``REJECT_REASON_PROCESSING_FAILED``.

No batch is encoded twice: the whole batch goes to the child as the message
body it arrived in, the child sends no batch back when the transform
returned its input unchanged (a validator with nothing to fix), and the
result keeps the bytes it came in for publishing (``StageResult.encoded``).
On 100k points this took the validator from 1.2 to 0.8 CPU seconds.

Time limits while bisecting: the whole batch gets ``time_limit``; a part at
depth *d* gets ``time_limit / 2**d`` but never less than a sixteenth of it,
so that finding one hanging feature in a batch of 2,000 takes about
``3.4 x time_limit`` rather than ``11 x``. A single feature that exceeds its
shortened limit is tried once more with the full limit before it is blamed,
so a feature that is merely slow is never rejected for being slow.

With ``workers=0`` the transform runs in threads of the stage process
(``asyncio.to_thread``): exceptions are still isolated, crashes and hangs
are not (for debugging and profiling only).
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Sequence

from geobus import logs
from geobus.errors import GeobusError, TransientError
from geobus.isolation import bisect, merge
from geobus.stage import StageResult
from geobus.v1 import feature_pb2, rejection_pb2
from geobus.workerpool import WorkerCrashError, WorkerPool, WorkerTimeoutError

Transform = Callable[[feature_pb2.FeatureBatch], StageResult]
TransformFactory = Callable[[], Transform]
"""Builds a stage's transform; picklable, since every worker process calls it once."""

# The floor of the shortened time limits while bisecting, as a fraction of the limit.
MIN_SHARE = 1 / 16
# Imported once by the fork server, so that each new worker starts in milliseconds.
PRELOAD = ("geobus.stagerunner", "geobus.validator.transform", "geobus.reprojector.transform")

# (the output batch, None when it is the input unchanged; the rejections, if any)
SerializedResult = tuple[bytes | None, bytes | None]


def serialized(factory: TransformFactory) -> Callable[[bytes], SerializedResult]:
    """The worker-side handler: FeatureBatch bytes in, StageResult bytes out."""
    # A fresh interpreter: whatever it logs goes out like its stage's lines.
    logs.configure_from_env()
    transform = factory()

    def handle(request: bytes) -> SerializedResult:
        batch = feature_pb2.FeatureBatch.FromString(request)
        result = transform(batch)
        rejections = result.rejections
        return (
            # The batch came back as it went in (a validator with nothing to
            # fix): the stage holds its bytes already, send none back.
            None if result.batch is batch else result.batch.SerializeToString(),
            rejections.SerializeToString() if rejections is not None else None,
        )

    return handle


def deserialize(
    reply: SerializedResult, batch: feature_pb2.FeatureBatch, request: bytes
) -> StageResult:
    """The StageResult a worker sent back for ``batch`` (serialized: ``request``).

    The result keeps the serialized batch it came from, for publishing.
    """
    batch_bytes, rejection_bytes = reply
    rejections = (
        rejection_pb2.RejectionBatch.FromString(rejection_bytes)
        if rejection_bytes is not None
        else None
    )
    if batch_bytes is None:
        return StageResult(batch, rejections, request)
    return StageResult(feature_pb2.FeatureBatch.FromString(batch_bytes), rejections, batch_bytes)


def is_failure(exc: Exception) -> bool:
    """Whether an error may be the features' fault (bisect), not the message's or a dependency's."""
    return not isinstance(exc, GeobusError)


def time_limit_at(time_limit: float, depth: int) -> float:
    """The time limit of a part at bisection depth ``depth`` (see the module docstring)."""
    return max(time_limit / float(2**depth), time_limit * MIN_SHARE)


class _PerThread(threading.local):
    """One transform per thread: some (PROJ transformers) must not be shared."""

    def __init__(self, factory: TransformFactory) -> None:
        self.transform = factory()


class StageRunner:
    """Runs a stage's transform on batches (``await runner(batch)``); see the module docstring."""

    def __init__(
        self,
        factory: TransformFactory,
        *,
        stage: str,
        workers: int,
        time_limit: float,
        preload: Sequence[str] = PRELOAD,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.stage = stage
        self.time_limit = time_limit
        self._stopping = stopping
        self._pool = (
            WorkerPool(functools.partial(serialized, factory), workers, name=stage, preload=preload)
            if workers > 0
            else None
        )
        # Built here too so that a bad setting fails at start-up, in the stage
        # process, with a plain traceback-free ConfigurationError.
        self._local = _PerThread(factory)

    async def start(self) -> None:
        """Start the worker processes (if any)."""
        if self._pool is not None:
            await self._pool.start()

    async def close(self) -> None:
        """Stop the worker processes (if any)."""
        if self._pool is not None:
            await self._pool.close()

    async def __call__(
        self, batch: feature_pb2.FeatureBatch, body: bytes | None = None
    ) -> StageResult:
        """``batch`` transformed; features that fail alone rejected, the rest in one batch.

        ``body`` is ``batch`` serialized when the caller has it (the message
        body): the worker gets it as is rather than the batch encoded again.
        """

        async def attempt(part: feature_pb2.FeatureBatch, depth: int) -> StageResult:
            # Only the whole batch is the body; bisected parts are encoded.
            return await self._attempt(part, depth, body if part is batch else None)

        found = await bisect(batch, attempt, is_failure)
        return merge(batch, self.stage, found)

    async def _attempt(
        self, batch: feature_pb2.FeatureBatch, depth: int, request: bytes | None = None
    ) -> StageResult:
        if self._pool is None:
            return await asyncio.to_thread(self._in_thread, batch)
        if request is None:
            request = batch.SerializeToString()
        limit = time_limit_at(self.time_limit, depth)
        try:
            try:
                reply = await self._pool.run(request, limit)
            except WorkerTimeoutError:
                if len(batch.features) != 1 or limit >= self.time_limit:
                    raise
                reply = await self._pool.run(request, self.time_limit)
        except (WorkerCrashError, WorkerTimeoutError) as exc:
            if self._stopping():
                # A SIGTERM for the whole process group (systemd) ends the
                # workers too: not the features' fault, try again later.
                msg = f"{exc} while the {self.stage} was stopping"
                raise TransientError(msg) from exc
            raise
        return deserialize(reply, batch, request)

    def _in_thread(self, batch: feature_pb2.FeatureBatch) -> StageResult:
        return self._local.transform(batch)
