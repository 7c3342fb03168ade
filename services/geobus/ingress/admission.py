"""Whether the ingress can take one more document, decided without I/O.

``POST /v1/features`` asks :class:`Admission` before it reads a byte of the
body, and again for every chunk it spools. Every answer comes from state in
memory, so the check never waits on the broker or the disk:

- ``draining`` — set by SIGTERM: the ingress is going away (503);
- ``broker`` — :class:`BrokerPressure`, kept current by
  :mod:`geobus.ingress.monitor` once a second: the broker blocks publishers
  (memory or disk alarm, or it does not confirm at all) or a stage queue is
  deeper than ``GEOBUS_MAX_QUEUE_DEPTH`` (503);
- per client — jobs accepted and not yet converted, plus uploads in progress,
  against ``GEOBUS_MAX_JOBS_PER_CLIENT`` (429);
- spool budget — bytes of jobs not yet converted plus the uploads in
  progress, against ``GEOBUS_SPOOL_MAX_BYTES`` (503; a document larger than
  the whole budget is 413, it would never fit).

What is still spooled comes from the runner (``pending``): the jobs it was
given and has not finished; their spool files are deleted when they finish.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from geobus.ingress.spool import SpoolMeta
from geobus.settings import Settings

STALE_AFTER = 10.0
"""Seconds after which queue depths that could not be refreshed no longer count."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a document is not accepted now, as the HTTP answer says it."""

    status: int
    code: str
    detail: str
    retry_after: int | None


@dataclass(slots=True)
class BrokerPressure:
    """What the broker monitor saw last; written by the monitor, read per request."""

    blocked: str | None = None
    """Why publishing does not go through right now, or None."""
    depths: Mapping[str, int] = field(default_factory=dict)
    """Ready messages per stage queue at ``checked_at``."""
    checked_at: float = 0.0
    """``time.monotonic()`` of the last successful depth poll."""
    depth_error: str | None = None
    """Why the last depth poll failed, or None."""

    def set_depths(self, depths: Mapping[str, int], at: float | None = None) -> None:
        """Record a successful poll of the stage queues."""
        self.depths = dict(depths)
        self.checked_at = time.monotonic() if at is None else at

    def deepest(self, now: float | None = None) -> tuple[str, int] | None:
        """The deepest stage queue and its depth, unless the poll is stale."""
        moment = time.monotonic() if now is None else now
        if not self.depths or moment - self.checked_at > STALE_AFTER:
            return None
        name = max(self.depths, key=lambda q: self.depths[q])
        return name, self.depths[name]


class Drain:
    """Set once, by the server's SIGTERM handler: a plain flag, safe to set from a signal."""

    def __init__(self) -> None:
        self.started = False

    def start(self) -> None:
        """From now on the ingress refuses new documents."""
        self.started = True


class Upload:
    """One document being spooled: its bytes count against the budget until it ends."""

    def __init__(self, admission: Admission, client: str, declared: int | None) -> None:
        self._admission = admission
        self.client = client
        # With a Content-Length the whole size is held from the start, so
        # that two concurrent uploads cannot both fit in the same free bytes.
        self.held = declared or 0
        self.received = 0

    def grow(self, received: int) -> bool:
        """Account ``received`` bytes so far; False when the spool budget is exceeded."""
        self.received = received
        if received <= self.held:
            return True
        extra = received - self.held
        if self._admission.spool_free() < extra:
            return False
        self.held = received
        return True

    def close(self) -> None:
        """The upload ended (accepted: its job now counts through ``pending``; or refused)."""
        self._admission.uploads.discard(self)


class Admission:
    """The admission decisions of one ingress process."""

    def __init__(
        self,
        settings: Settings,
        pending: Callable[[], Collection[SpoolMeta]],
        broker: BrokerPressure | None = None,
        drain: Drain | None = None,
    ) -> None:
        self._settings = settings
        self._pending = pending
        self.broker = broker or BrokerPressure()
        self.drain = drain or Drain()
        self.uploads: set[Upload] = set()

    @property
    def draining(self) -> bool:
        """Whether SIGTERM arrived: no new documents."""
        return self.drain.started

    def client_of(self, remote: str | None, headers: Mapping[str, str]) -> str:
        """Who is asking: the configured header's last value, else the remote address."""
        name = self._settings.client_header
        if name:
            value = headers.get(name, "").rsplit(",", 1)[-1].strip()
            if value:
                return value[:200]
        return remote or "unknown"

    def spool_used(self) -> int:
        """Bytes held by spooled jobs not yet converted and by uploads in progress."""
        spooled = sum(meta.body_bytes for meta in self._pending())
        return spooled + sum(upload.held for upload in self.uploads)

    def spool_free(self) -> int:
        """Bytes the spool may still take."""
        return self._settings.spool_max_bytes - self.spool_used()

    def refusal(
        self, client: str, declared: int | None, now: float | None = None
    ) -> Refusal | None:
        """Why a document from ``client`` of ``declared`` bytes cannot be taken now, or None."""
        retry = self._settings.retry_after
        if self.draining:
            return Refusal(503, "shutting-down", "the ingress is shutting down", retry)
        if self.broker.blocked is not None:
            detail = f"the broker does not take messages now: {self.broker.blocked}"
            return Refusal(503, "broker-blocked", detail, retry)
        deepest = self.broker.deepest(now)
        limit = self._settings.max_queue_depth
        if deepest is not None and deepest[1] > limit:
            detail = f"queue {deepest[0]} holds {deepest[1]} messages, more than {limit}"
            return Refusal(503, "queues-full", detail, retry)
        budget = self._settings.spool_max_bytes
        if declared is not None and declared > budget:
            detail = f"the body is {declared} bytes; this ingress spools at most {budget}"
            return Refusal(413, "body-too-large", detail, None)
        running = sum(1 for m in self._pending() if m.client == client)
        running += sum(1 for u in self.uploads if u.client == client)
        most = self._settings.max_jobs_per_client
        if running >= most:
            detail = f"{running} jobs of this client are not converted yet (at most {most})"
            return Refusal(429, "too-many-jobs", detail, retry)
        if declared is not None and declared > self.spool_free():
            detail = f"the spool has no room for {declared} more bytes now"
            return Refusal(503, "spool-full", detail, retry)
        return None

    def begin(self, client: str, declared: int | None) -> Upload:
        """Start counting an admitted upload."""
        upload = Upload(self, client, declared)
        self.uploads.add(upload)
        return upload

    def spool_full(self) -> Refusal:
        """The answer to an upload that crossed the spool budget while streaming."""
        return Refusal(
            503,
            "spool-full",
            "the spool ran out of room while the body was received",
            self._settings.retry_after,
        )
