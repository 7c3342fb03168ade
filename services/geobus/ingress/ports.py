"""What the ingress needs from its dependencies, as small protocols.

The real implementations are ``geobus.store`` (the job ledger) and
``geobus.broker`` (a confirming publisher); unit tests pass in-memory fakes.
Only the members the ingress uses are named here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

# Plain dataclasses without I/O: fakes return them as the real stores do.
from geobus.store.base import JobRecord, RejectionRecord

__all__ = ["JobRecord", "JobStore", "Publisher", "PublisherFactory", "RejectionRecord"]


class JobStore(Protocol):
    """The job ledger; every method blocks, so the ingress calls them in a thread."""

    def create_job(self, job: JobRecord) -> bool:
        """Record a new job in status ``accepted`` unless its key is taken; whether it was."""

    def job_for_key(self, idempotency_key: str) -> JobRecord | None:
        """The job recorded under ``idempotency_key``, or None."""

    def mark_running(self, job_id: str, at: datetime) -> None:
        """The conversion of the job started."""

    def mark_failed(self, job_id: str, code: str, message: str, at: datetime) -> None:
        """The job cannot be carried out."""

    def get_job(self, job_id: str) -> JobRecord | None:
        """The job, or None when the ledger does not know it."""

    def list_rejections(self, job_id: str, limit: int, offset: int) -> Sequence[RejectionRecord]:
        """Rejected features of the job in document order."""

    def ping(self) -> None:
        """Raise when the store cannot be reached."""

    def close(self) -> None:
        """Release the connection."""


class Publisher(Protocol):
    """A publisher that returns once the broker confirmed the message."""

    @property
    def is_open(self) -> bool:
        """Whether the broker connection is usable."""

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
        """Publish one message and wait for the broker's confirm."""

    async def close(self) -> None:
        """Close the connection."""


PublisherFactory = Callable[[], Awaitable[Publisher]]
