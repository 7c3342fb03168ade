"""The whole pipeline, as native processes, on real RabbitMQ and a real store.

A real dataset is POSTed to the ingress; validated, repaired and reprojected
features must come out in PostGIS (or the GeoPackage default) and be checked
against independent references: PostGIS's own ST_Transform and PROJ.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pyproj
import pytest
import shapely

from bench import datasets
from tests.integration.conftest import Pipeline

pytestmark = pytest.mark.integration

LAND = "countries-land-10km"


def post(pipeline: Pipeline, path: Path, **params: str) -> dict[str, Any]:
    """POST a file; return the 202's job document."""
    response = httpx.post(
        pipeline.base_url + "/v1/features",
        content=path.read_bytes(),
        headers={"Content-Type": "application/geo+json"},
        params=params,
        timeout=60,
    )
    assert response.status_code == 202, response.text
    assert response.headers["Location"] == f"/v1/jobs/{response.json()['jobID']}"
    document: dict[str, Any] = response.json()
    return document


def wait_final(pipeline: Pipeline, job_id: str, timeout: float = 120) -> dict[str, Any]:
    """Poll the job until it is final."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        document: dict[str, Any] = httpx.get(
            f"{pipeline.base_url}/v1/jobs/{job_id}", timeout=10
        ).json()
        if document["status"] in ("successful", "failed", "dismissed"):
            return document
        time.sleep(0.2)
    logs = "\n".join(f"--- {n}\n{pipeline.log(n)[-3000:]}" for n in pipeline.processes)
    pytest.fail(f"job {job_id} not final after {timeout} s: {document}\n{logs}")


def original_features(name: str) -> list[dict[str, Any]]:
    """The dataset's features as Python's json module reads them."""
    features: list[dict[str, Any]] = json.loads(datasets.path(name).read_bytes())["features"]
    return features


def test_countries_into_postgis_match_independent_reference(
    pipeline: Pipeline, fresh_pg_url: str
) -> None:
    """countries-land-10km → PostGIS in EPSG:3857: all accounted for, valid, exact, CCW."""
    pipeline.env["GEOBUS_DATABASE_URL"] = fresh_pg_url
    pipeline.env["GEOBUS_TARGET_CRS"] = "EPSG:3857"
    pipeline.start_all()
    accepted = post(pipeline, datasets.path(LAND))
    assert accepted["status"] in ("accepted", "running")
    job = wait_final(pipeline, accepted["jobID"])
    counts = job["counts"]
    assert job["status"] == "successful", job
    assert counts["stored"] + counts["rejected"] == 220
    assert counts["received"] == 220
    # 83 arrive invalid; a few more become invalid only in EPSG:3857 and are
    # repaired by the reprojector (checked against the rows below).
    assert counts["repaired"] >= 83
    assert job["progress"] == 100

    originals = original_features(LAND)
    with psycopg.connect(fresh_pg_url) as conn:
        conn.execute(
            "CREATE TEMP TABLE original (feature_index int, geom geometry, properties jsonb)"
        )
        with conn.cursor().copy(
            "COPY original (feature_index, geom, properties) FROM STDIN"
        ) as copy:
            for i, feature in enumerate(originals):
                geometry = shapely.from_geojson(json.dumps(feature["geometry"]))
                copy.write_row(
                    (i, shapely.to_wkb(geometry, hex=True), json.dumps(feature["properties"]))
                )
        rows = conn.execute(
            """
            WITH ref AS (
                -- The reference: PostGIS's own transform of the input; for
                -- an invalid input, of its PostGIS repair, repaired again in
                -- the target CRS (projection can make valid rings cross).
                SELECT feature_index, properties, ST_IsValid(geom) AS was_valid,
                       ST_NPoints(geom) AS npoints,
                       ST_MakeValid(
                           ST_Transform(
                               ST_SetSRID(
                                   CASE WHEN ST_IsValid(geom) THEN geom
                                        ELSE ST_MakeValid(geom, 'method=structure') END,
                                   4326),
                               3857),
                           'method=structure') AS geom
                FROM original
            )
            SELECT s.feature_index,
                   ST_IsValid(s.geom),
                   ST_SRID(s.geom),
                   ST_IsPolygonCCW(s.geom),
                   s.adjustments::text,
                   ST_HausdorffDistance(s.geom, r.geom),
                   ST_NPoints(s.geom) = r.npoints OR NOT r.was_valid,
                   s.properties = r.properties,
                   ST_Area(ST_SymDifference(s.geom, r.geom)) / ST_Area(s.geom)
            FROM geobus.features s JOIN ref r USING (feature_index)
            ORDER BY s.feature_index
            """
        ).fetchall()
        distinct = conn.execute(
            "SELECT count(*), count(DISTINCT (job_id, feature_index)) FROM geobus.features"
        ).fetchone()
    assert len(rows) == counts["stored"]
    assert distinct == (counts["stored"], counts["stored"])
    # Which stages repaired each stored feature (adjustments is a JSON array).
    stages = {row[0]: {a["stage"] for a in json.loads(row[4] or "[]")} for row in rows}
    assert sum(1 for s in stages.values() if "validator" in s) == 83
    assert sum(1 for s in stages.values() if s) == counts["repaired"]
    for index, valid, srid, ccw, _adj, distance, same_points, same_props, area_change in rows:
        assert valid, index
        assert srid == 3857
        assert ccw, f"feature {index} is not counter-clockwise"
        if stages[index]:
            # A repair is compared with PostGIS's own ST_MakeValid (another
            # GEOS version, and before rather than after projection): they
            # may differ in slivers, not in substance.
            assert area_change < 1e-4, f"feature {index}: area differs by {area_change:.2e}"
        else:
            assert distance < 0.001, f"feature {index} is {distance} m from the reference"
        assert same_points or "reprojector" in stages[index], index
        assert same_props, index


def test_geopackage_default_opens_in_gdal(pipeline: Pipeline) -> None:
    """The default store is a GeoPackage that GDAL reads, with coordinates matching PROJ."""
    import pyogrio

    pipeline.env["GEOBUS_TARGET_CRS"] = "EPSG:3857"
    pipeline.start_all()
    job = wait_final(pipeline, post(pipeline, datasets.path(LAND), collection="land")["jobID"])
    assert job["status"] == "successful"
    assert job["counts"]["stored"] + job["counts"]["rejected"] == 220

    gpkg = pipeline.env["GEOBUS_DATABASE_URL"]
    info = pyogrio.read_info(gpkg, layer="land")
    assert info["features"] == job["counts"]["stored"]
    assert info["crs"] == "EPSG:3857"
    _, _, geometry, fields = pyogrio.raw.read(
        gpkg, layer="land", columns=["feature_index", "properties", "adjustments"]
    )
    indices = fields[0].tolist()
    stored = dict(zip(indices, shapely.from_wkb(geometry), strict=True))
    properties = dict(zip(indices, fields[1].tolist(), strict=True))
    repaired = {
        i for i, adjustments in zip(indices, fields[2].tolist(), strict=True) if adjustments
    }
    assert len(repaired) == job["counts"]["repaired"]

    to_mercator = pyproj.Transformer.from_crs("OGC:CRS84", "EPSG:3857", always_xy=True)
    for index, feature in enumerate(original_features(LAND)):
        geom = stored[index]
        assert shapely.is_valid(geom)
        assert json.loads(properties[index]) == feature["properties"]
        source = shapely.from_geojson(json.dumps(feature["geometry"]))
        if not shapely.is_valid(source):
            source = shapely.make_valid(source, method="structure", keep_collapsed=False)
        # Independent reference: PROJ on the input coordinates.
        xy = shapely.get_coordinates(source)
        x, y = to_mercator.transform(xy[:, 0], xy[:, 1])
        reference = shapely.set_coordinates(source, np.column_stack([x, y]))
        if index in repaired:
            reference = shapely.make_valid(reference, method="structure", keep_collapsed=False)
            change = shapely.area(shapely.symmetric_difference(geom, reference)) / geom.area
            assert change < 1e-4, index
        else:
            assert shapely.hausdorff_distance(geom, reference) < 0.001, index


def test_two_replicas_give_the_same_result_as_one(
    pipeline: Pipeline, pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    """Two replicas of every stage store exactly what one replica stores."""
    import pyogrio

    pipeline.start_all(replicas=2)
    job = wait_final(pipeline, post(pipeline, datasets.path(LAND))["jobID"])
    assert job["status"] == "successful"
    two = pyogrio.raw.read(
        pipeline.env["GEOBUS_DATABASE_URL"],
        layer="features",
        columns=["feature_index", "properties"],
    )
    pipeline.stop()

    single = Pipeline(env=dict(pipeline_env), logs=pipeline.logs)
    single.env["GEOBUS_DATABASE_URL"] = str(tmp_path / "single.gpkg")
    try:
        single.start_all(replicas=1)
        job1 = wait_final(single, post(single, datasets.path(LAND))["jobID"])
        one = pyogrio.raw.read(
            single.env["GEOBUS_DATABASE_URL"],
            layer="features",
            columns=["feature_index", "properties"],
        )
    finally:
        single.stop()
    assert job1["counts"] == job["counts"]

    def by_index(result: Any) -> dict[int, tuple[bytes, str]]:
        _, _, geometry, fields = result
        return {
            int(i): (bytes(g), p)
            for i, g, p in zip(fields[0].tolist(), geometry, fields[1].tolist(), strict=True)
        }

    assert by_index(two) == by_index(one)


def test_clean_shutdown(pipeline: Pipeline) -> None:
    """SIGTERM stops every process with exit code 0 and no traceback."""
    pipeline.env["GEOBUS_INGRESS_RT_PRIORITY"] = "1"
    pipeline.start_all()
    job = wait_final(pipeline, post(pipeline, datasets.path(LAND))["jobID"])
    assert job["status"] == "successful"
    # Batch work runs GEOBUS_BATCH_NICENESS (15) below the ingress's event loop.
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    nice = {name: os.getpriority(os.PRIO_PROCESS, p.pid) for name, p in pipeline.processes.items()}
    ingress = pipeline.processes["ingress"].pid
    children = Path(f"/proc/{ingress}/task/{ingress}/children").read_text().split()
    workers = [int(c) for c in children if b"forkserver" in Path(f"/proc/{c}/cmdline").read_bytes()]
    assert workers, children
    conversion = [
        int(g) for w in workers for g in Path(f"/proc/{w}/task/{w}/children").read_text().split()
    ]
    assert {name: n - ours for name, n in nice.items()} == {
        name: 0 if name == "ingress" else min(15, 19 - ours) for name in pipeline.processes
    }
    assert conversion
    assert all(os.getpriority(os.PRIO_PROCESS, c) == min(19, ours + 15) for c in conversion)
    # Real time: the event-loop thread (the main one) and the persisting
    # pool's (at most 8), not the other pools nor the conversion worker
    # (SCHED_RESET_ON_FORK); CI runs as root.
    policies = {
        int(t.name): os.sched_getscheduler(int(t.name)) & ~os.SCHED_RESET_ON_FORK
        for t in Path(f"/proc/{ingress}/task").iterdir()
    }
    assert policies.pop(ingress) == os.SCHED_RR, "the ingress needs CAP_SYS_NICE (root)"
    kinds = sorted(policies.values())
    assert set(kinds) == {os.SCHED_OTHER, os.SCHED_RR}, kinds
    assert 1 <= kinds.count(os.SCHED_RR) <= 8, kinds
    assert kinds.count(os.SCHED_OTHER) >= 2, kinds
    assert {os.sched_getscheduler(c) for c in [*workers, *conversion]} == {os.SCHED_OTHER}
    codes = pipeline.stop()
    assert set(codes.values()) == {0}, codes
    for name in pipeline.processes:
        assert "Traceback" not in pipeline.log(name), pipeline.log(name)


@pytest.mark.slow
def test_sigterm_mid_job_and_restart_lose_and_duplicate_nothing(pipeline: Pipeline) -> None:
    """SIGTERM the validator mid-job (exit 0, no traceback), restart it: all 250 accounted once."""
    import sqlite3

    pipeline.env["GEOBUS_BATCH_MAX_FEATURES"] = "10"
    pipeline.start_all()
    job_id = post(pipeline, datasets.path("countries-maritime-10m"))["jobID"]
    deadline = time.monotonic() + 120
    while True:
        document = httpx.get(f"{pipeline.base_url}/v1/jobs/{job_id}", timeout=10).json()
        if document["counts"]["stored"] > 0:
            break
        assert time.monotonic() < deadline, document
        time.sleep(0.1)
    assert document["status"] == "running", "the job must still be in flight"
    assert pipeline.stop("validator-1") == {"validator-1": 0}, pipeline.log("validator-1")
    assert "Traceback" not in pipeline.log("validator-1"), pipeline.log("validator-1")
    print("stopped the validator at", document["counts"])
    pipeline.start("validator-2", "worker", "validator")
    job = wait_final(pipeline, job_id, timeout=300)
    counts = job["counts"]
    print("final counts", counts)
    assert job["status"] == "successful", job
    assert counts["stored"] + counts["rejected"] == 250
    with sqlite3.connect(pipeline.env["GEOBUS_DATABASE_URL"]) as conn:
        rows, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT feature_index) FROM features"
        ).fetchone()
    assert rows == distinct == counts["stored"]
