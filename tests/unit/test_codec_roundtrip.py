"""GeoJSON → geobus.v1 → GeoJSON is lossless on real datasets."""

from __future__ import annotations

import io
import json

import pytest

from bench.roundtrip import geobus_roundtrip, roundtrip_mismatches


@pytest.mark.slow
@pytest.mark.parametrize("name", ["countries-land-10km", "earthquakes", "us-counties"])
def test_real_dataset_roundtrip_is_bit_identical(name: str) -> None:
    """Every coordinate bit-identical, properties and ids equal, order kept."""
    from bench import datasets

    path = datasets.path(name)
    original = json.loads(path.read_bytes())["features"]
    compared, problems = roundtrip_mismatches(iter(original), geobus_roundtrip(path))
    assert problems == []
    assert compared == len(original)


def test_roundtrip_check_can_fail(tmp_path: object) -> None:
    """The comparison notices a coordinate that differs in its last bit, and 1 vs 1.0."""
    a = [
        {
            "type": "Feature",
            "properties": {"n": 1},
            "geometry": {"type": "Point", "coordinates": [0.1, 0.2]},
        }
    ]
    b = [
        {
            "type": "Feature",
            "properties": {"n": 1.0},
            "geometry": {"type": "Point", "coordinates": [0.1, 0.20000000000000004]},
        }
    ]
    _, problems = roundtrip_mismatches(iter(a), iter(b))
    assert len(problems) == 2


def test_edge_cases_roundtrip() -> None:
    """Z, empties, null geometry, collections and awkward numbers survive the round trip."""
    features = [
        {"type": "Point", "coordinates": [1e-300, -0.0, 12345678.123456789]},
        {"type": "Point", "coordinates": []},
        {"type": "Polygon", "coordinates": []},
        {"type": "MultiLineString", "coordinates": [[[0.1, 0.2], [0.3, 0.30000000000000004]]]},
        {
            "type": "GeometryCollection",
            "geometries": [
                {"type": "Point", "coordinates": [5e-324, 1.7976931348623157e308]},
                {"type": "LineString", "coordinates": [[-180, -90], [180, 90]]},
            ],
        },
        {
            "type": "Polygon",
            "coordinates": [
                [[0, 0, 1], [4, 0, 1], [4, 4, 2], [0, 0, 1]],
                [[1, 1, 0], [2, 1, 0], [2, 2, 0], [1, 1, 0]],
            ],
        },
        None,
    ]
    original = [
        {"type": "Feature", "id": i, "properties": {"i": i, "big": 2**62 + i}, "geometry": g}
        for i, g in enumerate(features)
    ]
    doc = json.dumps({"type": "FeatureCollection", "features": original}).encode()
    path_like = io.BytesIO(doc)

    class _Path:
        name = "mem.geojson"

        def open(self, mode: str) -> io.BytesIO:
            return path_like

    compared, problems = roundtrip_mismatches(iter(original), geobus_roundtrip(_Path()))  # type: ignore[arg-type]
    assert problems == []
    assert compared == len(features)
