"""The feature store against real PostgreSQL/PostGIS and real GeoPackage files.

Every test runs on both backends. PostGIS tests use a fresh database (with the
PostGIS extension) for the session and a unique schema per test, dropped after.
"""

# ruff: noqa: S608  -- SQL is built only with checked identifiers (check_identifier); values are bound.

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import shapely

from geobus.codec.batches import BatchContext, Output
from geobus.codec.convert import DocumentConverter
from geobus.settings import Settings
from geobus.store import FeatureStore, JobRecord, open_store
from geobus.store.geopackage import GeoPackageStore
from geobus.store.postgis import PostgisStore
from geobus.v1 import feature_pb2

pytestmark = pytest.mark.integration

BIG = 2**60 + 1
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


# -- fixtures -------------------------------------------------------------------


@pytest.fixture(params=["postgis", "geopackage"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """(kind, factory) where factory() opens another store on the same data."""
    if request.param == "postgis":
        url = request.getfixturevalue("pg_url")
        schema = f"t_{uuid.uuid4().hex[:10]}"
        opened: list[FeatureStore] = []

        def factory() -> FeatureStore:
            store = open_store(Settings(database_url=url), schema=schema)
            opened.append(store)
            return store

        yield "postgis", factory
        for store in opened:
            store.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    else:
        path = tmp_path / "store.gpkg"
        opened_g: list[FeatureStore] = []

        def factory_g() -> FeatureStore:
            store = open_store(Settings(database_url=str(path)))
            opened_g.append(store)
            return store

        yield "geopackage", factory_g
        for store in opened_g:
            store.close()


@pytest.fixture
def store(backend: tuple[str, Any]) -> FeatureStore:
    """A store with its schema in place."""
    s: FeatureStore = backend[1]()
    s.ensure_schema()
    return s


# -- helpers --------------------------------------------------------------------


def _feature(geometry: str, properties: str = "{}", fid: str | None = None) -> str:
    id_member = f'"id":{fid},' if fid is not None else ""
    return f'{{"type":"Feature",{id_member}"properties":{properties},"geometry":{geometry}}}'


def _doc(*features: str) -> bytes:
    return ('{"type":"FeatureCollection","features":[' + ",".join(features) + "]}").encode()


def _convert(doc: bytes, job_id: str, collection: str = "things") -> list[Output]:
    context = BatchContext(job_id=job_id, collection=collection)
    return list(DocumentConverter(io.BytesIO(doc), context))


def _batches(outputs: list[Output]) -> list[feature_pb2.FeatureBatch]:
    return [o.batch for o in outputs if o.batch is not None]


POINTS = [_feature(f'{{"type":"Point","coordinates":[{i},{i}]}}', f'{{"n":{i}}}') for i in range(5)]
OPEN_RING = '{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1]]]}'


def _rows(kind: str, store: FeatureStore, collection: str) -> list[dict[str, Any]]:
    """Stored features read back with the database's own readers (PostGIS SQL / GDAL)."""
    if kind == "postgis":
        assert isinstance(store, PostgisStore)
        with psycopg.connect(store.url) as conn:
            rows = conn.execute(
                f"""SELECT feature_index, feature_id::text, properties::text,
                    ST_AsBinary(geom), ST_SRID(geom), ST_IsValid(geom), ST_NDims(geom)
                FROM {store.schema}.{collection} ORDER BY feature_index"""
            ).fetchall()
        return [
            {
                "index": r[0],
                "id": None if r[1] is None else json.loads(r[1]),
                "properties": None if r[2] is None else json.loads(r[2]),
                "geometry": None if r[3] is None else shapely.from_wkb(bytes(r[3])),
                "srid": r[4],
            }
            for r in rows
        ]
    from pyogrio import raw  # type: ignore[import-untyped]

    assert isinstance(store, GeoPackageStore)
    _meta, _fids, geometry, fields = raw.read(store.path, layer=collection)
    order = sorted(range(len(geometry)), key=lambda i: int(fields[1][i]))
    return [
        {
            "index": int(fields[1][i]),
            "id": None if fields[2][i] is None else json.loads(fields[2][i]),
            "properties": None if fields[3][i] is None else json.loads(fields[3][i]),
            "geometry": None if geometry[i] is None else shapely.from_wkb(geometry[i]),
            "srid": 4326,
        }
        for i in order
    ]


def _new_job(store: FeatureStore, collection: str = "things") -> str:
    job_id = str(uuid.uuid4())
    store.create_job(
        JobRecord(job_id=job_id, collection=collection, created=T0, source_uri="urn:test")
    )
    return job_id


# -- tests ----------------------------------------------------------------------


def test_write_batch_is_idempotent(backend: tuple[str, Any], store: FeatureStore) -> None:
    """The same batch written twice stores its rows and counts them once."""
    job_id = _new_job(store)
    (batch,) = _batches(_convert(_doc(*POINTS), job_id))
    first = store.write_batch(batch)
    second = store.write_batch(batch)
    assert (first.duplicate, first.stored) == (False, 5)
    assert (second.duplicate, second.stored) == (True, 0)
    assert [r["index"] for r in _rows(backend[0], store, "things")] == [0, 1, 2, 3, 4]
    job = store.get_job(job_id)
    assert job is not None
    assert job.counts.stored == 5


def test_rejections_are_idempotent(store: FeatureStore) -> None:
    """A rejection batch written twice is listed and counted once, with its reason code."""
    job_id = _new_job(store)
    outputs = _convert(_doc(POINTS[0], _feature(OPEN_RING, fid='"bad"')), job_id)
    (rejections,) = [o.rejections for o in outputs if o.rejections is not None]
    assert store.write_rejections(rejections).rejected == 1
    assert store.write_rejections(rejections).duplicate
    (record,) = store.list_rejections(job_id, limit=10, offset=0)
    assert (record.feature_index, record.feature_id, record.stage) == (1, "bad", "ingress")
    assert record.reason == "ring_not_closed"
    assert record.json_pointer.startswith("/geometry/coordinates/0")
    job = store.get_job(job_id)
    assert job is not None
    assert job.counts.rejected == 1


def test_counts_and_completion_happen_once(store: FeatureStore) -> None:
    """A sealed job completes exactly once, when stored + rejected reach the total."""
    job_id = _new_job(store)
    store.mark_running(job_id, T0)
    outputs = _convert(_doc(*POINTS, _feature(OPEN_RING)), job_id)
    for batch in _batches(outputs):
        store.write_batch(batch)
    assert store.complete_if_done(job_id, T0) is None  # not sealed yet
    store.seal_job(job_id, features_total=6, batches_total=1, at=T0)
    job = store.get_job(job_id)
    assert job is not None
    assert (job.status, job.progress, job.counts.received) == ("running", 83, 6)
    assert store.complete_if_done(job_id, T0) is None  # the rejection is missing
    for o in outputs:
        if o.rejections is not None:
            store.write_rejections(o.rejections)
    done = store.complete_if_done(job_id, T0 + timedelta(seconds=5))
    assert done is not None
    assert (done.status, done.progress, done.finished) == (
        "successful",
        100,
        T0 + timedelta(seconds=5),
    )
    assert (done.counts.received, done.counts.valid, done.counts.stored) == (6, 5, 5)
    assert done.counts.rejected == 1
    assert store.complete_if_done(job_id, T0) is None


def test_job_with_every_feature_rejected_fails(store: FeatureStore) -> None:
    """A job whose features were all rejected completes as failed, with a message."""
    job_id = _new_job(store)
    outputs = _convert(_doc(_feature(OPEN_RING), _feature(OPEN_RING)), job_id)
    assert not _batches(outputs)
    for o in outputs:
        if o.rejections is not None:
            store.write_rejections(o.rejections)
    store.seal_job(job_id, features_total=2, batches_total=0, at=T0)
    done = store.complete_if_done(job_id, T0)
    assert done is not None
    assert (done.status, done.code, done.counts.rejected) == ("failed", "no_feature_stored", 2)
    assert done.message


def test_concurrent_completion_returns_the_record_once(
    backend: tuple[str, Any], store: FeatureStore
) -> None:
    """Two stores (two connections) racing to complete a job: exactly one wins."""
    job_id = _new_job(store)
    for batch in _batches(_convert(_doc(*POINTS), job_id)):
        store.write_batch(batch)
    store.seal_job(job_id, features_total=5, batches_total=1, at=T0)
    stores = [backend[1]() for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda s: s.complete_if_done(job_id, T0), stores))
    assert sum(r is not None for r in results) == 1


def test_3d_and_2d_geometries_share_a_table(backend: tuple[str, Any], store: FeatureStore) -> None:
    """A 3-D line and a 2-D polygon round-trip with their coordinates and dimensions."""
    job_id = _new_job(store)
    line = '{"type":"LineString","coordinates":[[1.5,2.25,100.125],[3,4,-5.5]]}'
    square = '{"type":"Polygon","coordinates":[[[0,0],[2,0],[2,2],[0,2],[0,0]]]}'
    (batch,) = _batches(_convert(_doc(_feature(line), _feature(square), _feature("null")), job_id))
    store.write_batch(batch)
    rows = _rows(backend[0], store, "things")
    assert shapely.has_z(rows[0]["geometry"])
    assert shapely.equals_exact(rows[0]["geometry"], shapely.from_geojson(line), tolerance=0)
    assert shapely.get_coordinates(rows[0]["geometry"], include_z=True).tolist() == [
        [1.5, 2.25, 100.125],
        [3.0, 4.0, -5.5],
    ]
    assert not shapely.has_z(rows[1]["geometry"])
    assert shapely.equals(rows[1]["geometry"], shapely.from_geojson(square))
    assert rows[2]["geometry"] is None
    assert {r["srid"] for r in rows[:2]} == {4326}


def test_properties_and_ids_keep_full_fidelity(
    backend: tuple[str, Any], store: FeatureStore
) -> None:
    """Integers beyond 2^53, nested objects and every kind of id survive the store."""
    job_id = _new_job(store)
    props = {"big": BIG, "nested": {"a": [1, {"b": None}], "s": "é\u2603"}, "f": 0.1}
    point = '{"type":"Point","coordinates":[1,2]}'
    features = [
        _feature(point, json.dumps(props), fid=str(BIG)),
        _feature(point, "null", fid='"x-1"'),
        _feature(point, "{}", fid="2.5"),
        _feature(point, "{}", fid=str(2**70)),
    ]
    (batch,) = _batches(_convert(_doc(*features), job_id))
    store.write_batch(batch)
    rows = _rows(backend[0], store, "things")
    assert rows[0]["properties"] == props
    assert rows[0]["properties"]["big"] == BIG
    assert [r["id"] for r in rows] == [BIG, "x-1", 2.5, 2**70]
    assert rows[1]["properties"] is None


def test_feature_stored_under_another_sequence_is_not_stored_twice(
    backend: tuple[str, Any], store: FeatureStore
) -> None:
    """A resumed job cut into other batches stores each (job, index) once and counts it once."""
    job_id = _new_job(store)
    (batch,) = _batches(_convert(_doc(*POINTS[:3]), job_id))
    store.write_batch(batch)
    (again,) = _batches(_convert(_doc(*POINTS), job_id))
    again.sequence = 7
    outcome = store.write_batch(again)
    assert (outcome.duplicate, outcome.stored) == (False, 2)
    assert [r["index"] for r in _rows(backend[0], store, "things")] == [0, 1, 2, 3, 4]
    job = store.get_job(job_id)
    assert job is not None
    assert job.counts.stored == 5


def test_creating_a_job_is_one_round_trip(pg_url: str, tmp_path: Path) -> None:
    """PostGIS: the INSERT the 202 waits for goes alone (no BEGIN / COMMIT around it)."""
    from psycopg import pq

    schema = f"t_{uuid.uuid4().hex[:10]}"
    store = open_store(Settings(database_url=pg_url), schema=schema)
    try:
        store.ensure_schema()
        conn = store._connection()  # type: ignore[attr-defined]
        trace = tmp_path / "libpq.trace"
        with trace.open("w") as sink:
            conn.pgconn.trace(sink.fileno())
            conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
            try:
                assert store.create_job(JobRecord(job_id=str(uuid.uuid4()), created=T0)) is True
            finally:
                conn.pgconn.untrace()
        sent = [line.split("\t") for line in trace.read_text().splitlines()]
        # A round trip ends with a Sync (extended protocol) or is one Query (simple).
        ends = [f[2] for f in sent if f[0] == "F" and f[2] in ("Sync", "Query")]
        assert ends == ["Sync"], trace.read_text()
    finally:
        store.close()
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_job_lifecycle(store: FeatureStore) -> None:
    """create is idempotent; running and failed transitions; final jobs stay final; paging."""
    job_id = _new_job(store)
    store.create_job(JobRecord(job_id=job_id, status="failed", created=T0))
    job = store.get_job(job_id)
    assert job is not None
    assert (job.status, job.source_uri, job.progress) == ("accepted", "urn:test", 0)
    assert job.created == T0
    store.mark_running(job_id, T0 + timedelta(seconds=1))
    store.mark_failed(job_id, "document_not_json", "not JSON", T0 + timedelta(seconds=2))
    store.mark_running(job_id, T0 + timedelta(seconds=3))
    job = store.get_job(job_id)
    assert job is not None
    assert (job.status, job.code, job.message) == ("failed", "document_not_json", "not JSON")
    assert (job.started, job.finished) == (T0 + timedelta(seconds=1), T0 + timedelta(seconds=2))
    newer = str(uuid.uuid4())
    store.create_job(JobRecord(job_id=newer, created=T0 + timedelta(hours=1)))
    assert [j.job_id for j in store.list_jobs(limit=10, offset=0)] == [newer, job_id]
    assert [j.job_id for j in store.list_jobs(limit=1, offset=1)] == [job_id]
    assert store.get_job(str(uuid.uuid4())) is None


@pytest.mark.parametrize("name", ["Things", "a-b", "x;DROP TABLE y", "jobs", "gpkg_x", ""])
def test_unsafe_collection_names_are_refused(store: FeatureStore, name: str) -> None:
    """Collection names that are not safe identifiers (or are reserved) raise ValueError."""
    job_id = _new_job(store)
    (batch,) = _batches(_convert(_doc(POINTS[0]), job_id))
    batch.collection = name
    with pytest.raises(ValueError, match="name"):
        store.write_batch(batch)


@pytest.mark.parametrize("backend", ["postgis"], indirect=True)
def test_postgis_table_answers_spatial_sql(store: FeatureStore) -> None:
    """On PostGIS the collection is an ordinary spatial table: SRID, validity, index, view."""
    assert isinstance(store, PostgisStore)
    job_id = _new_job(store)
    bowtie = '{"type":"Polygon","coordinates":[[[0,0],[2,2],[2,0],[0,2],[0,0]]]}'
    (batch,) = _batches(_convert(_doc(*POINTS, _feature(bowtie)), job_id))
    store.write_batch(batch)
    with psycopg.connect(store.url) as conn:
        t = f"{store.schema}.things"
        valid = conn.execute(f"SELECT feature_index, ST_IsValid(geom) FROM {t} ORDER BY 1")
        assert [v for _, v in valid.fetchall()] == [True] * 5 + [False]
        hits = conn.execute(f"SELECT count(*) FROM {t} WHERE geom && ST_MakeEnvelope(0,0,2,2,4326)")
        assert hits.fetchone() == (4,)
        view = conn.execute(
            "SELECT srid FROM geometry_columns"
            " WHERE f_table_schema = %s AND f_table_name = 'things'",
            (store.schema,),
        )
        assert view.fetchone() == (4326,)
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                f"INSERT INTO {t} (job_id, feature_index, geom) VALUES ('x', 0, 'POINT(1 1)')"
            )


@pytest.mark.parametrize("backend", ["geopackage"], indirect=True)
def test_geopackage_opens_cleanly_in_gdal(store: FeatureStore) -> None:
    """ogrinfo lists the layer with its feature count and no warning; the RTree is filled."""
    assert isinstance(store, GeoPackageStore)
    job_id = _new_job(store)
    (batch,) = _batches(_convert(_doc(*POINTS), job_id))
    store.write_batch(batch)
    store.close()
    assert shutil.which("ogrinfo"), "GDAL's ogrinfo is needed for this test"
    result = subprocess.run(
        ["ogrinfo", "-so", str(store.path), "things"], capture_output=True, text=True, check=True
    )
    output = result.stdout + result.stderr
    assert "Feature Count: 5" in output
    assert "Warning" not in output
    assert "ERROR" not in output
    listing = subprocess.run(
        ["ogrinfo", str(store.path)], capture_output=True, text=True, check=True
    )
    assert "things" in listing.stdout
    assert "geobus_jobs" in listing.stdout
    assert "Warning" not in listing.stdout + listing.stderr
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA application_id").fetchone() == (0x47504B47,)
        assert conn.execute("SELECT count(*) FROM rtree_things_geom").fetchone() == (5,)
        triggers = "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name LIKE ?"
        assert conn.execute(triggers, ("rtree_things_geom_%",)).fetchone() == (7,)
        assert conn.execute(
            "SELECT minx, maxx, miny, maxy FROM rtree_things_geom WHERE id = "
            "(SELECT fid FROM things WHERE feature_index = 3)"
        ).fetchone() == (3.0, 3.0, 3.0, 3.0)
    from pyogrio import raw

    _meta, _fids, geometry, _fields = raw.read(
        store.path, layer="things", bbox=(0.5, 0.5, 2.5, 2.5)
    )
    assert sorted(shapely.get_x(shapely.from_wkb(geometry)).tolist()) == [1.0, 2.0]


def _adjust(feature: feature_pb2.Feature, *kinds: int) -> None:
    for kind in kinds:
        feature.adjustments.add(kind=kind, stage="validator")


def test_adjustments_are_counted_per_kind_once(
    backend: tuple[str, Any], store: FeatureStore
) -> None:
    """The job counts stored features per adjustment kind, once, also on the resumed-job path."""
    job_id = _new_job(store)
    k = feature_pb2
    (batch,) = _batches(_convert(_doc(*POINTS[:3]), job_id))
    _adjust(batch.features[0], k.ADJUSTMENT_KIND_ANTIMERIDIAN_CUT, k.ADJUSTMENT_KIND_REPAIRED)
    _adjust(batch.features[1], k.ADJUSTMENT_KIND_CLIPPED)
    store.write_batch(batch)
    store.write_batch(batch)
    (again,) = _batches(_convert(_doc(*POINTS), job_id))
    again.sequence = 7
    for feature in again.features:
        _adjust(feature, k.ADJUSTMENT_KIND_ANTIMERIDIAN_CUT)
    again.features[4].geometry = b""  # an empty geometry stored as null
    _adjust(again.features[4], k.ADJUSTMENT_KIND_EMPTY_AS_NULL)
    store.write_batch(again)
    job = store.get_job(job_id)
    assert job is not None
    assert job.counts.adjusted == {
        "antimeridian_cut": 3,
        "clipped": 1,
        "empty_as_null": 1,
        "repaired": 1,
    }
    assert (job.counts.stored, job.counts.repaired) == (5, 1)
    rows = _rows(backend[0], store, "things")
    assert rows[4]["geometry"] is None
    (listed,) = [j for j in store.list_jobs(limit=50, offset=0) if j.job_id == job_id]
    assert listed.counts.adjusted == job.counts.adjusted


def test_seal_records_the_document_warnings(store: FeatureStore) -> None:
    """Warnings sealed with a job (a legacy crs member) come back with it, once."""
    job_id = _new_job(store)
    warning = 'the document has a "crs" member — honoured as EPSG:3857'
    store.seal_job(job_id, features_total=0, batches_total=0, at=T0, warnings=[warning])
    store.seal_job(job_id, features_total=0, batches_total=0, at=T0, warnings=[warning])
    job = store.get_job(job_id)
    assert job is not None
    assert job.warnings == [warning]
    plain = _new_job(store)
    store.seal_job(plain, features_total=0, batches_total=0, at=T0)
    again = store.get_job(plain)
    assert again is not None
    assert again.warnings == []


def test_job_precision_is_kept_in_the_ledger(store: FeatureStore) -> None:
    """A job's precision parameter (0 included) reads back from get_job; absent stays None."""
    for job_id, precision in (("p-none", None), ("p-zero", 0), ("p-two", 2)):
        store.create_job(JobRecord(job_id=job_id, created=T0, precision=precision))
        job = store.get_job(job_id)
        assert job is not None
        assert job.precision == precision
