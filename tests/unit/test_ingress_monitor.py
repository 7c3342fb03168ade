"""The broker monitor's loop with a fake probe: blocked, unblocked, depths, failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from geobus.errors import TransientError
from geobus.ingress.admission import BrokerPressure
from geobus.ingress.monitor import watch


@dataclass
class FakeProbe:
    """Confirms canaries while ``open`` is set; fails them with ``error`` when given."""

    depths: dict[str, int] = field(default_factory=lambda: {"p.validator": 3})
    open: asyncio.Event = field(default_factory=asyncio.Event)
    error: Exception | None = None
    depth_error: Exception | None = None
    canaries: int = 0

    async def queue_depths(self) -> Mapping[str, int]:
        if self.depth_error is not None:
            raise self.depth_error
        return self.depths

    async def publish_canary(self) -> None:
        self.canaries += 1
        if self.error is not None:
            raise self.error
        await self.open.wait()

    async def close(self) -> None:
        pass


@asynccontextmanager
async def watching(probe: FakeProbe, pressure: BrokerPressure) -> AsyncIterator[None]:
    task = asyncio.create_task(
        watch(probe, pressure, interval=0.01, canary_timeout=0.05, canary_abandon=5)
    )
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _until(condition: Callable[[], bool], within: float = 2.0) -> None:
    for _ in range(int(within / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the condition did not hold in time")


async def test_confirmed_canaries_keep_the_broker_open_and_depths_fresh() -> None:
    """A broker that confirms: not blocked, depths recorded, a canary about every interval."""
    probe, pressure = FakeProbe(), BrokerPressure()
    probe.open.set()
    async with watching(probe, pressure):
        await _until(lambda: probe.canaries >= 3)
    assert pressure.blocked is None
    assert pressure.deepest() == ("p.validator", 3)


async def test_an_unconfirmed_canary_blocks_until_the_broker_confirms_it() -> None:
    """No confirm within canary_timeout (memory alarm): blocked; the late confirm unblocks."""
    probe, pressure = FakeProbe(), BrokerPressure()
    async with watching(probe, pressure):
        await _until(lambda: pressure.blocked is not None)
        assert "not confirmed" in (pressure.blocked or "")
        canaries = probe.canaries
        await asyncio.sleep(0.1)
        # The same canary is awaited: no pile of publishes on a blocked connection.
        assert probe.canaries == canaries == 1
        probe.open.set()
        await _until(lambda: pressure.blocked is None)


async def test_a_failing_publish_counts_as_blocked() -> None:
    """A canary that fails (connection lost) blocks with the error as the reason."""
    probe, pressure = FakeProbe(error=TransientError("connection reset")), BrokerPressure()
    async with watching(probe, pressure):
        await _until(lambda: pressure.blocked is not None)
    assert "connection reset" in (pressure.blocked or "")


async def test_a_failing_depth_poll_keeps_the_last_depths_and_says_why() -> None:
    """When the depths cannot be read, the error is kept and publishing still decides."""
    probe, pressure = FakeProbe(), BrokerPressure()
    probe.open.set()
    async with watching(probe, pressure):
        await _until(lambda: pressure.deepest() is not None)
        probe.depth_error = TransientError("channel closed")
        await _until(lambda: pressure.depth_error is not None)
    assert "channel closed" in (pressure.depth_error or "")
    assert pressure.blocked is None
