"""CPU scheduling requests of a thread: a short time slice, or real time, for the event loop.

Linux's EEVDF scheduler (6.6+) gives every runnable thread a time slice and
picks the one with the earliest virtual deadline (its start plus its slice).
From Linux 6.12 a thread may ask for a shorter slice with ``sched_setattr``
(``sched_runtime`` of a ``SCHED_OTHER`` thread, 0.1-100 ms, no privilege
needed): its deadlines come sooner, so when it wakes up it preempts a thread
that has been crunching for a while instead of waiting for that thread's
slice (1.4 ms by default here, several of them on a saturated machine) to
run out. It does not give the thread more CPU in all; nice values do that.

Python has no binding for the call: it goes through libc's ``syscall``.
Elsewhere (another OS, an older kernel, a seccomp filter) the request is
refused and nothing changes.

With ``CAP_SYS_NICE`` a thread may instead become real-time
(:func:`request_realtime`, ``SCHED_RR``): it runs as soon as it is runnable,
ahead of every ordinary thread, whatever their nice values and slices.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

# struct sched_attr (SCHED_ATTR_SIZE_VER1): size, policy, flags, nice,
# priority, runtime, deadline, period, util_min, util_max.
_ATTR = struct.Struct("IIQiIQQQII")
_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}  # sched_setattr, sched_getattr
_SCHED_OTHER = 0


def _call(number: int, *args: object) -> int:
    libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols: libc's syscall()
    result: int = libc.syscall(number, *args)
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return result


def request_slice(seconds: float) -> float | None:
    """Ask for a time slice of ``seconds`` for the calling thread; the slice it now has.

    The kernel clamps the request to 0.1-100 ms. None: refused, nothing
    changed. Threads the caller starts afterwards inherit the slice.
    """
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None or not hasattr(os, "sched_getscheduler"):
        return None
    if os.sched_getscheduler(0) != _SCHED_OTHER:
        return None  # a real-time thread has no slice to shorten
    attr = ctypes.create_string_buffer(
        _ATTR.pack(_ATTR.size, _SCHED_OTHER, 0, os.getpriority(os.PRIO_PROCESS, 0), 0,
                   round(seconds * 1e9), 0, 0, 0, 0),
        _ATTR.size,
    )  # fmt: skip
    try:
        _call(numbers[0], 0, attr, 0)
    except OSError:
        return None
    return current_slice()


def current_slice() -> float | None:
    """The calling thread's time slice in seconds, or None where it cannot be read."""
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        return None
    attr = ctypes.create_string_buffer(_ATTR.size)
    try:
        _call(numbers[1], 0, attr, _ATTR.size, 0)
    except OSError:
        return None
    runtime: int = _ATTR.unpack(attr.raw)[5]
    return runtime / 1e9


def request_realtime(priority: int) -> bool:
    """Make the calling thread ``SCHED_RR`` at ``priority`` (1-99); False: refused, nothing changed.

    Only the calling thread: with ``SCHED_RESET_ON_FORK`` the threads and
    processes it starts afterwards are ordinary ones again (they would
    otherwise inherit the policy), so that its pools, the conversion worker
    among them, never run batch work in real time. Linux keeps 5 % of every
    second for ordinary threads (``kernel.sched_rt_runtime_us``) even if a
    real-time thread never blocked.
    """
    if not hasattr(os, "SCHED_RESET_ON_FORK"):
        return False  # not Linux
    try:
        os.sched_setscheduler(0, os.SCHED_RR | os.SCHED_RESET_ON_FORK, os.sched_param(priority))
    except OSError:  # EPERM without CAP_SYS_NICE (or an RLIMIT_RTPRIO), EINVAL out of range
        return False
    return True


_lent = 0
"""The real-time priority :func:`lend_realtime` shares with helper threads (0: none)."""


def lend_realtime(priority: int) -> None:
    """Let threads that start with :func:`borrow_realtime` run at ``priority`` too.

    For the few threads the event loop waits on for every request (the
    ingress's persisting pool): new threads do not inherit the loop's
    policy (``SCHED_RESET_ON_FORK``), so they ask for it when they start.
    """
    global _lent
    _lent = priority


def borrow_realtime() -> None:
    """Make the calling thread real-time at the lent priority, if one was lent (an initializer)."""
    if _lent:
        request_realtime(_lent)


def is_realtime() -> bool:
    """Whether the calling thread runs under a real-time policy (``SCHED_RR``/``SCHED_FIFO``)."""
    if not hasattr(os, "sched_getscheduler"):
        return False  # not Linux
    policy = os.sched_getscheduler(0) & ~getattr(os, "SCHED_RESET_ON_FORK", 0)
    return policy in (os.SCHED_RR, os.SCHED_FIFO)


def return_to_ordinary() -> None:
    """Make the calling thread ``SCHED_OTHER`` again (what :func:`request_realtime` undoes)."""
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
