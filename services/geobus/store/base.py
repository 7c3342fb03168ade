"""What the writer and the job API need from a store, whatever the database.

:class:`FeatureStore` is the protocol; :mod:`geobus.store.postgis` and
:mod:`geobus.store.geopackage` implement it. The methods are synchronous
(psycopg 3 / sqlite3): async callers run them with ``asyncio.to_thread``.

Exactly-once in the store rests on one ledger table,
``batches(job_id, kind, sequence, stored, repaired, rejected, adjusted)``: every write
of a batch (``kind = 'features'``) or of a batch's rejections
(``kind = 'rejections:<stage>'``) records its key in the same transaction as
its rows, and a key that is already there makes the write a no-op. The job
counts are sums over that ledger, so a redelivered batch never counts twice.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

from geobus.v1 import feature_pb2, rejection_pb2

JobStatus = Literal["accepted", "running", "successful", "failed", "dismissed"]
FINAL_STATUSES: tuple[JobStatus, ...] = ("successful", "failed", "dismissed")
FeatureIdValue = str | int | float | None

_IDENTIFIER_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def check_identifier(name: str) -> str:
    """Return ``name`` if it is a safe SQL identifier (collection, schema), else raise ValueError.

    Names are spliced into SQL (tables cannot be bound as parameters), so
    only lower-case ASCII letters, digits and ``_`` are allowed.
    """
    if not _IDENTIFIER_RE.fullmatch(name):
        msg = f"not a safe table or schema name (^[a-z_][a-z0-9_]{{0,62}}$): {name!r}"
        raise ValueError(msg)
    return name


# Ledger tables live beside the collections (same schema / same file), and
# GeoPackage reserves its own prefixes.
_RESERVED_NAMES = frozenset({"jobs", "batches", "rejections", "spatial_ref_sys"})
_RESERVED_PREFIXES = ("gpkg_", "rtree_", "sqlite_", "geobus_", "pg_")


def check_collection(name: str) -> str:
    """Return ``name`` if it may name a collection table, else raise ValueError."""
    check_identifier(name)
    if name in _RESERVED_NAMES or name.startswith(_RESERVED_PREFIXES):
        msg = f"the collection name {name!r} is reserved for geobus or the database"
        raise ValueError(msg)
    return name


@dataclass(frozen=True, slots=True)
class JobCounts:
    """Per-job feature counts (OGC API - Processes status extension of geobus)."""

    received: int = 0
    valid: int = 0
    repaired: int = 0
    rejected: int = 0
    stored: int = 0
    # Stored features per adjustment kind ("antimeridian_cut", "clipped", ...).
    adjusted: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class JobRecord:
    """One job in the ledger. Datetimes are timezone-aware UTC, None until they happen."""

    job_id: str
    status: JobStatus = "accepted"
    collection: str = "features"
    created: datetime | None = None
    started: datetime | None = None
    finished: datetime | None = None
    updated: datetime | None = None
    source_uri: str = ""
    media_type: str = ""
    document_bytes: int = 0
    callback_url: str | None = None
    # None until the ingress has read the whole document (job sealed).
    features_total: int | None = None
    batches_total: int | None = None
    message: str | None = None
    # Machine-readable failure code (``document_not_json``, ...), None unless failed.
    code: str | None = None
    counts: JobCounts = field(default_factory=JobCounts)
    # What the ingress noticed about the whole document (a legacy "crs" member).
    warnings: list[str] = field(default_factory=list)
    # The sender's scoped idempotency key (``webhook:<webhook-id>`` or
    # ``key:<client>:<Idempotency-Key>``); unique in the ledger. Written at
    # insert only, not read back into the record.
    idempotency_key: str | None = None
    # Decimal digits the request asked coordinates to be snapped to (the
    # `precision` parameter); None when it asked nothing (GEOBUS_PRECISION).
    precision: int | None = None

    @property
    def progress(self) -> int:
        """0-100: share of the sealed job's features that are stored or rejected.

        Capped at 99 until the job is final, so that 100 always means done.
        """
        if self.status == "successful":
            return 100
        total = self.features_total
        if total is None:
            return 0
        if total == 0:
            return 99
        done = self.counts.stored + self.counts.rejected
        return min(99, 100 * done // total)


@dataclass(frozen=True, slots=True)
class RejectionRecord:
    """One rejected feature as the job API lists it."""

    feature_index: int
    feature_id: FeatureIdValue
    stage: str
    reason: str
    message: str
    json_pointer: str
    coordinate: list[float]


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """What one ``write_batch`` / ``write_rejections`` did.

    ``duplicate`` is True when the batch's ledger key was already recorded:
    nothing was written and the counts are zero.
    """

    duplicate: bool
    stored: int = 0
    repaired: int = 0
    rejected: int = 0


class FeatureStore(Protocol):
    """Features, rejections and the job ledger of one database."""

    srid: int

    def ensure_schema(self) -> None:
        """Create the ledger tables (and extensions) if they do not exist."""

    def create_job(self, job: JobRecord) -> bool:
        """Insert the job unless a job with its id or its idempotency key exists (idempotent).

        Whether this call inserted it (False: the id or the key was taken).
        """

    def job_for_key(self, idempotency_key: str) -> JobRecord | None:
        """The job recorded under ``idempotency_key``, or None."""

    def mark_running(self, job_id: str, at: datetime) -> None:
        """Set an accepted job running (no-op for any other status)."""

    def mark_failed(self, job_id: str, code: str, message: str, at: datetime) -> None:
        """Fail a job that is not final yet."""

    def get_job(self, job_id: str) -> JobRecord | None:
        """The job with counts derived from the ledger, or None."""

    def list_jobs(self, limit: int, offset: int, status: str | None = None) -> list[JobRecord]:
        """Jobs, newest first; only those in ``status`` when given."""

    def write_batch(self, batch: feature_pb2.FeatureBatch, part: str = "") -> WriteOutcome:
        """Store a batch's features exactly once (keyed by job id, sequence and ``part``).

        ``part`` names a piece of the batch written on its own (the writer's
        bisection around a feature the database refuses): ledger kind
        ``features:<part>`` instead of ``features``.
        """

    def write_rejections(self, rb: rejection_pb2.RejectionBatch) -> WriteOutcome:
        """Record a batch's rejections exactly once (keyed by job, stage and sequence)."""

    def seal_job(
        self,
        job_id: str,
        features_total: int,
        batches_total: int,
        at: datetime,
        warnings: Sequence[str] = (),
    ) -> None:
        """Record how many features and batches the job's document held, and its warnings."""

    def complete_if_done(self, job_id: str, at: datetime) -> JobRecord | None:
        """Finish a sealed job whose features are all accounted for.

        Returns the final record to exactly one caller; None to everyone else.
        """

    def list_rejections(self, job_id: str, limit: int, offset: int) -> list[RejectionRecord]:
        """The job's rejections in feature order."""

    def ping(self) -> None:
        """Raise TransientError unless the database answers."""

    def close(self) -> None:
        """Release the connection."""


def features_kind(part: str = "") -> str:
    """Ledger kind of a batch's features (``features``) or of one part of it."""
    return f"features:{part}" if part else "features"


def derive_counts(
    features_total: int | None,
    stored: int,
    repaired: int,
    rejected: int,
    adjusted: dict[str, int] | None = None,
) -> JobCounts:
    """Job counts from the ledger sums (see the module docstring)."""
    received = features_total if features_total is not None else stored + rejected
    return JobCounts(
        received=received,
        valid=stored - repaired,
        repaired=repaired,
        rejected=rejected,
        stored=stored,
        adjusted=dict(sorted((adjusted or {}).items())),
    )
