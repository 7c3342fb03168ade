"""In-memory fakes of what the ingress depends on: job store, confirming publisher, runner.

They implement the protocols of :mod:`geobus.ingress.ports` (and the runner's
``submit``/``pending``/``aclose``) the way the real ones behave where tests
look: the first job with an id or an idempotency key wins, jobs list newest
first, the publisher records every message it was asked to publish.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from geobus.ingress.ports import JobRecord, RejectionRecord
from geobus.ingress.spool import SpoolMeta

# Where a job without a creation time sorts in list_jobs (oldest of all).
_NEVER = datetime.min.replace(tzinfo=UTC)


@dataclass
class FakeStore:
    """The job ledger in dicts; ``healthy = False`` makes ping() fail like a store that is away."""

    jobs: dict[str, JobRecord] = field(default_factory=dict)
    rejections: dict[str, list[RejectionRecord]] = field(default_factory=dict)
    healthy: bool = True
    closed: bool = False

    def create_job(self, job: JobRecord) -> bool:
        # As the stores: the first job with an id or an idempotency key wins.
        if job.job_id in self.jobs:
            return False
        if job.idempotency_key is not None and self.job_for_key(job.idempotency_key):
            return False
        self.jobs[job.job_id] = job
        return True

    def job_for_key(self, idempotency_key: str) -> JobRecord | None:
        return next((j for j in self.jobs.values() if j.idempotency_key == idempotency_key), None)

    def mark_running(self, job_id: str, at: datetime) -> None:
        self.jobs[job_id].status = "running"

    def mark_failed(self, job_id: str, code: str, message: str, at: datetime) -> None:
        self.jobs[job_id].status = "failed"

    def get_job(self, job_id: str) -> JobRecord | None:
        return self.jobs.get(job_id)

    def list_jobs(self, limit: int, offset: int, status: str | None = None) -> list[JobRecord]:
        jobs = sorted(self.jobs.values(), key=lambda j: j.created or _NEVER, reverse=True)
        return [j for j in jobs if status is None or j.status == status][offset : offset + limit]

    def list_rejections(self, job_id: str, limit: int, offset: int) -> Sequence[RejectionRecord]:
        return self.rejections.get(job_id, [])[offset : offset + limit]

    def ping(self) -> None:
        if not self.healthy:
            raise ConnectionError("store away")

    def close(self) -> None:
        self.closed = True


@dataclass
class Sent:
    """One message handed to :class:`RecordingPublisher`."""

    exchange: str
    key: str
    payload: bytes
    message_id: str
    correlation_id: str
    stage: str


@dataclass
class RecordingPublisher:
    """A publisher whose every publish is confirmed at once and recorded in ``sent``."""

    is_open: bool = True
    sent: list[Sent] = field(default_factory=list)

    async def publish(
        self,
        exchange_name: str,
        routing_key: str,
        payload: bytes,
        *,
        message_id: str,
        correlation_id: str,
        stage: str,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        self.sent.append(
            Sent(exchange_name, routing_key, payload, message_id, correlation_id, stage)
        )

    async def close(self) -> None:
        self.is_open = False


@dataclass
class FakeRunner:
    """Records submitted jobs; those not in ``finished`` are pending."""

    submitted: list[SpoolMeta] = field(default_factory=list)
    finished: set[str] = field(default_factory=set)
    closed: bool = False

    def submit(self, meta: SpoolMeta) -> None:
        self.submitted.append(meta)

    def pending(self) -> list[SpoolMeta]:
        return [m for m in self.submitted if m.job_id not in self.finished]

    async def aclose(self) -> None:
        self.closed = True
