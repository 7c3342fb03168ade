"""The reprojector's pure transform: one PROJ call per batch, Z kept, domain failures rejected."""

from __future__ import annotations

import geometries as geo
import numpy as np
import pytest
import shapely
from pyproj import Transformer
from shapely.testing import assert_geometries_equal

from geobus.errors import ConfigurationError, MessageError
from geobus.reprojector.transform import Reprojector
from geobus.v1 import rejection_pb2
from geobus.validator.transform import ValidationPolicy, validate

MERCATOR = "EPSG:3857"


def _independent(geometry: shapely.Geometry, target: str) -> shapely.Geometry:
    """The geometry transformed by a fresh pyproj Transformer, coordinate array by array."""
    reference = Transformer.from_crs("OGC:CRS84", target, always_xy=True)
    return shapely.transform(
        geometry,
        lambda xyz: np.column_stack(reference.transform(*xyz.T)),
        include_z=bool(shapely.has_z(geometry)),
    )


def test_catalogue_to_web_mercator_matches_pyproj() -> None:
    """Every valid catalogue geometry lands where pyproj puts it (1e-6 m); 2-D stays 2-D, Z kept."""
    catalogue = list(geo.VALID)
    batch = geo.batch_of(catalogue)
    result = Reprojector(MERCATOR)(batch)
    assert result.rejections is None
    assert result.batch.crs == MERCATOR
    out = geo.decoded(result.batch)
    assert len(out) == len(catalogue)
    for source, projected in zip(catalogue, out, strict=True):
        assert shapely.has_z(projected) == shapely.has_z(source)
        assert_geometries_equal(projected, _independent(source, MERCATOR), tolerance=1e-6)
    z_in = shapely.get_coordinates(geo.polygon_z_cw, include_z=True)[:, 2]
    z_out = shapely.get_coordinates(out[catalogue.index(geo.polygon_z_cw)], include_z=True)[:, 2]
    assert z_out.tolist() == z_in.tolist()


def test_identity_and_adjustments_pass_through() -> None:
    """Order, ids, properties, adjustments and the envelope survive; only crs changes."""
    validated = validate(geo.batch_of([geo.bowtie, None, geo.point]), ValidationPolicy()).batch
    out = Reprojector(MERCATOR)(validated).batch
    assert [f.index for f in out.features] == [0, 1, 2]
    assert [f.id.string_id for f in out.features] == ["f0", "f1", "f2"]
    assert [f.properties for f in out.features] == [f.properties for f in validated.features]
    assert out.features[0].adjustments == validated.features[0].adjustments
    assert out.features[1].geometry == b""
    assert (out.job_id, out.sequence, out.collection, out.source) == (
        validated.job_id,
        validated.sequence,
        validated.collection,
        validated.source,
    )


def test_empty_geometries_stay_empty() -> None:
    """Empty geometries have no coordinates to transform and pass as empty."""
    out = geo.decoded(Reprojector(MERCATOR)(geo.batch_of(geo.EMPTY)).batch)
    assert all(g is not None and g.is_empty for g in out)
    assert [g.geom_type for g in out if g is not None] == ["Point", "Polygon", "GeometryCollection"]


def test_same_crs_passes_bytes_through() -> None:
    """OGC:CRS84 → EPSG:4326 with x/y order kept is no transform: bytes unchanged, crs renamed."""
    reprojector = Reprojector("EPSG:4326")
    assert reprojector.transformer("OGC:CRS84") is None
    batch = geo.batch_of([geo.polygon_cw, geo.point_z, None])
    result = reprojector(batch)
    assert result.batch.crs == "EPSG:4326"
    assert [f.geometry for f in result.batch.features] == [f.geometry for f in batch.features]


def test_transformers_are_cached_per_source_crs() -> None:
    """A second batch in the same CRS reuses the Transformer."""
    reprojector = Reprojector(MERCATOR)
    first = reprojector.transformer("OGC:CRS84")
    assert first is not None
    assert reprojector.transformer("OGC:CRS84") is first
    assert reprojector.transformer("EPSG:4326") is not first


def test_web_mercator_beyond_its_area_of_use_is_rejected() -> None:
    """PROJ gives latitude 89.9 a huge finite y; geobus rejects points beyond ±85.06° instead."""
    points = [shapely.Point(0, 89.9), shapely.Point(0, 90), shapely.Point(0, 85.06)]
    result = Reprojector(MERCATOR)(geo.batch_of(points))
    assert [f.index for f in result.batch.features] == [2]
    rejections = geo.by_index(result.rejections)
    assert {r.reason for r in rejections.values()} == {rejection_pb2.REJECT_REASON_OUTSIDE_DOMAIN}
    assert "85.06" in rejections[0].message
    (edge,) = geo.decoded(result.batch)
    assert edge.y == pytest.approx(20_037_508, rel=1e-3)


def test_points_proj_cannot_transform_are_rejected() -> None:
    """A feature with a coordinate PROJ cannot transform is rejected, naming that coordinate."""
    inside = shapely.Point(4321000, 3210000)
    beyond = shapely.LineString([(4321000, 3210000), (1e8, 1e8), (1e8, 2e8)])
    beyond_z = shapely.Point(1e8, 1e8, 7)
    batch = geo.batch_of([inside, beyond, geo.point_z, beyond_z], crs="EPSG:3035")
    result = Reprojector("EPSG:4326")(batch)
    assert [f.index for f in result.batch.features] == [0, 2]
    rejections = geo.by_index(result.rejections)
    assert rejections[1].reason == rejection_pb2.REJECT_REASON_PROJECTION_FAILED
    assert rejections[1].stage == "reprojector"
    assert rejections[1].feature_id.string_id == "f1"
    assert list(rejections[1].location.coordinate) == [1e8, 1e8]
    assert list(rejections[3].location.coordinate) == [1e8, 1e8, 7.0]
    assert np.isfinite(shapely.get_coordinates(geo.decoded(result.batch))).all()


def test_unknown_crs_are_errors() -> None:
    """A bad target CRS is a configuration error; a bad or missing batch CRS a message error."""
    with pytest.raises(ConfigurationError):
        Reprojector("EPSG:999999")
    reprojector = Reprojector(MERCATOR)
    with pytest.raises(MessageError):
        reprojector(geo.batch_of([geo.point], crs="EPSG:999999"))
    with pytest.raises(MessageError):
        reprojector(geo.batch_of([geo.point], crs=""))


def test_invalid_input_is_repaired_in_the_target_crs() -> None:
    """A geometry that is invalid after transformation is repaired there, and says so."""
    result = Reprojector(MERCATOR)(geo.batch_of(list(geo.INVALID)))
    out = geo.decoded(result.batch)
    assert all(shapely.is_valid(out))
    for feature in result.batch.features:
        assert [a.stage for a in feature.adjustments] == ["reprojector"]


@pytest.mark.slow
def test_countries_land_10km_to_web_mercator() -> None:
    """After validation all 220 countries reproject valid and finite; unrepaired ones match
    pyproj within 1e-6 m, and the few the projection made invalid are repaired there."""
    reprojector = Reprojector(MERCATOR)
    reference = Transformer.from_crs("OGC:CRS84", MERCATOR, always_xy=True)
    total = 0
    repaired_here = 0
    for batch in geo.dataset_batches("countries-land-10km"):
        validated = validate(batch, ValidationPolicy())
        result = reprojector(validated.batch)
        assert result.rejections is None
        total += len(result.batch.features)
        sources = geo.decoded(validated.batch)
        outputs = geo.decoded(result.batch)
        assert all(shapely.is_valid(outputs))
        for feature, source, projected in zip(result.batch.features, sources, outputs, strict=True):
            if any(a.stage == "reprojector" for a in feature.adjustments):
                repaired_here += 1
                continue
            src = shapely.get_coordinates(source)
            out = shapely.get_coordinates(projected)
            assert src.shape == out.shape
            assert np.isfinite(out).all()
            x, y = reference.transform(src[:, 0], src[:, 1])
            np.testing.assert_allclose(out[:, 0], x, rtol=0, atol=1e-6)
            np.testing.assert_allclose(out[:, 1], y, rtol=0, atol=1e-6)
    assert total == 220
    # Measured: six polygons, valid in degrees, self-intersect in Web Mercator.
    assert 0 < repaired_here <= 10
