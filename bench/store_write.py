"""Write throughput of the feature stores (PostGIS and GeoPackage).

    python bench/store_write.py FILE.geojson [FILE ...] [--points N] [--pg URL]

Each document is converted once with the real codec; then its batches are
written to a fresh PostGIS schema and a fresh GeoPackage file and the wall
time of the writes alone is reported. ``--points N`` adds a synthetic
document of N points (many small rows: per-row overhead, RTree triggers).
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import shapely

from geobus.codec.batches import BatchContext
from geobus.codec.convert import DocumentConverter
from geobus.store.geopackage import GeoPackageStore
from geobus.store.postgis import PostgisStore
from geobus.v1 import feature_pb2


def _batches(name: str, data: bytes) -> list[feature_pb2.FeatureBatch]:
    context = BatchContext(job_id=str(uuid.uuid4()), collection="bench")
    started = time.perf_counter()
    out = [o.batch for o in DocumentConverter(io.BytesIO(data), context) if o.batch is not None]
    print(f"{name}: converted in {time.perf_counter() - started:.2f} s")
    return out


def _points(n: int) -> bytes:
    features = ",".join(
        f'{{"type":"Feature","properties":{{"i":{i}}},'
        f'"geometry":{{"type":"Point","coordinates":[{i % 360 - 180},{i % 170 - 85}]}}}}'
        for i in range(n)
    )
    return ('{"type":"FeatureCollection","features":[' + features + "]}").encode()


def _run(name: str, batches: list[feature_pb2.FeatureBatch], pg_url: str) -> None:
    n = sum(len(b.features) for b in batches)
    wkbs = [f.geometry for b in batches for f in b.features if f.geometry]
    vertices = int(shapely.get_num_coordinates(shapely.from_wkb(wkbs)).sum())
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        stores = {
            "postgis": PostgisStore(pg_url, 4326, schema=schema),
            "geopackage": GeoPackageStore(Path(tmp) / "bench.gpkg", 4326),
        }
        for kind, store in stores.items():
            store.ensure_schema()
            started = time.perf_counter()
            for batch in batches:
                store.write_batch(batch)
            elapsed = time.perf_counter() - started
            store.close()
            print(
                f"  {kind:10s} {n} features ({vertices:,} vertices) in {elapsed:.3f} s:"
                f" {n / elapsed:,.0f} features/s, {vertices / elapsed / 1e6:.1f} M vertices/s"
            )
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--points", type=int, default=0)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    for path in args.files:
        _run(path.name, _batches(str(path), path.read_bytes()), args.pg)
    if args.points:
        _run(f"{args.points} points", _batches("points", _points(args.points)), args.pg)


if __name__ == "__main__":
    main()
