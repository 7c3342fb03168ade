"""The PostGIS store (production): features, rejections and the job ledger.

Layout, all in one schema (``geobus`` by default): ``jobs``, ``batches`` (the
idempotency ledger, see :mod:`geobus.store.base`), ``rejections``, and one
table per collection with a plain ``geometry`` column held to the target
SRID by a CHECK constraint, so that 2-D and 3-D features share a table.

Features are written with one binary ``COPY`` per batch straight into the
collection table (:mod:`geobus.store.pg_copy`); geometry and property
columns use lz4 TOAST compression when the server has it (pglz made the
same COPY 4-6x slower).

``ensure_schema`` runs ``CREATE EXTENSION IF NOT EXISTS postgis``, which
needs a superuser (or an already installed extension) on a stock server.

One connection per store; a lock serialises the methods, so a store may be
shared by threads (``asyncio.to_thread``) — open more stores for parallelism.
"""

# ruff: noqa: S608  -- SQL is built only with checked identifiers (check_identifier); values are bound.

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from geobus.errors import ConfigurationError, PermanentError, TransientError
from geobus.store.base import (
    FINAL_STATUSES,
    JobRecord,
    RejectionRecord,
    WriteOutcome,
    check_collection,
    check_identifier,
    features_kind,
)
from geobus.store.pg_copy import COLUMNS, copy_rows, insert_new, lz4_clause
from geobus.store.rows import (
    feature_id_value,
    final_status,
    job_from_row,
    job_row,
    rejection_rows,
    rejections_kind,
    warnings_json,
)
from geobus.v1 import feature_pb2, rejection_pb2

_FINAL = ", ".join(f"'{s}'" for s in FINAL_STATUSES)

_JOB_COLUMNS = (
    "j.job_id, j.status, j.collection, j.created, j.started, j.finished, j.updated,"
    " j.source_uri, j.media_type, j.document_bytes, j.callback_url, j.features_total,"
    " j.batches_total, j.message, j.code,"
    " coalesce(b.stored, 0), coalesce(b.repaired, 0), coalesce(b.rejected, 0), a.adjusted,"
    " j.warnings, j.precision"
)


class PostgisStore:
    """:class:`~geobus.store.base.FeatureStore` on PostgreSQL/PostGIS."""

    def __init__(self, url: str, srid: int, schema: str = "geobus") -> None:
        self.url = url
        self.srid = srid
        self.schema = check_identifier(schema)
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._tables: set[str] = set()
        self._compression: str | None = None

    # -- connection ----------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(
                self.url, autocommit=True, connect_timeout=10, options="-c TimeZone=UTC"
            )
        return self._conn

    @contextlib.contextmanager
    def _tx(self, *, single: bool = False) -> Iterator[psycopg.Cursor[Any]]:
        """One transaction under the store's lock, with psycopg errors translated.

        ``single``: the caller runs one statement, which the autocommit
        connection makes a transaction of its own: one round trip instead
        of three (BEGIN, the statement, COMMIT), each of which waits for the
        server's backend to get a CPU on a busy machine, and the store's
        lock (shared by the ingress's job record and its status reads) is
        held that much shorter.
        """
        with self._lock:
            try:
                try:
                    conn = self._connection()
                    with (
                        contextlib.nullcontext() if single else conn.transaction(),
                        conn.cursor() as cur,
                    ):
                        yield cur
                except BaseException:
                    # A rolled-back transaction may have created a table.
                    self._tables.clear()
                    raise
            except (
                pg_errors.UniqueViolation,
                pg_errors.SerializationFailure,
                pg_errors.DeadlockDetected,
            ) as exc:
                # Not reached by duplicate batches (the ledger row is claimed
                # first and serialises them) nor by features stored under
                # another sequence (write_batch's slow path): a retry is safe.
                raise TransientError(f"concurrent write, retry: {exc}") from exc
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                raise TransientError(f"PostgreSQL unavailable: {exc}") from exc
            except (psycopg.DataError, psycopg.IntegrityError) as exc:
                raise PermanentError(f"PostgreSQL refused the data: {exc}") from exc

    def close(self) -> None:
        """Close the connection (a later call reconnects)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def ping(self) -> None:
        """Raise TransientError unless PostgreSQL answers."""
        with self._tx(single=True) as cur:
            cur.execute("SELECT 1")

    # -- schema --------------------------------------------------------------

    def ensure_schema(self) -> None:
        """Create the PostGIS extension, the schema and the ledger tables if missing."""
        s = self.schema
        with self._tx() as cur:
            # Serialise DDL across processes: concurrent CREATE ... IF NOT
            # EXISTS can still collide in the catalog.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('geobus.ddl'))")
            cur.execute("SELECT 1 FROM pg_extension WHERE extname = 'postgis'")
            if cur.fetchone() is None:
                try:
                    cur.execute("CREATE EXTENSION IF NOT EXISTS postgis")
                except pg_errors.InsufficientPrivilege as exc:
                    msg = (
                        "the PostGIS extension is not installed and this role may not install it:"
                        f" run CREATE EXTENSION postgis as a superuser ({exc})"
                    )
                    raise ConfigurationError(msg) from exc
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
            cur.execute(
                f"""CREATE TABLE IF NOT EXISTS {s}.jobs (
                    job_id text PRIMARY KEY,
                    status text NOT NULL CHECK (status IN
                        ('accepted', 'running', 'successful', 'failed', 'dismissed')),
                    collection text NOT NULL,
                    created timestamptz NOT NULL,
                    started timestamptz,
                    finished timestamptz,
                    updated timestamptz NOT NULL,
                    source_uri text NOT NULL DEFAULT '',
                    media_type text NOT NULL DEFAULT '',
                    document_bytes bigint NOT NULL DEFAULT 0,
                    callback_url text,
                    features_total bigint,
                    batches_total bigint,
                    message text,
                    code text,
                    warnings jsonb)"""
            )
            cur.execute(f"ALTER TABLE {s}.jobs ADD COLUMN IF NOT EXISTS warnings jsonb")
            # Senders' retries (webhook-id, Idempotency-Key) find their first job
            # through this column; the unique index decides between concurrent ones.
            cur.execute(f"ALTER TABLE {s}.jobs ADD COLUMN IF NOT EXISTS idempotency_key text")
            # The job's `precision` parameter (NULL: the deployment's GEOBUS_PRECISION).
            cur.execute(f"ALTER TABLE {s}.jobs ADD COLUMN IF NOT EXISTS precision smallint")
            cur.execute(
                f"CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency_key_idx"
                f" ON {s}.jobs (idempotency_key)"
            )
            cur.execute(f"CREATE INDEX IF NOT EXISTS jobs_created_idx ON {s}.jobs (created DESC)")
            cur.execute(
                f"""CREATE TABLE IF NOT EXISTS {s}.batches (
                    job_id text NOT NULL,
                    kind text NOT NULL,
                    sequence bigint NOT NULL,
                    stored bigint NOT NULL DEFAULT 0,
                    repaired bigint NOT NULL DEFAULT 0,
                    rejected bigint NOT NULL DEFAULT 0,
                    adjusted jsonb,
                    written_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (job_id, kind, sequence))"""
            )
            # Ledgers made before it counted adjustments get the column.
            cur.execute(f"ALTER TABLE {s}.batches ADD COLUMN IF NOT EXISTS adjusted jsonb")
            cur.execute(
                f"""CREATE TABLE IF NOT EXISTS {s}.rejections (
                    id bigserial PRIMARY KEY,
                    job_id text NOT NULL,
                    feature_index bigint NOT NULL,
                    feature_id jsonb,
                    stage text NOT NULL,
                    reason text NOT NULL,
                    message text NOT NULL,
                    json_pointer text NOT NULL DEFAULT '',
                    coordinate float8[] NOT NULL DEFAULT '{{}}',
                    rejected_at timestamptz NOT NULL DEFAULT now(),
                    UNIQUE (job_id, feature_index, stage))"""
            )

    def _ensure_collection(self, cur: psycopg.Cursor[Any], collection: str) -> str:
        table = f"{self.schema}.{check_collection(collection)}"
        if collection in self._tables:
            return table
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('geobus.ddl'))")
        if self._compression is None:
            self._compression = lz4_clause(cur)
        cur.execute(
            f"""CREATE TABLE IF NOT EXISTS {table} (
                id bigserial PRIMARY KEY,
                job_id text NOT NULL,
                feature_index bigint NOT NULL,
                feature_id jsonb,
                properties jsonb{self._compression},
                adjustments jsonb,
                geom geometry{self._compression} CONSTRAINT {collection}_geom_srid
                    CHECK (ST_SRID(geom) = {int(self.srid)}),
                stored_at timestamptz NOT NULL DEFAULT now(),
                UNIQUE (job_id, feature_index))"""
        )
        cur.execute(
            f"CREATE INDEX IF NOT EXISTS {collection}_geom_gist ON {table} USING gist (geom)"
        )
        self._tables.add(collection)
        return table

    # -- jobs ----------------------------------------------------------------

    def create_job(self, job: JobRecord) -> bool:
        """Insert the job unless its id or its idempotency key exists; whether it was inserted."""
        # The 202 waits for this one (one round trip, see _tx).
        with self._tx(single=True) as cur:
            # No conflict target: a concurrent insert of the same key waits for
            # the other transaction and then does nothing (the first one wins).
            cur.execute(
                f"""INSERT INTO {self.schema}.jobs (job_id, status, collection, created, started,
                    finished, updated, source_uri, media_type, document_bytes, callback_url,
                    features_total, batches_total, message, code, idempotency_key, precision)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                ON CONFLICT DO NOTHING RETURNING job_id""",
                job_row(job, lambda moment: moment),
            )
            return cur.fetchone() is not None

    def job_for_key(self, idempotency_key: str) -> JobRecord | None:
        """The job recorded under ``idempotency_key``, or None."""
        with self._tx() as cur:
            cur.execute(
                f"SELECT job_id FROM {self.schema}.jobs WHERE idempotency_key = %s",
                (idempotency_key,),
            )
            row = cur.fetchone()
            return None if row is None else self._get_job(cur, row[0])

    def mark_running(self, job_id: str, at: datetime) -> None:
        """accepted → running; other statuses are left alone."""
        with self._tx(single=True) as cur:
            cur.execute(
                f"""UPDATE {self.schema}.jobs SET status = 'running',
                    started = coalesce(started, %s), updated = %s
                WHERE job_id = %s AND status = 'accepted'""",
                (at, at, job_id),
            )

    def mark_failed(self, job_id: str, code: str, message: str, at: datetime) -> None:
        """Fail the job unless it is final already."""
        with self._tx(single=True) as cur:
            cur.execute(
                f"""UPDATE {self.schema}.jobs SET status = 'failed', code = %s, message = %s,
                    finished = %s, updated = %s
                WHERE job_id = %s AND status NOT IN ({_FINAL})""",
                (code, message, at, at, job_id),
            )

    def seal_job(
        self,
        job_id: str,
        features_total: int,
        batches_total: int,
        at: datetime,
        warnings: Sequence[str] = (),
    ) -> None:
        """Record the document's totals and warnings (idempotent)."""
        with self._tx(single=True) as cur:
            cur.execute(
                f"""UPDATE {self.schema}.jobs SET features_total = %s, batches_total = %s,
                    updated = %s, warnings = %s::jsonb WHERE job_id = %s""",
                (features_total, batches_total, at, warnings_json(warnings), job_id),
            )

    def _select_jobs(self, where: str) -> str:
        s = self.schema
        return f"""SELECT {_JOB_COLUMNS} FROM {s}.jobs j LEFT JOIN LATERAL (
                SELECT sum(stored) AS stored, sum(repaired) AS repaired,
                       sum(rejected) AS rejected
                FROM {s}.batches WHERE job_id = j.job_id) b ON true
            LEFT JOIN LATERAL (
                SELECT jsonb_object_agg(k, n) AS adjusted FROM (
                    SELECT e.key AS k, sum(e.value::bigint) AS n
                    FROM {s}.batches x, jsonb_each_text(x.adjusted) e
                    WHERE x.job_id = j.job_id GROUP BY e.key) y) a ON true {where}"""

    def get_job(self, job_id: str) -> JobRecord | None:
        """The job with its counts, or None."""
        with self._tx(single=True) as cur:
            return self._get_job(cur, job_id)

    def _get_job(self, cur: psycopg.Cursor[Any], job_id: str) -> JobRecord | None:
        cur.execute(self._select_jobs("WHERE j.job_id = %s"), (job_id,))
        row = cur.fetchone()
        return None if row is None else _job(row)

    def list_jobs(self, limit: int, offset: int, status: str | None = None) -> list[JobRecord]:
        """Jobs, newest first; only those in ``status`` when given."""
        with self._tx(single=True) as cur:
            cur.execute(
                self._select_jobs(
                    "WHERE %s::text IS NULL OR j.status = %s"
                    " ORDER BY j.created DESC, j.job_id LIMIT %s OFFSET %s"
                ),
                (status, status, limit, offset),
            )
            return [_job(row) for row in cur.fetchall()]

    def complete_if_done(self, job_id: str, at: datetime) -> JobRecord | None:
        """Finish the job if sealed and fully accounted for; the record to one caller only."""
        s = self.schema
        with self._tx() as cur:
            cur.execute(
                f"""SELECT coalesce(sum(stored), 0), coalesce(sum(rejected), 0)
                FROM {s}.batches WHERE job_id = %s""",
                (job_id,),
            )
            stored, rejected = cur.fetchone() or (0, 0)
            cur.execute(f"SELECT features_total FROM {s}.jobs WHERE job_id = %s", (job_id,))
            row = cur.fetchone()
            if row is None or row[0] is None or stored + rejected < row[0]:
                return None
            status, code, message = final_status(stored, row[0])
            # The status condition is re-checked on the locked row: of two
            # concurrent callers, the second sees the first's final status
            # and updates nothing.
            cur.execute(
                f"""UPDATE {s}.jobs SET status = %s, code = %s, message = %s, finished = %s,
                    updated = %s
                WHERE job_id = %s AND status NOT IN ({_FINAL})""",
                (status, code, message, at, at, job_id),
            )
            if cur.rowcount != 1:
                return None
            return self._get_job(cur, job_id)

    # -- features and rejections --------------------------------------------

    def _claim(self, cur: psycopg.Cursor[Any], job_id: str, kind: str, sequence: int) -> bool:
        """Insert the ledger row; False when it was there (a duplicate delivery).

        A concurrent transaction claiming the same key blocks here until the
        first one ends, then sees its row: the ledger key is the lock.
        """
        cur.execute(
            f"""INSERT INTO {self.schema}.batches (job_id, kind, sequence) VALUES (%s, %s, %s)
            ON CONFLICT DO NOTHING""",
            (job_id, kind, sequence),
        )
        return cur.rowcount == 1

    def write_batch(self, batch: feature_pb2.FeatureBatch, part: str = "") -> WriteOutcome:
        """Store the batch's features in one transaction, exactly once."""
        kind = features_kind(part)
        with self._tx() as cur:
            table = self._ensure_collection(cur, batch.collection)
            if not self._claim(cur, batch.job_id, kind, batch.sequence):
                return WriteOutcome(duplicate=True)
            rows = copy_rows(batch, self.srid)
            try:
                copy_sql = f"COPY {table} ({COLUMNS}) FROM STDIN (FORMAT BINARY)"
                # A savepoint: on a unique violation only the COPY is undone.
                with cur.connection.transaction(), cur.copy(copy_sql) as copy:
                    copy.write(rows.payload)
                stored = len(batch.features)
                repaired = rows.repaired
                adjusted = rows.adjusted
            except pg_errors.UniqueViolation:
                stored, repaired = insert_new(cur, table, rows.payload)
                # Rows inserted by this transaction carry its start time, now().
                cur.execute(
                    f"""SELECT jsonb_object_agg(k, n)::text FROM (
                        SELECT e->>'kind' AS k, count(DISTINCT t.id) AS n
                        FROM {table} t, jsonb_array_elements(t.adjustments) e
                        WHERE t.job_id = %s AND t.stored_at = now() GROUP BY 1) y""",
                    (batch.job_id,),
                )
                (adjusted,) = cur.fetchone() or (None,)
            cur.execute(
                f"""UPDATE {self.schema}.batches SET stored = %s, repaired = %s,
                    adjusted = %s::jsonb
                WHERE job_id = %s AND kind = %s AND sequence = %s""",
                (stored, repaired, adjusted, batch.job_id, kind, batch.sequence),
            )
            return WriteOutcome(duplicate=False, stored=stored, repaired=repaired)

    def write_rejections(self, rb: rejection_pb2.RejectionBatch) -> WriteOutcome:
        """Record the batch's rejections in one transaction, exactly once."""
        s = self.schema
        kind = rejections_kind(rb.stage)
        with self._tx() as cur:
            if not self._claim(cur, rb.job_id, kind, rb.sequence):
                return WriteOutcome(duplicate=True)
            rows = rejection_rows(rb)
            # A feature already rejected by this stage (under another
            # sequence) is not counted twice.
            cur.executemany(
                f"""INSERT INTO {s}.rejections (job_id, feature_index, feature_id, stage, reason,
                    message, json_pointer, coordinate)
                VALUES (%s, %s, %s::jsonb, %s, %s, %s, %s, %s)
                ON CONFLICT (job_id, feature_index, stage) DO NOTHING""",
                [
                    (
                        r.job_id,
                        r.feature_index,
                        r.feature_id,
                        r.stage,
                        r.reason,
                        r.message,
                        r.json_pointer,
                        r.coordinate,
                    )
                    for r in rows
                ],
            )
            rejected = max(cur.rowcount, 0) if rows else 0
            cur.execute(
                f"""UPDATE {s}.batches SET rejected = %s
                WHERE job_id = %s AND kind = %s AND sequence = %s""",
                (rejected, rb.job_id, kind, rb.sequence),
            )
            return WriteOutcome(duplicate=False, rejected=rejected)

    def list_rejections(self, job_id: str, limit: int, offset: int) -> list[RejectionRecord]:
        """The job's rejections by feature index."""
        with self._tx(single=True) as cur:
            cur.execute(
                f"""SELECT feature_index, feature_id::text, stage, reason, message, json_pointer,
                    coordinate
                FROM {self.schema}.rejections WHERE job_id = %s
                ORDER BY feature_index, stage LIMIT %s OFFSET %s""",
                (job_id, limit, offset),
            )
            return [
                RejectionRecord(
                    feature_index=row[0],
                    feature_id=feature_id_value(row[1]),
                    stage=row[2],
                    reason=row[3],
                    message=row[4],
                    json_pointer=row[5],
                    coordinate=list(row[6]),
                )
                for row in cur.fetchall()
            ]


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _job(row: tuple[Any, ...]) -> JobRecord:
    return job_from_row(row, _utc)
