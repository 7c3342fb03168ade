"""What PostgreSQL spends on a dataset's rows, and on which part of the table.

    python -m bench.store_cost NAME [--repeat N]

Converts dataset NAME as the pipeline does (real codec, validator and
reprojector, EPSG:3857), builds the writer's binary COPY stream of every
batch (:func:`geobus.store.pg_copy.copy_rows`), and COPYs those rows, one
transaction per batch as the writer does, into three tables of a fresh
PostGIS database:

- ``geobus``: the table as the writer creates it (``PostgisStore``);
- ``no GiST``: the same without the spatial index;
- ``no GiST, properties as bytea``: also without parsing the properties as
  ``jsonb`` (the bytes are stored as they come).

It prints PostgreSQL's CPU seconds (all its processes, from ``/proc``) and
the wall time of each, the best of ``--repeat``. The differences are what
the GiST index and the ``jsonb`` parsing cost: the part of the end-to-end
CPU (``python -m bench``, PostgreSQL's column) that no change inside geobus's
own processes can remove.
"""

from __future__ import annotations

import argparse
import time
import uuid

import psycopg

from bench import documents, harness

SRID = 3857
# name -> (without the GiST index, properties as bytea)
VARIANTS = {
    "geobus": (False, False),
    "no GiST": (True, False),
    "no GiST, properties as bytea": (True, True),
}


def copy_payloads(name: str) -> list[bytes]:
    """The writer's binary COPY stream of every batch of dataset ``name``."""
    from geobus.codec.batches import BatchContext
    from geobus.codec.convert import DocumentConverter
    from geobus.reprojector.transform import Reprojector
    from geobus.settings import Settings
    from geobus.store.pg_copy import copy_rows
    from geobus.validator.transform import ValidationPolicy, validate

    settings = Settings.from_env({"GEOBUS_TARGET_CRS": f"EPSG:{SRID}"})
    policy = ValidationPolicy.from_settings(settings)
    reproject = Reprojector(settings.target_crs)
    payloads = []
    with documents.path(name).open("rb") as stream:
        for out in DocumentConverter(stream, BatchContext(job_id=str(uuid.uuid4()))):
            if out.batch is not None:
                batch = reproject(validate(out.batch, policy).batch).batch
                payloads.append(copy_rows(batch, SRID).payload)
    return payloads


def _table(conn: psycopg.Connection[tuple[object, ...]], source: str, variant: str) -> str:
    """A new empty table shaped like ``source`` for ``variant``; its name."""
    no_gist, as_bytea = VARIANTS[variant]
    table = f"cost_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE TABLE {table} (LIKE {source} INCLUDING ALL)")
    if no_gist:
        index = conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = %s AND indexdef LIKE %s",
            (table, "%USING gist%"),
        ).fetchone()
        assert index is not None, "the writer's table has no GiST index"
        conn.execute(f"DROP INDEX {index[0]}")
    if as_bytea:
        conn.execute(f"ALTER TABLE {table} ALTER COLUMN properties TYPE bytea USING NULL")
    return table


def measure(url: str, source: str, payloads: list[bytes], variant: str) -> tuple[float, float]:
    """(PostgreSQL CPU s, wall s) to COPY ``payloads`` into a new table like ``source``."""
    from geobus.store.pg_copy import COLUMNS

    with psycopg.connect(url, autocommit=True) as conn:
        table = _table(conn, source, variant)
        try:
            cpu0, started = harness.postgres_cpu_seconds(), time.perf_counter()
            sql = f"COPY {table} ({COLUMNS}) FROM STDIN (FORMAT BINARY)"
            for payload in payloads:
                with conn.transaction(), conn.cursor() as cur, cur.copy(sql) as copy:
                    copy.write(payload)
            wall = time.perf_counter() - started
            cpu = harness.postgres_cpu_seconds() - cpu0
        finally:
            conn.execute(f"DROP TABLE {table}")
    return cpu, wall


def _writer_table(url: str) -> str:
    """The writer's own table for collection ``features`` (created empty, once)."""
    from geobus.store.postgis import PostgisStore
    from geobus.v1 import feature_pb2

    store = PostgisStore(url, SRID, schema="cost")
    try:
        store.ensure_schema()
        # An empty batch creates the collection's table and stores nothing.
        store.write_batch(feature_pb2.FeatureBatch(job_id=str(uuid.uuid4()), collection="features"))
    finally:
        store.close()
    return "cost.features"


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="dataset (bench.datasets name or points-100k)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    payloads = copy_payloads(args.name)
    stream_bytes = sum(len(p) for p in payloads)
    print(f"{args.name}: {len(payloads)} batches, {stream_bytes / 1e6:.1f} MB of COPY stream")
    with harness.fresh_database() as url:
        source = _writer_table(url)
        best: dict[str, tuple[float, float]] = {}
        for _ in range(args.repeat):
            for variant in VARIANTS:
                cpu, wall = measure(url, source, payloads, variant)
                if variant not in best or cpu < best[variant][0]:
                    best[variant] = (cpu, wall)
    full = best["geobus"][0]
    for variant, (cpu, wall) in best.items():
        print(
            f"  {variant:30s} PostgreSQL CPU {cpu:5.2f} s ({cpu / full:4.0%})  wall {wall:5.2f} s"
        )


if __name__ == "__main__":
    main()
