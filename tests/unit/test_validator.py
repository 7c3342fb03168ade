"""The validator's pure transform: range, validity, repair, orientation."""

from __future__ import annotations

import geometries as geo
import numpy as np
import pytest
import shapely
from shapely.testing import assert_geometries_equal

from geobus.settings import Settings
from geobus.v1 import feature_pb2, rejection_pb2
from geobus.validator.transform import ValidationPolicy, validate
from geobus.validity import polygonal_parts

REPAIR = ValidationPolicy()
REJECT = ValidationPolicy(repair="reject")
R = rejection_pb2


def _rings_follow_right_hand_rule(geometries: list[shapely.Geometry]) -> bool:
    """Every polygon exterior counter-clockwise and every hole clockwise."""
    parts = np.asarray(geometries, dtype=object)
    while True:
        parts = shapely.get_parts(parts)
        multi = np.isin(shapely.get_type_id(parts), (4, 5, 6, 7))
        if not multi.any():
            break
    polygons = parts[shapely.get_type_id(parts) == 3]
    rings, owner = shapely.get_rings(polygons, return_index=True)
    exterior = np.r_[True, owner[1:] != owner[:-1]] if len(rings) else np.array([], dtype=bool)
    return bool((shapely.is_ccw(rings) == exterior).all())


def test_valid_ccw_features_keep_their_bytes() -> None:
    """Valid, correctly wound geometries pass with their exact bytes and no adjustment."""
    keep = [
        geo.point,
        geo.point_z,
        geo.line_string,
        geo.polygon,
        geo.polygon_with_hole,
    ]
    batch = geo.batch_of(keep)
    result = validate(batch, REPAIR)
    assert result.rejections is None
    assert [f.geometry for f in result.batch.features] == [f.geometry for f in batch.features]
    assert all(len(f.adjustments) == 0 for f in result.batch.features)


def test_envelope_identity_and_order_are_kept() -> None:
    """job, sequence, source, crs, collection, encoding, ids, properties pass through in order."""
    batch = geo.batch_of([geo.polygon_cw, geo.bowtie, geo.collapsed, geo.point])
    result = validate(batch, REPAIR)
    out = result.batch
    assert (out.job_id, out.sequence, out.crs, out.collection) == (
        batch.job_id,
        batch.sequence,
        batch.crs,
        batch.collection,
    )
    assert out.source == batch.source
    assert out.geometry_encoding == feature_pb2.GEOMETRY_ENCODING_ISO_WKB
    assert [f.index for f in out.features] == [0, 1, 3]
    assert [f.id.string_id for f in out.features] == ["f0", "f1", "f3"]
    assert [f.properties for f in out.features] == [b'{"i":0}', b'{"i":1}', b'{"i":3}']
    assert result.rejections is not None
    assert (result.rejections.job_id, result.rejections.sequence) == ("job-1", batch.sequence)
    assert result.rejections.stage == "validator"
    assert result.rejections.rejections[0].feature_id.string_id == "f2"


@pytest.mark.parametrize(
    "geometry",
    [
        geo.polygon_cw,
        geo.polygon_with_hole_wrong,
        geo.polygon_z_cw,
        geo.multi_polygon_mixed,
        geo.geometry_collection_cw,
    ],
    ids=["cw", "hole-wrong", "z-cw", "multi-mixed", "collection"],
)
def test_rings_are_reoriented_to_the_right_hand_rule(geometry: shapely.Geometry) -> None:
    """Wrongly wound rings are reversed (RFC 7946 §3.1.6); shape and Z are unchanged."""
    assert not _rings_follow_right_hand_rule([geometry])
    batch = geo.batch_of([geometry])
    result = validate(batch, REPAIR)
    (out,) = geo.decoded(result.batch)
    assert result.batch.features[0].geometry != batch.features[0].geometry
    assert _rings_follow_right_hand_rule([out])
    assert_geometries_equal(out, geometry, normalize=True)
    assert shapely.has_z(out) == shapely.has_z(geometry)
    assert len(result.batch.features[0].adjustments) == 0


def test_null_geometries_pass_and_empty_ones_become_null() -> None:
    """A null geometry passes untouched; an empty one is stored as null, with an adjustment."""
    batch = geo.batch_of([None, *geo.EMPTY])
    result = validate(batch, REPAIR)
    assert result.rejections is None
    assert [f.geometry for f in result.batch.features] == [b""] * (1 + len(geo.EMPTY))
    assert len(result.batch.features[0].adjustments) == 0
    kinds = [[a.kind for a in f.adjustments] for f in result.batch.features[1:]]
    assert kinds == [[feature_pb2.ADJUSTMENT_KIND_EMPTY_AS_NULL]] * len(geo.EMPTY)


@pytest.mark.parametrize(
    ("geometry", "expected"),
    [
        (geo.bowtie, "MULTIPOLYGON (((0 0, 1 1, 0 2, 0 0)), ((1 1, 2 2, 2 0, 1 1)))"),
        (
            geo.bowtie_z,
            "MULTIPOLYGON Z (((0 0 1, 1 1 2.5, 0 2 4, 0 0 1)), ((1 1 2.5, 2 2 2, 2 0 3, 1 1 2.5)))",
        ),
        (geo.self_touching_ring, "MULTIPOLYGON (((0 0, 2 0, 0 4, 0 0)), ((2 0, 4 0, 4 4, 2 0)))"),
        # GEOS (structure) keeps a hole outside its shell as a polygon of its own.
        (
            geo.hole_outside_shell,
            "MULTIPOLYGON (((0 0, 4 0, 4 4, 0 4, 0 0)), ((10 10, 11 10, 11 11, 10 10)))",
        ),
        (geo.nested_shells, "POLYGON ((0 0, 4 0, 4 4, 0 4, 0 0))"),
    ],
    ids=["bowtie", "bowtie-z", "self-touching", "hole-outside", "nested-shells"],
)
def test_invalid_polygons_are_repaired(geometry: shapely.Geometry, expected: str) -> None:
    """make_valid (structure) gives a valid, polygonal, right-hand-rule geometry, Z kept."""
    reason = shapely.is_valid_reason(geometry)
    result = validate(geo.batch_of([geometry]), REPAIR)
    assert result.rejections is None
    (out,) = geo.decoded(result.batch)
    assert shapely.is_valid(out)
    assert_geometries_equal(out, shapely.from_wkt(expected), normalize=True)
    assert shapely.has_z(out) == shapely.has_z(geometry)
    assert _rings_follow_right_hand_rule([out])
    (adjustment,) = result.batch.features[0].adjustments
    assert adjustment.kind == feature_pb2.ADJUSTMENT_KIND_REPAIRED
    assert adjustment.stage == "validator"
    assert adjustment.message == reason


def test_repair_of_a_collection_keeps_its_lines() -> None:
    """A mixed collection is repaired as a whole: its polygon fixed, its line kept."""
    result = validate(geo.batch_of([geo.bowtie_in_collection]), REPAIR)
    (out,) = geo.decoded(result.batch)
    assert shapely.is_valid(out)
    assert_geometries_equal(
        out,
        shapely.from_wkt(
            "GEOMETRYCOLLECTION (MULTIPOLYGON (((0 0, 1 1, 0 2, 0 0)), ((1 1, 2 2, 2 0, 1 1))),"
            " LINESTRING (5 5, 6 6))"
        ),
        normalize=True,
    )


def test_a_repair_that_leaves_nothing_is_rejected() -> None:
    """A zero-area polygon repairs to empty: rejected as invalid topology at GEOS's location."""
    result = validate(geo.batch_of([geo.collapsed, geo.polygon]), REPAIR)
    assert [f.index for f in result.batch.features] == [1]
    rejection = geo.by_index(result.rejections)[0]
    assert rejection.reason == R.REJECT_REASON_INVALID_TOPOLOGY
    assert "Self-intersection[1 1]" in rejection.message
    assert list(rejection.location.coordinate) == [1.0, 1.0]


def test_repair_off_rejects_every_invalid_geometry() -> None:
    """With repair=reject each invalid feature is rejected with GEOS's reason and location."""
    batch = geo.batch_of([*geo.INVALID, geo.polygon_cw])
    result = validate(batch, REJECT)
    assert [f.index for f in result.batch.features] == [len(geo.INVALID)]
    rejections = geo.by_index(result.rejections)
    assert sorted(rejections) == list(range(len(geo.INVALID)))
    assert rejections[2].reason == R.REJECT_REASON_INVALID_TOPOLOGY
    assert "Ring Self-intersection[2 0]" in rejections[2].message
    assert list(rejections[2].location.coordinate) == [2.0, 0.0]
    assert list(rejections[3].location.coordinate) == [10.0, 10.0]
    # The valid feature is still oriented.
    assert _rings_follow_right_hand_rule(geo.decoded(result.batch))


def test_out_of_range_names_the_first_offending_coordinate() -> None:
    """Longitude beyond ±180 or latitude beyond ±90 rejects with that coordinate (Z too)."""
    west = shapely.from_wkt("LINESTRING (-170 0, -179 1, -181 2, -185 3)")
    pole = shapely.from_wkt("POINT Z (100 95 3)")
    batch = geo.batch_of([west, geo.point, pole])
    result = validate(batch, REPAIR)
    assert [f.index for f in result.batch.features] == [1]
    rejections = geo.by_index(result.rejections)
    assert rejections[0].reason == R.REJECT_REASON_OUT_OF_RANGE
    assert list(rejections[0].location.coordinate) == [-181.0, 2.0]
    assert "-181.0" in rejections[0].message
    assert rejections[2].reason == R.REJECT_REASON_OUT_OF_RANGE
    assert list(rejections[2].location.coordinate) == [100.0, 95.0, 3.0]


@pytest.mark.parametrize(
    ("crs", "policy"),
    [("EPSG:3857", REPAIR), ("OGC:CRS84", ValidationPolicy(check_wgs84_range=False))],
)
def test_range_is_checked_only_for_wgs84_when_enabled(crs: str, policy: ValidationPolicy) -> None:
    """Projected batches, or a policy with the check off, keep large coordinates."""
    result = validate(geo.batch_of([geo.beyond_antimeridian, geo.beyond_pole_z], crs=crs), policy)
    assert result.rejections is None
    assert len(result.batch.features) == 2


def test_polygonal_parts_drops_lower_dimensions() -> None:
    """Only polygons survive, nested collections flattened; nothing polygonal gives empty."""
    mixed = shapely.from_wkt(
        "GEOMETRYCOLLECTION (LINESTRING (0 0, 1 1), POLYGON ((0 0, 1 0, 1 1, 0 0)),"
        " GEOMETRYCOLLECTION (MULTIPOLYGON (((5 5, 6 5, 6 6, 5 5))), POINT (9 9)))"
    )
    single = shapely.from_wkt("GEOMETRYCOLLECTION (POINT (1 1), POLYGON ((0 0, 1 0, 1 1, 0 0)))")
    lines = shapely.from_wkt("GEOMETRYCOLLECTION (LINESTRING (0 0, 1 1))")
    out = polygonal_parts(np.array([mixed, single, lines], dtype=object))
    assert_geometries_equal(
        out[0],
        shapely.from_wkt("MULTIPOLYGON (((0 0, 1 0, 1 1, 0 0)), ((5 5, 6 5, 6 6, 5 5)))"),
        normalize=True,
    )
    assert_geometries_equal(out[1], shapely.from_wkt("POLYGON ((0 0, 1 0, 1 1, 0 0))"))
    assert out[2].is_empty
    assert shapely.get_type_id(out[2]) == 3


def test_policy_from_settings() -> None:
    """GEOBUS_REPAIR chooses between repairing and rejecting."""
    assert ValidationPolicy.from_settings(Settings(repair="reject")).repair == "reject"
    assert ValidationPolicy.from_settings(Settings()) == ValidationPolicy()


@pytest.mark.slow
def test_countries_land_10km() -> None:
    """All 220 countries come out valid and CCW; the 83 invalid ones are repaired, none lost."""
    batches = geo.dataset_batches("countries-land-10km")
    stored = rejected = repaired = 0
    out_geometries: list[shapely.Geometry] = []
    for batch in batches:
        before = geo.decoded(batch)
        result = validate(batch, REPAIR)
        rejected += 0 if result.rejections is None else len(result.rejections.rejections)
        stored += len(result.batch.features)
        repaired += sum(len(f.adjustments) for f in result.batch.features)
        after = geo.decoded(result.batch)
        out_geometries.extend(after)
        # Valid features keep their shape exactly (only ring order may change).
        kept = {f.index: g for f, g in zip(result.batch.features, after, strict=True)}
        for feature, geometry in zip(batch.features, before, strict=True):
            if shapely.is_valid(geometry):
                assert_geometries_equal(kept[feature.index], geometry, normalize=True)
    assert (stored, rejected, repaired) == (220, 0, 83)
    assert shapely.is_valid(out_geometries).all()
    assert set(shapely.get_type_id(out_geometries).tolist()) <= {3, 6}
    assert _rings_follow_right_hand_rule(out_geometries)
