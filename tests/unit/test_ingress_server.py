"""The ingress's uvicorn server: what it does around start-up."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from collections.abc import Iterator

import pytest
import uvicorn
from starlette.applications import Starlette

from geobus import scheduling
from geobus.ingress.admission import Drain
from geobus.ingress.server import LOOP_SLICE, SWITCH_INTERVAL, DrainingServer


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    interval = sys.getswitchinterval()
    slice_ = scheduling.current_slice()
    yield
    gc.unfreeze()  # the rest of the test session keeps its ordinary collector
    sys.setswitchinterval(interval)
    if slice_ is not None:
        scheduling.request_slice(slice_)


async def test_start_up_freezes_what_it_made_and_shortens_gil_holds(unfrozen: None) -> None:
    """After start-up the long-lived objects are out of the cyclic collector's walks."""
    config = uvicorn.Config(Starlette(), host="127.0.0.1", port=0, lifespan="off", log_config=None)
    server = DrainingServer(config, Drain(), drain_seconds=0)
    assert gc.get_freeze_count() == 0
    serving = asyncio.ensure_future(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:  # noqa: ASYNC110 (uvicorn offers a flag, no event)
                await asyncio.sleep(0.01)
        assert gc.get_freeze_count() > 10_000  # the modules of an ingress and more
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)
        assert scheduling.current_slice() == pytest.approx(LOOP_SLICE)
    finally:
        server.should_exit = True
        await serving


async def test_start_up_puts_the_event_loop_in_real_time_when_asked(unfrozen: None) -> None:
    """GEOBUS_INGRESS_RT_PRIORITY: the thread that runs the loop becomes SCHED_RR."""
    config = uvicorn.Config(Starlette(), host="127.0.0.1", port=0, lifespan="off", log_config=None)
    server = DrainingServer(config, Drain(), drain_seconds=0, rt_priority=1)
    assert not scheduling.is_realtime()
    serving = asyncio.ensure_future(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:  # noqa: ASYNC110 (uvicorn offers a flag, no event)
                await asyncio.sleep(0.01)
        assert scheduling.is_realtime(), "run the tests as root (CAP_SYS_NICE)"
        # The persisting threads borrow it (geobus.ingress.intake).
        helper: list[bool] = []

        def run() -> None:
            scheduling.borrow_realtime()
            helper.append(scheduling.is_realtime())

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        assert helper == [True]
    finally:
        server.should_exit = True
        await serving
        scheduling.return_to_ordinary()
        scheduling.lend_realtime(0)
