"""A thread's CPU time slice (geobus.scheduling), on this machine's kernel (6.12+)."""

from __future__ import annotations

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
