"""Geometry at the edges of the globe and of the spec: one test per documented decision."""

from __future__ import annotations

import io

import geometries as geo
import numpy as np
import pytest
import shapely
from shapely.testing import assert_geometries_equal

from geobus import antimeridian, parts, positions
from geobus.codec.batches import BatchContext
from geobus.codec.convert import DocumentConverter
from geobus.reprojector.transform import Reprojector
from geobus.v1 import feature_pb2, rejection_pb2
from geobus.validator.transform import ValidationPolicy, validate

W = shapely.from_wkt
K = feature_pb2
R = rejection_pb2
FIJI_LIKE = W("POLYGON ((178 -18, -179 -18, -179 -16, 178 -16, 178 -18))")
FIJI_CUT = W(
    "MULTIPOLYGON (((178 -18, 180 -18, 180 -16, 178 -16, 178 -18)),"
    " ((-180 -18, -179 -18, -179 -16, -180 -16, -180 -18)))"
)


def _kinds(feature: feature_pb2.Feature) -> list[int]:
    return [a.kind for a in feature.adjustments]


def _one(
    geometry: shapely.Geometry, policy: ValidationPolicy | None = None
) -> tuple[feature_pb2.FeatureBatch, rejection_pb2.RejectionBatch | None]:
    result = validate(geo.batch_of([geometry]), policy or ValidationPolicy())
    return result.batch, result.rejections


# -- antimeridian -------------------------------------------------------------


def test_crossing_polygon_is_cut_into_a_multipolygon_with_a_crossing_bbox() -> None:
    """A ring jumping over ±180 becomes two parts on ±180, counted, with bbox west > east."""
    batch, rejections = _one(FIJI_LIKE)
    assert rejections is None
    (feature,) = batch.features
    assert _kinds(feature) == [K.ADJUSTMENT_KIND_ANTIMERIDIAN_CUT]
    (cut,) = geo.decoded(batch)
    assert_geometries_equal(shapely.normalize(cut), shapely.normalize(FIJI_CUT))
    assert shapely.is_valid(cut)
    assert list(feature.bbox) == [178.0, -18.0, -179.0, -16.0]


def test_detection_ignores_parts_already_cut_and_polar_cap_edges() -> None:
    """Parts on either side of ±180 and a cap's edge along the pole are not crossings."""
    cap = W("POLYGON ((-180 -90, 180 -90, 180 -80, 0 -70, -180 -80, -180 -90))")
    arr = np.array([FIJI_CUT, cap, FIJI_LIKE, W("LINESTRING (170 0, -170 1)")], dtype=object)
    found = antimeridian.crossing(arr, np.ones(len(arr), dtype=bool))
    assert found.tolist() == [2, 3]


def test_already_cut_geometry_keeps_its_bytes() -> None:
    """A valid, CCW, already cut MultiPolygon passes untouched (no cut counted)."""
    batch, _ = _one(shapely.orient_polygons(FIJI_CUT))
    assert _kinds(batch.features[0]) == []
    assert (
        batch.features[0].geometry
        == geo.batch_of([shapely.orient_polygons(FIJI_CUT)]).features[0].geometry
    )


def test_ring_around_the_pole_is_closed_through_the_pole() -> None:
    """An unclosed ring around the south pole becomes a cap reaching latitude -90."""
    ring = W("POLYGON ((0 -80, -90 -80, 180 -80, 90 -80, 0 -80))")
    batch, rejections = _one(ring)
    assert rejections is None
    (cap,) = geo.decoded(batch)
    assert shapely.bounds(cap).tolist() == [-180.0, -90.0, 180.0, -80.0]
    assert _kinds(batch.features[0]) == [K.ADJUSTMENT_KIND_ANTIMERIDIAN_CUT]
    assert list(batch.features[0].bbox) == [-180.0, -90.0, 180.0, -80.0]


@pytest.mark.parametrize(
    "ring",
    [
        "POLYGON ((0 -80, 90 -80, 180 -80, -90 -80, 0 -80))",
        "POLYGON ((0 -80, -90 -80, 180 -80, 90 -80, 0 -80))",
    ],
)
def test_ring_around_a_pole_closes_through_its_own_hemisphere_whatever_the_winding(
    ring: str,
) -> None:
    """A southern ring around the pole encloses the south pole, wound either way."""
    batch, _ = _one(W(ring))
    (cap,) = geo.decoded(batch)
    assert shapely.bounds(cap).tolist() == [-180.0, -90.0, 180.0, -80.0]


def test_a_cut_that_fails_rejects_that_feature_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the antimeridian package raises on one feature becomes its rejection."""

    def broken(*_args: object, **_kwargs: object) -> None:
        raise AssertionError

    monkeypatch.setitem(antimeridian._FIXERS, parts.POLYGON, broken)
    result = validate(geo.batch_of([FIJI_LIKE, geo.point]), ValidationPolicy())
    assert [f.index for f in result.batch.features] == [1]
    assert result.rejections is not None
    (rejection,) = result.rejections.rejections
    assert rejection.reason == R.REJECT_REASON_ANTIMERIDIAN_CROSSING
    assert "AssertionError" in rejection.message


def test_crossing_polygon_with_holes_the_package_refuses_is_cut_shell_and_holes_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the package refuses a holed polygon, shell and holes are cut apart and subtracted."""
    real = antimeridian._FIXERS[parts.POLYGON]

    def no_holes(polygon: shapely.Geometry, **options: object) -> shapely.Geometry:
        assert not shapely.get_num_interior_rings(polygon)
        return real(polygon, **options)

    monkeypatch.setitem(antimeridian._FIXERS, parts.POLYGON, no_holes)
    holed = W(
        "POLYGON ((170 -10, -170 -10, -170 10, 170 10, 170 -10),"
        " (179 -5, 179 5, -179 5, -179 -5, 179 -5))"
    )
    batch, rejections = _one(holed)
    assert rejections is None
    (cut,) = geo.decoded(batch)
    assert shapely.area(cut) == pytest.approx(20 * 20 - 2 * 10)
    assert shapely.bounds(cut).tolist() == [-180.0, -10.0, 180.0, 10.0]


def test_crossing_line_is_cut_into_a_multilinestring() -> None:
    """A LineString crossing ±180 becomes a MultiLineString meeting at the same latitude."""
    batch, _ = _one(W("LINESTRING (170 0, -170 10)"))
    (cut,) = geo.decoded(batch)
    assert_geometries_equal(
        shapely.normalize(cut),
        shapely.normalize(W("MULTILINESTRING ((170 0, 180 5), (-180 5, -170 10))")),
    )


def test_3d_crossing_keeps_z_of_every_vertex() -> None:
    """Cutting a 3-D ring keeps each vertex's z; the cut's new vertices take a neighbour's z."""
    ring = W("POLYGON Z ((178 -18 1, -179 -18 2, -179 -16 3, 178 -16 4, 178 -18 1))")
    batch, _ = _one(ring)
    (cut,) = geo.decoded(batch)
    assert shapely.has_z(cut)
    coords = shapely.get_coordinates(cut, include_z=True)
    by_xy = {(x, y): z for x, y, z in coords}
    assert (by_xy[(178, -18)], by_xy[(-179, -18)], by_xy[(-179, -16)], by_xy[(178, -16)]) == (
        1,
        2,
        3,
        4,
    )
    assert not np.isnan(coords[:, 2]).any()
    assert len(batch.features[0].bbox) == 6


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("reject", R.REJECT_REASON_ANTIMERIDIAN_CROSSING), ("off", None)],
)
def test_antimeridian_policy_reject_and_off(policy: str, expected: int | None) -> None:
    """GEOBUS_ANTIMERIDIAN=reject refuses a crossing feature; off passes it unchanged."""
    batch, rejections = _one(FIJI_LIKE, ValidationPolicy(antimeridian=policy))  # type: ignore[arg-type]
    if expected is None:
        assert rejections is None
        (kept,) = geo.decoded(batch)
        assert shapely.get_type_id(kept) == parts.POLYGON
    else:
        assert rejections is not None
        assert [r.reason for r in rejections.rejections] == [expected]


def test_projected_batches_are_never_cut() -> None:
    """Only longitude/latitude batches are tested for crossings."""
    batch = geo.batch_of([W("LINESTRING (170 0, -170 10)")], crs="EPSG:3857")
    out = validate(batch, ValidationPolicy())
    assert _kinds(out.batch.features[0]) == []


# -- sloppy positions -----------------------------------------------------------


def test_longitudes_beyond_180_are_normalised_then_cut() -> None:
    """Longitudes in (180, 540] lose 360; a shape that then crosses ±180 is cut."""
    batch, rejections = _one(W("POLYGON ((178 -18, 181 -18, 181 -16, 178 -16, 178 -18))"))
    assert rejections is None
    assert _kinds(batch.features[0]) == [
        K.ADJUSTMENT_KIND_LONGITUDE_NORMALISED,
        K.ADJUSTMENT_KIND_ANTIMERIDIAN_CUT,
    ]
    (cut,) = geo.decoded(batch)
    assert shapely.bounds(cut).tolist() == [-180.0, -18.0, 180.0, -16.0]


def test_a_given_bbox_follows_normalised_longitudes() -> None:
    """A bbox sent with longitudes beyond 180 is rewritten from the normalised geometry."""
    feature = (
        '{"type":"Feature","properties":null,"bbox":[190,10,200,20],'
        '"geometry":{"type":"LineString","coordinates":[[190,10],[200,20]]}}'
    )
    (output,) = DocumentConverter(io.BytesIO(feature.encode()), BatchContext(job_id="j"))
    assert output.batch is not None
    result = validate(output.batch, ValidationPolicy())
    assert list(result.batch.features[0].bbox) == [-170.0, 10.0, -160.0, 20.0]


def test_collection_members_are_cut_one_by_one() -> None:
    """A GeometryCollection with a crossing line keeps its other members and is cut."""
    batch, _ = _one(W("GEOMETRYCOLLECTION (POINT (0 0), LINESTRING (170 0, -170 10))"))
    (cut,) = geo.decoded(batch)
    assert cut.geom_type == "GeometryCollection"
    assert [g.geom_type for g in cut.geoms] == ["Point", "MultiLineString"]
    assert _kinds(batch.features[0]) == [K.ADJUSTMENT_KIND_ANTIMERIDIAN_CUT]


def test_normalisation_keeps_z_and_spares_in_range_geometry() -> None:
    """Only geometries with a longitude in (180, 540] change; Z is carried."""
    arr = np.array([W("POINT Z (370 10 5)"), geo.point, W("POINT (541 0)")], dtype=object)
    changed = positions.normalise_longitudes(arr, np.ones(3, dtype=bool))
    assert changed.tolist() == [0]
    assert shapely.get_coordinates(arr[0], include_z=True).tolist() == [[10.0, 10.0, 5.0]]


def test_swapped_latitude_longitude_is_rejected_naming_the_swap() -> None:
    """Latitudes beyond ±90 that would all fit as longitudes (and vice versa) are a swap."""
    batch, rejections = _one(W("LINESTRING (52.5 13.4, 48.1 120.6)"))
    assert len(batch.features) == 0
    assert rejections is not None
    (rejection,) = rejections.rejections
    assert rejection.reason == R.REJECT_REASON_LATITUDE_LONGITUDE_SWAPPED
    assert "swapped" in rejection.message
    assert list(rejection.location.coordinate) == [48.1, 120.6]


def test_ambiguous_range_errors_are_not_called_a_swap() -> None:
    """A latitude beyond ±90 with a longitude beyond ±90 is plainly out of range."""
    _, rejections = _one(W("POINT (120 95)"))
    assert rejections is not None
    assert rejections.rejections[0].reason == R.REJECT_REASON_OUT_OF_RANGE


def test_duplicate_consecutive_vertices_are_removed_and_counted() -> None:
    """Repeated positions in a ring go; the shape and its validity stay."""
    batch, _ = _one(geo.duplicate_points)
    assert _kinds(batch.features[0]) == [K.ADJUSTMENT_KIND_DUPLICATE_VERTICES_REMOVED]
    (clean,) = geo.decoded(batch)
    assert shapely.get_num_coordinates(clean) == 5
    assert shapely.equals(clean, geo.duplicate_points)


def test_3d_vertical_segments_are_not_duplicates() -> None:
    """Same x, y but another z is a vertical segment, kept; a true 3-D repeat is removed."""
    arr = np.array(
        [W("LINESTRING Z (0 0 1, 0 0 2, 1 1 1)"), W("LINESTRING Z (0 0 1, 0 0 1, 1 1 1)")],
        dtype=object,
    )
    changed = positions.remove_duplicate_vertices(arr, np.ones(2, dtype=bool))
    assert changed.tolist() == [1]
    assert shapely.get_num_coordinates(arr[0]) == 3
    assert shapely.get_num_coordinates(arr[1]) == 2


def test_multipoint_repeats_are_points_not_vertices() -> None:
    """Two identical points of a MultiPoint are kept."""
    arr = np.array([W("MULTIPOINT (1 1, 1 1)")], dtype=object)
    assert positions.remove_duplicate_vertices(arr, np.ones(1, dtype=bool)).tolist() == []


def test_zero_area_shell_is_rejected_and_zero_area_hole_dropped() -> None:
    """A shell with no area leaves nothing after repair; a hole with no area is repaired away."""
    flat = W("POLYGON ((0 0, 1 1, 2 2, 0 0))")
    holed = W("POLYGON ((0 0, 10 0, 10 10, 0 10, 0 0), (2 2, 3 3, 4 4, 2 2))")
    result = validate(geo.batch_of([flat, holed]), ValidationPolicy())
    assert [f.index for f in result.batch.features] == [1]
    assert result.rejections is not None
    assert result.rejections.rejections[0].reason == R.REJECT_REASON_INVALID_TOPOLOGY
    (repaired,) = geo.decoded(result.batch)
    assert len(repaired.interiors) == 0
    assert K.ADJUSTMENT_KIND_REPAIRED in _kinds(result.batch.features[0])


def test_3d_survives_every_validator_step() -> None:
    """A 3-D geometry that is repaired, deduplicated and re-oriented is still 3-D."""
    batch, _ = _one(W("POLYGON Z ((0 0 1, 0 0 1, 0 2 2, 2 2 3, 2 0 4, 0 0 1))"))
    (out,) = geo.decoded(batch)
    assert shapely.has_z(out)
    assert shapely.is_ccw(out.exterior)


# -- collections ----------------------------------------------------------------


def test_collections_are_kept_unless_exploded() -> None:
    """By default a GeometryCollection stays one; exploding makes homogeneous ones Multi*."""
    lines = W("GEOMETRYCOLLECTION (LINESTRING (0 0, 1 1), MULTILINESTRING ((2 2, 3 3)))")
    mixed = W("GEOMETRYCOLLECTION (POINT (0 0), LINESTRING (0 0, 1 1))")
    kept = geo.decoded(validate(geo.batch_of([lines, mixed]), ValidationPolicy()).batch)
    assert [g.geom_type for g in kept] == ["GeometryCollection"] * 2
    result = validate(geo.batch_of([lines, mixed]), ValidationPolicy(explode_collections=True))
    out = geo.decoded(result.batch)
    assert [g.geom_type for g in out] == ["MultiLineString", "GeometryCollection"]
    assert_geometries_equal(out[0], W("MULTILINESTRING ((0 0, 1 1), (2 2, 3 3))"))
    assert _kinds(result.batch.features[0]) == [K.ADJUSTMENT_KIND_COLLECTION_EXPLODED]


# -- projection domains -----------------------------------------------------------


def test_web_mercator_clips_polar_parts_and_counts_them() -> None:
    """A polygon reaching latitude 89 is clipped at 85.06 before projection, with the share."""
    tall = W("POLYGON ((0 80, 10 80, 10 89, 0 89, 0 80))")
    result = Reprojector("EPSG:3857")(geo.batch_of([tall, geo.polygon]))
    assert result.rejections is None
    (feature, untouched) = result.batch.features
    assert _kinds(feature) == [K.ADJUSTMENT_KIND_CLIPPED]
    assert "43.7778%" in feature.adjustments[0].message
    assert _kinds(untouched) == []
    clipped, _ = geo.decoded(result.batch)
    assert shapely.bounds(clipped)[3] == pytest.approx(20_037_508, rel=1e-3)
    assert shapely.is_ccw(clipped.exterior)
    assert np.isfinite(shapely.get_coordinates(clipped)).all()


def test_clip_reject_policy_refuses_what_reaches_beyond() -> None:
    """GEOBUS_CLIP=reject refuses a feature partly outside the area of use."""
    tall = W("POLYGON ((0 80, 10 80, 10 89, 0 89, 0 80))")
    result = Reprojector("EPSG:3857", clip="reject")(geo.batch_of([tall]))
    assert result.rejections is not None
    (rejection,) = result.rejections.rejections
    assert rejection.reason == R.REJECT_REASON_OUTSIDE_DOMAIN
    assert "GEOBUS_CLIP=reject" in rejection.message


def test_utm_zone_clips_to_its_area_of_use_keeping_z() -> None:
    """A line running far from a UTM zone is clipped to the zone's area; Z is interpolated."""
    line = W("LINESTRING Z (0 10 0, 30 10 30)")
    result = Reprojector("EPSG:32633")(geo.batch_of([line]))
    (out,) = geo.decoded(result.batch)
    assert shapely.has_z(out)
    z = shapely.get_coordinates(out, include_z=True)[:, 2]
    assert z.tolist() == pytest.approx([12.0, 18.0])
    assert "80.0000%" in result.batch.features[0].adjustments[0].message


def test_area_of_use_across_the_antimeridian_is_two_boxes() -> None:
    """EPSG:3832 (Pacific) keeps Fiji from both sides of ±180, joined again; drops the Atlantic."""
    atlantic = W("POINT (-30 0)")
    result = Reprojector("EPSG:3832")(geo.batch_of([shapely.orient_polygons(FIJI_CUT), atlantic]))
    assert [f.index for f in result.batch.features] == [0]
    # The halves share their edge on ±180 in this projection: the repair joins them.
    assert _kinds(result.batch.features[0]) == [K.ADJUSTMENT_KIND_REPAIRED]
    (joined,) = geo.decoded(result.batch)
    assert joined.geom_type == "Polygon"
    assert result.rejections is not None
    assert result.rejections.rejections[0].reason == R.REJECT_REASON_OUTSIDE_DOMAIN


# -- precision ----------------------------------------------------------------------


def test_precision_snaps_coordinates_and_keeps_topology_valid() -> None:
    """Snapping to 0 digits keeps polygons valid; a polygon smaller than the grid is rejected."""
    sliver = W("POLYGON ((0 0, 0.2 0, 0.2 0.2, 0 0.2, 0 0))")
    near = W("POLYGON ((0 0, 10.4 0, 10.4 10.4, 5 5.1, 0 10.4, 0 0))")
    result = Reprojector("EPSG:4326", precision=0)(geo.batch_of([near, sliver, None]))
    assert [f.index for f in result.batch.features] == [0, 2]
    snapped, null = geo.decoded(result.batch)
    assert null is None
    assert shapely.is_valid(snapped)
    assert (shapely.get_coordinates(snapped) % 1 == 0).all()
    assert result.rejections is not None
    assert "GEOBUS_PRECISION" in result.rejections.rejections[0].message


def test_precision_off_keeps_every_bit() -> None:
    """Without GEOBUS_PRECISION an unchanged CRS passes bytes through."""
    batch = geo.batch_of([W("POINT (0.123456789012345 1.5)")])
    assert Reprojector("EPSG:4326")(batch).batch.features[0].geometry == batch.features[0].geometry


# -- bbox after reprojection ----------------------------------------------------------


def _with_bboxes(
    members: list[tuple[str, list[float] | None]], crs: str = "OGC:CRS84"
) -> feature_pb2.FeatureBatch:
    """A batch of features given as (GeoJSON geometry text, bbox or None)."""
    features = ",".join(
        f'{{"type":"Feature","properties":null,"geometry":{geometry}'
        + ("}" if bbox is None else f',"bbox":{bbox}}}')
        for geometry, bbox in members
    )
    doc = f'{{"type":"FeatureCollection","features":[{features}]}}'.encode()
    (output,) = DocumentConverter(io.BytesIO(doc), BatchContext(job_id="j", crs=crs))
    assert output.batch is not None
    return output.batch


def test_bbox_is_rewritten_in_the_projected_target_crs() -> None:
    """Into EPSG:3857 a feature's bbox is the bounds of its stored geometry, in metres."""
    line = '{"type":"LineString","coordinates":[[10,20],[11,21]]}'
    line_z = '{"type":"LineString","coordinates":[[10,20,5],[11,21,-3]]}'
    batch = _with_bboxes(
        [(line, [10, 20, 11, 21]), (line_z, [10, 20, -3, 11, 21, 5]), (line, None)]
    )
    out = Reprojector("EPSG:3857")(batch).batch
    stored = geo.decoded(out)
    assert list(out.features[0].bbox) == shapely.bounds(stored[0]).tolist()
    assert out.features[0].bbox[2] == pytest.approx(1224514.3987, abs=1e-3)
    w, s, e, n = shapely.bounds(stored[1]).tolist()
    assert list(out.features[1].bbox) == [w, s, -3.0, e, n, 5.0]
    assert list(out.features[2].bbox) == []


def test_cut_feature_bbox_keeps_the_crossing_form_in_wgs84_and_not_when_projected() -> None:
    """A cut feature's bbox stays west > east into EPSG:4326, snapped or not; into 3857 it spans."""
    validated, _ = _one(FIJI_LIKE)
    assert list(validated.features[0].bbox) == [178.0, -18.0, -179.0, -16.0]
    untouched = Reprojector("EPSG:4326")(validated).batch
    assert list(untouched.features[0].bbox) == [178.0, -18.0, -179.0, -16.0]
    snapped = Reprojector("EPSG:4326", precision=0)(validated).batch
    assert list(snapped.features[0].bbox) == [178.0, -18.0, -179.0, -16.0]
    projected = Reprojector("EPSG:3857")(validated).batch
    (stored,) = geo.decoded(projected)
    west, _, east, _ = projected.features[0].bbox
    assert west < east
    assert list(projected.features[0].bbox) == shapely.bounds(stored).tolist()


def test_bbox_follows_a_projected_source_into_degrees() -> None:
    """A batch in EPSG:3857 reprojected to EPSG:4326 gets its bbox in degrees."""
    line = '{"type":"LineString","coordinates":[[1113194.9079327357,0],[1224514.3987260093,1]]}'
    batch = _with_bboxes([(line, [1113194.9079327357, 0, 1224514.3987260093, 1])], "EPSG:3857")
    out = Reprojector("EPSG:4326")(batch).batch
    assert list(out.features[0].bbox) == pytest.approx([10, 0, 11, 1 / 111319.49], abs=1e-9)


def test_bbox_of_a_feature_without_geometry_has_its_corners_transformed() -> None:
    """A null geometry with a bbox keeps a bbox, transformed into the target CRS."""
    batch = _with_bboxes([("null", [10, 20, 11, 21]), ("null", [10, 20, 7, 11, 21, 9])])
    out = Reprojector("EPSG:3857")(batch).batch
    assert list(out.features[0].bbox) == pytest.approx(
        [1113194.9079, 2273030.9270, 1224514.3987, 2391878.5879], abs=1e-3
    )
    assert list(out.features[1].bbox)[2::3] == [7.0, 9.0]
