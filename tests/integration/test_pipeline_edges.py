"""Geometry at the edges through the real pipeline: counts, rejects and warnings on the job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyproj
import pytest
import shapely
from pyogrio import raw  # type: ignore[import-untyped]

from bench import datasets
from tests.integration.conftest import Pipeline
from tests.integration.test_pipeline import LAND, original_features, post, wait_final

pytestmark = pytest.mark.integration


def _feature(name: str, geometry: dict[str, Any] | None) -> dict[str, Any]:
    return {"type": "Feature", "properties": {"name": name}, "geometry": geometry}


def _polygon(ring: list[list[float]]) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [ring]}


FEATURES = [
    _feature("fiji", _polygon([[178, -18], [-179, -18], [-179, -16], [178, -16], [178, -18]])),
    _feature("unwrapped", _polygon([[178, 60], [185, 60], [185, 65], [178, 65], [178, 60]])),
    _feature("swapped", {"type": "Point", "coordinates": [52.5, 113.4]}),
    _feature("arctic", _polygon([[0, 80], [10, 80], [10, 89], [0, 89], [0, 80]])),
    _feature("pole", {"type": "Point", "coordinates": [0, 89.5]}),
    _feature("empty", {"type": "LineString", "coordinates": []}),
    _feature("null", None),
    _feature("m-values", {"type": "Point", "coordinates": [1, 2, 3, 4]}),
    _feature("quake", {"type": "Point", "coordinates": [170.5, -20.1, -33.0]}),
]


def _stored(path: Path, layer: str = "features") -> dict[str, shapely.Geometry | None]:
    _meta, _fids, geometry, fields = raw.read(path, layer=layer)
    names = [json.loads(p)["name"] for p in fields[3]]
    return {
        n: shapely.from_wkb(g) if g is not None else None
        for n, g in zip(names, geometry, strict=True)
    }


def test_edge_cases_into_web_mercator_are_counted_and_explained(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Cut, normalised, clipped, nulled, 3-D and refused features all show on the job."""
    pipeline.env["GEOBUS_TARGET_CRS"] = "EPSG:3857"
    pipeline.start_all()
    document = tmp_path / "edges.geojson"
    document.write_text(json.dumps({"type": "FeatureCollection", "features": FEATURES}))
    job = wait_final(pipeline, post(pipeline, document)["jobID"])
    counts = job["counts"]
    assert job["status"] == "successful", job
    assert (counts["received"], counts["stored"], counts["rejected"]) == (9, 6, 3)
    assert counts["adjusted"] == {
        "antimeridian_cut": 2,
        "clipped": 1,
        "empty_as_null": 1,
        "longitude_normalised": 1,
    }
    rejects = httpx.get(f"{pipeline.base_url}/v1/jobs/{job['jobID']}/rejects", timeout=10).json()
    reasons = {r["index"]: r["reason"] for r in rejects["rejects"]}
    assert reasons == {
        2: "latitude_longitude_swapped",
        4: "outside_domain",
        7: "position_too_long",
    }
    stored = _stored(Path(pipeline.env["GEOBUS_DATABASE_URL"]))
    assert stored["empty"] is None
    assert stored["null"] is None
    fiji = stored["fiji"]
    assert fiji is not None
    assert fiji.geom_type == "MultiPolygon"
    assert shapely.bounds(fiji)[[0, 2]].tolist() == pytest.approx([-20037508.34, 20037508.34])
    quake = stored["quake"]
    assert quake is not None
    assert shapely.has_z(quake)
    assert quake.z == -33.0


def test_legacy_crs_member_is_honoured_with_a_warning_on_the_job(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """A document in EPSG:3857 saying so with "crs" is stored right, and the job says why."""
    pipeline.env["GEOBUS_TARGET_CRS"] = "EPSG:4326"
    pipeline.start_all()
    document = tmp_path / "legacy.geojson"
    crs = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3857"}}
    point = {"type": "Point", "coordinates": [1113194.9079, 1118889.9748]}
    document.write_text(
        json.dumps({"type": "FeatureCollection", "crs": crs, "features": [_feature("p", point)]})
    )
    job = wait_final(pipeline, post(pipeline, document)["jobID"])
    assert job["status"] == "successful", job
    assert len(job["warnings"]) == 1
    assert "EPSG:3857" in job["warnings"][0]
    stored = _stored(Path(pipeline.env["GEOBUS_DATABASE_URL"]))["p"]
    assert stored is not None
    assert (stored.x, stored.y) == pytest.approx((10.0, 10.0), abs=1e-6)


def _stored_by_index(path: Path, layer: str) -> dict[int, tuple[shapely.Geometry, str | None]]:
    """The stored geometry and adjustments of each feature, by feature index."""
    _meta, _fids, geometry, fields = raw.read(
        path, layer=layer, columns=["feature_index", "adjustments"]
    )
    return {
        index: (shapely.from_wkb(wkb), adjustments)
        for index, wkb, adjustments in zip(
            fields[0].tolist(), geometry, fields[1].tolist(), strict=True
        )
    }


def _vertices(geometry: shapely.Geometry) -> set[tuple[float, ...]]:
    return {tuple(row) for row in shapely.get_coordinates(geometry).tolist()}


def test_precision_parameter_snaps_stored_coordinates_and_keeps_them_valid(
    pipeline: Pipeline,
) -> None:
    """countries-land-10km with precision=2 is stored in whole cm, all valid; without, exact."""
    pipeline.env["GEOBUS_TARGET_CRS"] = "EPSG:3857"
    pipeline.start_all()
    refused = httpx.post(
        f"{pipeline.base_url}/v1/features",
        content=b"{}",
        headers={"Content-Type": "application/geo+json"},
        params={"precision": "16"},
        timeout=10,
    )
    assert refused.status_code == 422
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert "precision" in refused.json()["detail"]
    land = datasets.path(LAND)
    snapped_id = post(pipeline, land, collection="snapped", precision="2")["jobID"]
    exact_id = post(pipeline, land, collection="exact")["jobID"]
    snapped_job, exact_job = wait_final(pipeline, snapped_id), wait_final(pipeline, exact_id)
    for job in (snapped_job, exact_job):
        assert job["status"] == "successful", job
        assert job["counts"]["stored"] == 220, job
    assert snapped_job["precision"] == 2
    assert exact_job["precision"] is None

    gpkg = Path(pipeline.env["GEOBUS_DATABASE_URL"])
    snapped = _stored_by_index(gpkg, "snapped")
    exact = _stored_by_index(gpkg, "exact")
    assert sorted(snapped) == sorted(exact) == list(range(220))
    to_mercator = pyproj.Transformer.from_crs("OGC:CRS84", "EPSG:3857", always_xy=True)
    untouched = 0
    for index, feature in enumerate(original_features(LAND)):
        grid, _ = snapped[index]
        stored, adjustments = exact[index]
        assert shapely.is_valid(grid), index
        coords = shapely.get_coordinates(grid)
        assert (np.round(coords, 2) == coords).all(), index
        # Snap-rounding moves a vertex by about one grid cell at most.
        assert shapely.hausdorff_distance(grid, stored) < 0.02, index
        if adjustments is None:
            # Without precision the coordinates are PROJ's, bit for bit.
            source = shapely.from_geojson(json.dumps(feature["geometry"]))
            x, y = to_mercator.transform(*shapely.get_coordinates(source).T)
            assert _vertices(stored) == _vertices(shapely.points(x, y)), index
            untouched += 1
    assert untouched > 100
