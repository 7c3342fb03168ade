"""The GeoPackage store (default): one embedded file that opens in QGIS.

A real OGC GeoPackage 1.4 written with the standard library's sqlite3 — no
GDAL at run time. Each collection is a features layer with an RTree spatial
index; the job ledger, the idempotency ledger and the rejections are
attributes tables (see :mod:`geobus.store.gpkg_schema`).

WAL journal mode and a busy timeout let the ingress process and the writer
process use the file at the same time; every write transaction starts with
``BEGIN IMMEDIATE`` so two writers queue on the file lock instead of failing
half way. ``synchronous=FULL``: a committed batch survives a power cut,
because the writer acknowledges the message after the commit.
"""

# ruff: noqa: S608  -- SQL is built only with checked identifiers (check_identifier); values are bound.

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from geobus.errors import TransientError
from geobus.store import gpkg_binary, gpkg_schema
from geobus.store.base import (
    FINAL_STATUSES,
    JobRecord,
    RejectionRecord,
    WriteOutcome,
    check_collection,
    features_kind,
)
from geobus.store.rows import (
    adjusted_json,
    adjustments_json,
    feature_id_json,
    feature_id_value,
    final_status,
    is_repaired,
    job_from_row,
    job_row,
    rejection_rows,
    rejections_kind,
    warnings_json,
)
from geobus.v1 import feature_pb2, rejection_pb2

_FINAL = ", ".join(f"'{s}'" for s in FINAL_STATUSES)
_BUSY_TIMEOUT_S = 30.0

_JOB_SELECT = """SELECT j.job_id, j.status, j.collection, j.created, j.started, j.finished,
    j.updated, j.source_uri, j.media_type, j.document_bytes, j.callback_url, j.features_total,
    j.batches_total, j.message, j.code,
    coalesce(b.stored, 0), coalesce(b.repaired, 0), coalesce(b.rejected, 0),
    (SELECT json_group_object(k, n) FROM (
        SELECT e.key AS k, sum(e.value) AS n FROM geobus_batches a, json_each(a.adjusted) e
        WHERE a.job_id = j.job_id GROUP BY e.key)),
    j.warnings, j.precision
FROM geobus_jobs j LEFT JOIN (
    SELECT job_id, sum(stored) AS stored, sum(repaired) AS repaired, sum(rejected) AS rejected
    FROM geobus_batches {batches_where} GROUP BY job_id) b ON b.job_id = j.job_id"""


def timestamp(value: datetime | None) -> str | None:
    """A GeoPackage DATETIME: ISO 8601 UTC with milliseconds and ``Z``."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _datetime(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text).astimezone(UTC)


class GeoPackageStore:
    """:class:`~geobus.store.base.FeatureStore` on a GeoPackage file."""

    def __init__(self, path: str | Path, srid: int) -> None:
        self.path = Path(path)
        self.srid = srid
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._tables: set[str] = set()

    # -- connection ----------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self.path,
                timeout=_BUSY_TIMEOUT_S,
                isolation_level=None,  # transactions are explicit: BEGIN IMMEDIATE
                check_same_thread=False,  # the store's lock serialises use
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            gpkg_binary.register_functions(conn)
            self._conn = conn
        return self._conn

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the store's lock."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    self._tables.clear()
                    raise
                conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                # "database is locked" after the busy timeout, disk full, I/O.
                raise TransientError(f"GeoPackage {self.path} unavailable: {exc}") from exc

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._connection()
            except sqlite3.OperationalError as exc:
                raise TransientError(f"GeoPackage {self.path} unavailable: {exc}") from exc

    def close(self) -> None:
        """Close the file (a later call reopens it)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def ping(self) -> None:
        """Raise TransientError unless the file can be read."""
        with self._read() as conn:
            conn.execute("SELECT count(*) FROM gpkg_contents").fetchone()

    # -- schema --------------------------------------------------------------

    def ensure_schema(self) -> None:
        """Make the file a GeoPackage with geobus's ledger tables (idempotent)."""
        with self._tx() as conn:
            conn.execute(f"PRAGMA application_id = {gpkg_schema.APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {gpkg_schema.USER_VERSION}")
            for ddl in gpkg_schema.CORE:
                conn.execute(ddl)
            conn.executemany(
                "INSERT OR IGNORE INTO gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, ?)",
                gpkg_schema.srs_rows(self.srid),
            )
            now = timestamp(datetime.now(UTC))
            for ddl in gpkg_schema.LEDGER.values():
                conn.execute(ddl)
            # Files made before the ledger counted adjustments get the column.
            columns = {row[1] for row in conn.execute("PRAGMA table_info(geobus_batches)")}
            if "adjusted" not in columns:
                conn.execute("ALTER TABLE geobus_batches ADD COLUMN adjusted TEXT")
            columns = {row[1] for row in conn.execute("PRAGMA table_info(geobus_jobs)")}
            if "warnings" not in columns:
                conn.execute("ALTER TABLE geobus_jobs ADD COLUMN warnings TEXT")
            # Senders' retries (webhook-id, Idempotency-Key) find their first job
            # through this column; the unique index decides between concurrent ones.
            if "idempotency_key" not in columns:
                conn.execute("ALTER TABLE geobus_jobs ADD COLUMN idempotency_key TEXT")
            # The job's `precision` parameter (NULL: the deployment's GEOBUS_PRECISION).
            if "precision" not in columns:
                conn.execute("ALTER TABLE geobus_jobs ADD COLUMN precision INTEGER")
            conn.execute(
                "CREATE UNIQUE INDEX IF NOT EXISTS geobus_jobs_idempotency_key"
                " ON geobus_jobs (idempotency_key)"
            )
            for table in gpkg_schema.LEDGER:
                conn.execute(
                    """INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier,
                        description, last_change) VALUES (?, 'attributes', ?, ?, ?)""",
                    (table, table, "geobus ledger", now),
                )
            conn.execute(
                "CREATE INDEX IF NOT EXISTS geobus_jobs_created ON geobus_jobs (created DESC)"
            )
        # GDAL reads application_id and user_version from the file's first
        # page directly, not through SQLite: copy the WAL into the file now.
        with self._read() as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _ensure_collection(self, conn: sqlite3.Connection, collection: str) -> str:
        table = check_collection(collection)
        if table in self._tables:
            return table
        conn.execute(gpkg_schema.feature_table(table))
        conn.execute(
            """INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier,
                description, last_change, srs_id) VALUES (?, 'features', ?, '', ?, ?)""",
            (table, table, timestamp(datetime.now(UTC)), self.srid),
        )
        conn.execute(
            # z = 2: Z values optional, 2-D and 3-D features share the layer.
            "INSERT OR IGNORE INTO gpkg_geometry_columns VALUES (?, 'geom', 'GEOMETRY', ?, 2, 0)",
            (table, self.srid),
        )
        for ddl in gpkg_schema.rtree(table):
            conn.execute(ddl)
        conn.execute(
            """INSERT OR IGNORE INTO gpkg_extensions VALUES
                (?, 'geom', 'gpkg_rtree_index', ?, 'write-only')""",
            (table, gpkg_schema.RTREE_EXTENSION),
        )
        self._tables.add(table)
        return table

    # -- jobs ----------------------------------------------------------------

    def create_job(self, job: JobRecord) -> bool:
        """Insert the job unless its id or its idempotency key exists; whether it was inserted."""
        with self._tx() as conn:
            cursor = conn.execute(
                """INSERT INTO geobus_jobs (job_id, status, collection, created, started,
                    finished, updated, source_uri, media_type, document_bytes, callback_url,
                    features_total, batches_total, message, code, idempotency_key, precision)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT DO NOTHING""",
                job_row(job, timestamp),
            )
            return cursor.rowcount == 1

    def job_for_key(self, idempotency_key: str) -> JobRecord | None:
        """The job recorded under ``idempotency_key``, or None."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT job_id FROM geobus_jobs WHERE idempotency_key = ?", (idempotency_key,)
            ).fetchone()
            return None if row is None else _get_job(conn, row[0])

    def mark_running(self, job_id: str, at: datetime) -> None:
        """accepted → running; other statuses are left alone."""
        with self._tx() as conn:
            conn.execute(
                """UPDATE geobus_jobs SET status = 'running', started = coalesce(started, ?),
                    updated = ? WHERE job_id = ? AND status = 'accepted'""",
                (timestamp(at), timestamp(at), job_id),
            )

    def mark_failed(self, job_id: str, code: str, message: str, at: datetime) -> None:
        """Fail the job unless it is final already."""
        with self._tx() as conn:
            conn.execute(
                f"""UPDATE geobus_jobs SET status = 'failed', code = ?, message = ?,
                    finished = ?, updated = ? WHERE job_id = ? AND status NOT IN ({_FINAL})""",
                (code, message, timestamp(at), timestamp(at), job_id),
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
        with self._tx() as conn:
            conn.execute(
                """UPDATE geobus_jobs SET features_total = ?, batches_total = ?, updated = ?,
                    warnings = ? WHERE job_id = ?""",
                (features_total, batches_total, timestamp(at), warnings_json(warnings), job_id),
            )

    def get_job(self, job_id: str) -> JobRecord | None:
        """The job with its counts, or None."""
        with self._read() as conn:
            return _get_job(conn, job_id)

    def list_jobs(self, limit: int, offset: int, status: str | None = None) -> list[JobRecord]:
        """Jobs, newest first; only those in ``status`` when given."""
        with self._read() as conn:
            rows = conn.execute(
                _JOB_SELECT.format(batches_where="")
                + " WHERE ? IS NULL OR j.status = ?"
                + " ORDER BY j.created DESC, j.job_id LIMIT ? OFFSET ?",
                (status, status, limit, offset),
            ).fetchall()
            return [_job(row) for row in rows]

    def complete_if_done(self, job_id: str, at: datetime) -> JobRecord | None:
        """Finish the job if sealed and fully accounted for; the record to one caller only."""
        # BEGIN IMMEDIATE holds the file's write lock: of two callers, the
        # second reads the first's final status and updates nothing.
        with self._tx() as conn:
            job = _get_job(conn, job_id)
            if job is None or job.features_total is None or job.status in FINAL_STATUSES:
                return None
            if job.counts.stored + job.counts.rejected < job.features_total:
                return None
            status, code, message = final_status(job.counts.stored, job.features_total)
            cursor = conn.execute(
                f"""UPDATE geobus_jobs SET status = ?, code = ?, message = ?, finished = ?,
                    updated = ? WHERE job_id = ? AND status NOT IN ({_FINAL})""",
                (status, code, message, timestamp(at), timestamp(at), job_id),
            )
            if cursor.rowcount != 1:
                return None
            return _get_job(conn, job_id)

    # -- features and rejections --------------------------------------------

    def _claim(self, conn: sqlite3.Connection, job_id: str, kind: str, sequence: int) -> bool:
        cursor = conn.execute(
            """INSERT INTO geobus_batches (job_id, kind, sequence, written_at)
            VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING""",
            (job_id, kind, sequence, timestamp(datetime.now(UTC))),
        )
        return cursor.rowcount == 1

    def write_batch(self, batch: feature_pb2.FeatureBatch, part: str = "") -> WriteOutcome:
        """Store the batch's features in one transaction, exactly once."""
        kind = features_kind(part)
        features = batch.features
        # Encoding (vectorised Shapely) happens before the write lock is taken.
        blobs, boxes = gpkg_binary.encode([f.geometry for f in features], self.srid)
        now = timestamp(datetime.now(UTC))
        rows = [
            (
                blob,
                batch.job_id,
                f.index,
                feature_id_json(f.id, f.HasField("id")),
                f.properties.decode() if f.properties else None,
                adjustments_json(f),
                now,
            )
            for f, blob in zip(features, blobs, strict=True)
        ]
        with self._tx() as conn:
            table = self._ensure_collection(conn, batch.collection)
            if not self._claim(conn, batch.job_id, kind, batch.sequence):
                return WriteOutcome(duplicate=True)
            (before,) = conn.execute(f'SELECT coalesce(max(fid), 0) FROM "{table}"').fetchone()
            # The spec's insert trigger calls ST_MinX & co. once per row and
            # function (4x slower on many small features); inside this
            # transaction it is replaced by one bulk insert of the envelopes
            # computed above. Other connections never see it missing: the
            # DROP and CREATE commit together with the rows.
            rtree_insert, rtree_trigger = gpkg_schema.rtree_insert_trigger(table)
            conn.execute(f'DROP TRIGGER IF EXISTS "{rtree_insert}"')
            # A feature stored before under another sequence (a job resumed
            # with other batch limits) is skipped: exactly once per feature.
            cursor = conn.executemany(
                f"""INSERT INTO "{table}" (geom, job_id, feature_index, feature_id, properties,
                    adjustments, stored_at) VALUES (?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (job_id, feature_index) DO NOTHING""",
                rows,
            )
            stored = cursor.rowcount
            box_of = {f.index: box for f, box in zip(features, boxes, strict=True)}
            new = conn.execute(
                f'SELECT fid, feature_index FROM "{table}" WHERE fid > ?', (before,)
            ).fetchall()
            conn.executemany(
                f'INSERT OR REPLACE INTO "rtree_{table}_geom" VALUES (?, ?, ?, ?, ?)',
                [(fid, *box) for fid, index in new if (box := box_of[index]) is not None],
            )
            conn.execute(rtree_trigger)
            if stored == len(features):
                repaired = sum(1 for f in features if is_repaired(f))
                adjusted = adjusted_json(features)
            else:
                (repaired,) = conn.execute(
                    f"""SELECT count(*) FROM "{table}" WHERE fid > ? AND EXISTS (
                        SELECT 1 FROM json_each(adjustments)
                        WHERE json_extract(value, '$.kind') = 'repaired')""",
                    (before,),
                ).fetchone()
                (adjusted,) = conn.execute(
                    f"""SELECT json_group_object(k, n) FROM (
                        SELECT json_extract(e.value, '$.kind') AS k, count(DISTINCT t.fid) AS n
                        FROM "{table}" t, json_each(t.adjustments) e WHERE t.fid > ?
                        GROUP BY k)""",
                    (before,),
                ).fetchone()
            conn.execute(
                """UPDATE geobus_batches SET stored = ?, repaired = ?, adjusted = ?
                WHERE job_id = ? AND kind = ? AND sequence = ?""",
                (stored, repaired, adjusted, batch.job_id, kind, batch.sequence),
            )
            conn.execute(
                "UPDATE gpkg_contents SET last_change = ? WHERE table_name = ?", (now, table)
            )
            return WriteOutcome(duplicate=False, stored=stored, repaired=repaired)

    def write_rejections(self, rb: rejection_pb2.RejectionBatch) -> WriteOutcome:
        """Record the batch's rejections in one transaction, exactly once."""
        kind = rejections_kind(rb.stage)
        now = timestamp(datetime.now(UTC))
        rows = [
            (
                r.job_id,
                r.feature_index,
                r.feature_id,
                r.stage,
                r.reason,
                r.message,
                r.json_pointer,
                _json_floats(r.coordinate),
                now,
            )
            for r in rejection_rows(rb)
        ]
        with self._tx() as conn:
            if not self._claim(conn, rb.job_id, kind, rb.sequence):
                return WriteOutcome(duplicate=True)
            cursor = conn.executemany(
                """INSERT INTO geobus_rejections (job_id, feature_index, feature_id, stage, reason,
                    message, json_pointer, coordinate, rejected_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (job_id, feature_index, stage) DO NOTHING""",
                rows,
            )
            rejected = max(cursor.rowcount, 0) if rows else 0
            conn.execute(
                """UPDATE geobus_batches SET rejected = ?
                WHERE job_id = ? AND kind = ? AND sequence = ?""",
                (rejected, rb.job_id, kind, rb.sequence),
            )
            return WriteOutcome(duplicate=False, rejected=rejected)

    def list_rejections(self, job_id: str, limit: int, offset: int) -> list[RejectionRecord]:
        """The job's rejections by feature index."""
        with self._read() as conn:
            rows = conn.execute(
                """SELECT feature_index, feature_id, stage, reason, message, json_pointer,
                    coordinate FROM geobus_rejections WHERE job_id = ?
                ORDER BY feature_index, stage LIMIT ? OFFSET ?""",
                (job_id, limit, offset),
            ).fetchall()
        return [
            RejectionRecord(
                feature_index=row[0],
                feature_id=feature_id_value(row[1]),
                stage=row[2],
                reason=row[3],
                message=row[4],
                json_pointer=row[5],
                coordinate=[float(x) for x in json.loads(row[6])],
            )
            for row in rows
        ]


def _json_floats(values: list[float]) -> str:
    # Python's JSON dialect keeps Infinity and NaN: a rejected coordinate may be either.
    return json.dumps([float(v) for v in values])


def _get_job(conn: sqlite3.Connection, job_id: str) -> JobRecord | None:
    row = conn.execute(
        _JOB_SELECT.format(batches_where="WHERE job_id = ?") + " WHERE j.job_id = ?",
        (job_id, job_id),
    ).fetchone()
    return None if row is None else _job(row)


def _job(row: tuple[Any, ...]) -> JobRecord:
    return job_from_row(row, _datetime)
