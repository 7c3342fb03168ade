"""The exit codes of the ``geobus`` command, one meaning each, for scripts.

- 0 done: the command did what it was asked (``send --wait``: the job succeeded);
- 1 the work failed: the job ended ``failed`` or ``dismissed``, a replay was
  not confirmed, ``convert`` met a document that is not GeoJSON;
- 2 usage: bad arguments, a bad ``GEOBUS_*`` variable, an unreadable input file;
- 3 unreachable: the ingress, RabbitMQ or the database could not be reached;
- 4 not found: no such job or dead letter;
- 5 refused: the ingress answered with an error (401, 413, 415, 422, 429, 503, ...);
- 6 timed out: ``send --wait --timeout`` ran out before the job ended;
- 130 interrupted (Ctrl-C).

:func:`for_exception` maps what a command raised to its code, so every
command agrees; argparse itself exits 2 on bad arguments.
"""

from __future__ import annotations

from geobus.errors import ConfigurationError, GeobusError, TransientError

OK = 0
FAILED = 1
USAGE = 2
UNREACHABLE = 3
NOT_FOUND = 4
REFUSED = 5
TIMED_OUT = 6
INTERRUPTED = 130

TABLE: tuple[tuple[int, str], ...] = (
    (OK, "done"),
    (FAILED, "the work failed (job failed or dismissed, replay not confirmed, bad document)"),
    (USAGE, "bad arguments, bad GEOBUS_* variable, unreadable input file"),
    (UNREACHABLE, "the ingress, RabbitMQ or the database could not be reached"),
    (NOT_FOUND, "no such job or dead letter"),
    (REFUSED, "the ingress answered with an error status"),
    (TIMED_OUT, "--wait ran out of time before the job ended"),
    (INTERRUPTED, "interrupted"),
)


class NotFoundError(GeobusError):
    """What the command was asked about does not exist (exit code 4)."""


def for_exception(exc: BaseException) -> int | None:
    """The exit code for an exception that ended a command; None for an unexpected one."""
    import httpx

    from geobus.client import RequestFailedError

    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED
    if isinstance(exc, NotFoundError):
        return NOT_FOUND
    if isinstance(exc, RequestFailedError):
        return NOT_FOUND if exc.status == httpx.codes.NOT_FOUND else REFUSED
    if isinstance(exc, (TransientError, httpx.TransportError, ConnectionError)):
        return UNREACHABLE
    if isinstance(exc, TimeoutError):
        return TIMED_OUT
    if isinstance(exc, (ConfigurationError, OSError)):
        # OSError here is about local files: network errors are caught above.
        return USAGE
    if isinstance(exc, GeobusError):
        return FAILED
    return None
