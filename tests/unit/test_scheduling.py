"""A thread's CPU time slice (geobus.scheduling), on this machine's kernel (6.12+)."""

from __future__ import annotations

import os
import threading

import pytest

from geobus import scheduling


def _in_a_thread(seconds: float) -> tuple[float | None, float | None, float | None]:
    out: list[tuple[float | None, float | None, float | None]] = []

    def run() -> None:
        granted = scheduling.request_slice(seconds)
        inherited: list[float | None] = []
        child = threading.Thread(target=lambda: inherited.append(scheduling.current_slice()))
        child.start()
        child.join()
        out.append((granted, scheduling.current_slice(), inherited[0]))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return out[0]


def test_a_thread_gets_the_slice_it_asks_for_and_passes_it_on() -> None:
    """Granted, read back, inherited by a thread it starts; the caller's own is untouched."""
    before = scheduling.current_slice()
    assert before is not None
    granted, now, child = _in_a_thread(0.0001)
    assert granted == pytest.approx(0.0001)
    assert now == pytest.approx(0.0001)
    assert child == pytest.approx(0.0001)
    assert scheduling.current_slice() == before


@pytest.mark.parametrize(("asked", "granted"), [(1.0, 0.1), (0.00001, 0.0001)])
def test_the_kernel_clamps_a_slice_and_says_which(asked: float, granted: float) -> None:
    """Outside 0.1-100 ms the kernel clamps; the answer is the slice the thread has."""
    answer, now, _child = _in_a_thread(asked)
    assert answer == pytest.approx(granted)
    assert now == pytest.approx(granted)


def test_real_time_for_the_calling_thread_alone() -> None:
    """SCHED_RR for the caller; a thread and a process it starts afterwards stay ordinary.

    Needs CAP_SYS_NICE, which tests have as root (as CI runs them).
    """
    out: dict[str, object] = {}

    def run() -> None:
        out["granted"] = scheduling.request_realtime(1)
        out["policy"] = os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK
        out["realtime"] = scheduling.is_realtime()
        child = threading.Thread(target=lambda: out.update(child=scheduling.is_realtime()))
        child.start()
        child.join()
        pid = os.fork()
        if pid == 0:
            os._exit(3 if scheduling.is_realtime() else 0)
        out["forked"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        scheduling.return_to_ordinary()
        out["after"] = scheduling.is_realtime()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert out["granted"] is True, "run the tests as root (CAP_SYS_NICE)"
    assert out["policy"] == os.SCHED_RR
    assert out["realtime"] is True
    assert out["child"] is False
    assert out["forked"] == 0
    assert out["after"] is False
    assert not scheduling.is_realtime()  # the test's own thread was never touched


def test_a_lent_priority_is_borrowed_by_a_thread_that_asks() -> None:
    """lend_realtime(p): borrow_realtime() makes the caller SCHED_RR p; lend 0: nothing."""
    out: list[bool] = []

    def run() -> None:
        scheduling.borrow_realtime()
        out.append(scheduling.is_realtime())
        scheduling.return_to_ordinary()

    try:
        for lent in (1, 0):
            scheduling.lend_realtime(lent)
            thread = threading.Thread(target=run)
            thread.start()
            thread.join()
    finally:
        scheduling.lend_realtime(0)
    assert out == [True, False]


def test_real_time_refused_without_the_capability() -> None:
    """A process without CAP_SYS_NICE (here: user nobody) is refused and keeps its policy."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            granted = scheduling.request_realtime(1)
            code = 0 if not granted and not scheduling.is_realtime() else 4
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def test_real_time_priority_out_of_range_is_refused() -> None:
    """The kernel's own range check: 100 is not a SCHED_RR priority."""
    out: list[bool] = []
    thread = threading.Thread(target=lambda: out.append(scheduling.request_realtime(100)))
    thread.start()
    thread.join()
    assert out == [False]
