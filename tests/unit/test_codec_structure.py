"""Structural RFC 7946 errors reject one feature with a reason and a location."""

from __future__ import annotations

import io

import pytest

from geobus.codec.batches import BatchContext, BatchLimits
from geobus.codec.convert import DocumentConverter
from geobus.problems import reason_name
from geobus.v1 import rejection_pb2

GOOD = b'{"type":"Feature","properties":{"ok":1},"geometry":{"type":"Point","coordinates":[1,2]}}'


def _feature(geometry: bytes) -> bytes:
    return b'{"type":"Feature","properties":{},"geometry":' + geometry + b"}"


# (name, feature text, expected reason code, expected JSON pointer or None)
CASES: list[tuple[str, bytes, str, str | None]] = [
    (
        "unknown geometry type",
        _feature(b'{"type":"Pointy","coordinates":[1,2]}'),
        "invalid_geometry_type",
        "/geometry/type",
    ),
    (
        "geometry type missing",
        _feature(b'{"coordinates":[1,2]}'),
        "invalid_geometry_type",
        "/geometry/type",
    ),
    (
        "geometry type not a string",
        _feature(b'{"type":7,"coordinates":[1,2]}'),
        "invalid_geometry_type",
        "/geometry/type",
    ),
    (
        "coordinates missing",
        _feature(b'{"type":"Point"}'),
        "invalid_coordinates",
        "/geometry/coordinates",
    ),
    (
        "position with one number",
        _feature(b'{"type":"Point","coordinates":[1]}'),
        "position_too_short",
        "/geometry/coordinates",
    ),
    (
        "position with four numbers",
        _feature(b'{"type":"LineString","coordinates":[[1,2],[3,4,5,6]]}'),
        "position_too_long",
        "/geometry/coordinates/1",
    ),
    (
        "string coordinate",
        _feature(b'{"type":"Point","coordinates":["1",2]}'),
        "non_numeric_coordinate",
        "/geometry/coordinates/0",
    ),
    (
        "null coordinate",
        _feature(b'{"type":"LineString","coordinates":[[1,2],[3,null]]}'),
        "non_numeric_coordinate",
        "/geometry/coordinates/1/1",
    ),
    (
        "boolean coordinate",
        _feature(b'{"type":"Point","coordinates":[true,2]}'),
        "non_numeric_coordinate",
        "/geometry/coordinates/0",
    ),
    (
        "NaN literal",
        _feature(b'{"type":"Point","coordinates":[NaN,2]}'),
        "non_finite_coordinate",
        "/geometry/coordinates/0",
    ),
    (
        "Infinity literal",
        _feature(b'{"type":"Point","coordinates":[1,-Infinity]}'),
        "non_finite_coordinate",
        "/geometry/coordinates/1",
    ),
    (
        "overflowing number",
        _feature(b'{"type":"Point","coordinates":[1e400,2]}'),
        "non_finite_coordinate",
        "/geometry/coordinates/0",
    ),
    (
        "linestring with one position",
        _feature(b'{"type":"LineString","coordinates":[[1,2]]}'),
        "linestring_too_short",
        "/geometry/coordinates",
    ),
    (
        "ring with three positions",
        _feature(b'{"type":"Polygon","coordinates":[[[0,0],[1,0],[0,0]]]}'),
        "ring_too_short",
        "/geometry/coordinates/0",
    ),
    (
        "ring not closed",
        _feature(b'{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1]]]}'),
        "ring_not_closed",
        "/geometry/coordinates/0/3",
    ),
    (
        "hole not closed",
        _feature(
            b'{"type":"Polygon","coordinates":[[[0,0],[9,0],[9,9],[0,0]],'
            b"[[1,1],[2,1],[2,2],[1,2]]]}"
        ),
        "ring_not_closed",
        "/geometry/coordinates/1/3",
    ),
    (
        "multipolygon ring too short",
        _feature(
            b'{"type":"MultiPolygon","coordinates":[[[[0,0],[1,0],[1,1],[0,0]]],'
            b"[[[5,5],[6,5],[5,5]]]]}"
        ),
        "ring_too_short",
        "/geometry/coordinates/1/0",
    ),
    (
        "polygon coordinates too shallow",
        _feature(b'{"type":"Polygon","coordinates":[[0,0],[1,1]]}'),
        "invalid_coordinates",
        "/geometry/coordinates/0/0",
    ),
    (
        "point coordinates too deep",
        _feature(b'{"type":"Point","coordinates":[[1,2]]}'),
        "invalid_coordinates",
        "/geometry/coordinates",
    ),
    (
        "coordinates not an array",
        _feature(b'{"type":"LineString","coordinates":"0 0, 1 1"}'),
        "invalid_coordinates",
        "/geometry/coordinates",
    ),
    (
        "mixed 2-D and 3-D",
        _feature(b'{"type":"LineString","coordinates":[[1,2],[3,4,5]]}'),
        "mixed_dimensions",
        "/geometry/coordinates/1",
    ),
    (
        "collection without geometries",
        _feature(b'{"type":"GeometryCollection"}'),
        "invalid_coordinates",
        "/geometry/geometries",
    ),
    (
        "bad member of a collection",
        _feature(
            b'{"type":"GeometryCollection","geometries":[{"type":"Point","coordinates":[1,2]},'
            b'{"type":"Point","coordinates":[1]}]}'
        ),
        "position_too_short",
        "/geometry/geometries/1/coordinates",
    ),
    ("geometry is a string", _feature(b'"POINT (1 2)"'), "invalid_feature", "/geometry"),
    (
        "geometry member missing",
        b'{"type":"Feature","properties":{}}',
        "invalid_feature",
        "/geometry",
    ),
    (
        "feature type wrong",
        b'{"type":"Featur","properties":{},"geometry":null}',
        "invalid_feature",
        "/type",
    ),
    ("feature not an object", b"[1,2]", "invalid_feature", None),
    (
        "properties not an object",
        b'{"type":"Feature","properties":[1],"geometry":null}',
        "invalid_feature",
        "/properties",
    ),
    (
        "id is an object",
        b'{"type":"Feature","id":{"a":1},"properties":{},"geometry":null}',
        "invalid_id",
        "/id",
    ),
    (
        "bbox with three numbers",
        b'{"type":"Feature","bbox":[1,2,3],"properties":{},"geometry":null}',
        "invalid_bbox",
        "/bbox",
    ),
    (
        "coordinates nested 100,000 deep",
        _feature(b'{"type":"Point","coordinates":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        "nested_too_deeply",
        None,
    ),
    (
        "malformed JSON inside a feature",
        b'{"type":"Feature","properties":{"a":[1,,2]},"geometry":null}',
        "malformed_json",
        None,
    ),
]


def _convert(features: list[bytes]) -> tuple[list[int], list[rejection_pb2.Rejection]]:
    doc = b'{"type":"FeatureCollection","features":[' + b",".join(features) + b"]}"
    converter = DocumentConverter(io.BytesIO(doc), BatchContext(job_id="job"), BatchLimits())
    kept: list[int] = []
    rejected: list[rejection_pb2.Rejection] = []
    for out in converter:
        if out.batch is not None:
            kept.extend(f.index for f in out.batch.features)
        if out.rejections is not None:
            rejected.extend(out.rejections.rejections)
    return kept, rejected


@pytest.mark.parametrize(("name", "text", "reason", "pointer"), CASES, ids=[c[0] for c in CASES])
def test_structural_error_rejects_only_that_feature(
    name: str, text: bytes, reason: str, pointer: str | None
) -> None:
    """A structurally wrong feature between two good ones is rejected with its reason and path."""
    kept, rejected = _convert([GOOD, text, GOOD])
    assert kept == [0, 2]
    assert len(rejected) == 1
    rejection = rejected[0]
    assert rejection.feature_index == 1
    assert rejection.stage == "ingress"
    assert reason_name(rejection.reason) == reason, rejection.message
    assert rejection.message
    if pointer is not None:
        assert rejection.location.json_pointer == pointer


def test_offending_coordinate_is_reported() -> None:
    """The rejection of an unclosed ring carries the position that breaks the rule."""
    text = _feature(b'{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0.5,7.25]]]}')
    _, rejected = _convert([text])
    assert list(rejected[0].location.coordinate) == [0.5, 7.25]


def test_valid_edge_cases_are_kept() -> None:
    """Empty geometries, null geometry, Z, and nested collections are valid GeoJSON."""
    texts = [
        _feature(b'{"type":"Point","coordinates":[]}'),
        _feature(b'{"type":"Polygon","coordinates":[]}'),
        _feature(b'{"type":"GeometryCollection","geometries":[]}'),
        b'{"type":"Feature","properties":null,"geometry":null}',
        _feature(b'{"type":"Point","coordinates":[1,2,3]}'),
        _feature(
            b'{"type":"GeometryCollection","geometries":[{"type":"GeometryCollection",'
            b'"geometries":[{"type":"Point","coordinates":[1,2]}]}]}'
        ),
        b'{"type":"Feature","geometry":null}',
    ]
    kept, rejected = _convert(texts)
    assert [r.message for r in rejected] == []
    assert kept == list(range(len(texts)))
