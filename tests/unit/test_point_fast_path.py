"""Point data skips GEOS, and unchanged batches skip encoding: same results as the general path.

The validator and the reprojector read batches of plain points straight from
their WKB (geobus.geometries.point_coordinates); a batch that does not
qualify takes the general path. Either way the output must be byte for byte
what the general path gives, which these tests get by switching the fast
path off.
"""

from __future__ import annotations

import functools
from unittest import mock

import numpy as np
import pytest
import shapely

from geobus import geometries as g
from geobus.reprojector.transform import Reprojector
from geobus.stage import StageResult
from geobus.stagerunner import StageRunner, deserialize, serialized
from geobus.v1 import feature_pb2
from geobus.validator.transform import ValidationPolicy, validate

POLICY = ValidationPolicy()


def _batch(coords: np.ndarray, crs: str = "OGC:CRS84") -> feature_pb2.FeatureBatch:
    """Points as the codec writes them; every third one with a bbox, every fifth with an id."""
    batch = feature_pb2.FeatureBatch(
        job_id="j",
        sequence=3,
        crs=crs,
        geometry_encoding=feature_pb2.GEOMETRY_ENCODING_ISO_WKB,
        collection="c",
    )
    for i, wkb in enumerate(g.encode(shapely.points(coords))):
        feature = batch.features.add(index=i, geometry=bytes(wkb), properties=b'{"a":1}')
        if i % 3 == 0:
            feature.bbox.extend(range(2 * coords.shape[1]))
        if i % 5 == 0:
            feature.id.string_id = f"f{i}"
    return batch


def _coords(dimensions: int, n: int = 60) -> np.ndarray:
    rng = np.random.default_rng(dimensions)
    columns = [rng.uniform(-180, 180, n), rng.uniform(-85, 85, n)]
    if dimensions == 3:
        columns.append(rng.uniform(-10, 10, n))
    return np.column_stack(columns)


def _cases() -> list[tuple[str, feature_pb2.FeatureBatch]]:
    cases = []
    for d in (2, 3):
        c = _coords(d)
        cases.append((f"in range {d}d", _batch(c)))
        cases.append((f"EPSG:4326 {d}d", _batch(c, "EPSG:4326")))
        for name, row, value in (
            ("beyond Web Mercator", 7, (10, 89.5)),
            ("longitude 200", 3, (200, 10)),
            ("swapped", 4, (10, 120)),
            ("outside WGS 84", 5, (-190, 10)),
            ("on the edges", 6, (-180, -85.06)),
        ):
            edited = c.copy()
            edited[row, :2] = value
            cases.append((f"{name} {d}d", _batch(edited)))
        with_null = _batch(c)
        with_null.features[1].geometry = b""
        cases.append((f"a null geometry {d}d", with_null))
        projected = np.column_stack([c[:, 0] * 1e5, c[:, 1] * 1e5, *c[:, 2:].T])
        cases.append((f"projected source {d}d", _batch(projected, "EPSG:3857")))
    mixed = _batch(_coords(2))
    mixed.features[2].geometry = bytes(g.encode(shapely.points([[1.0, 2.0, 3.0]]))[0])
    cases.append(("2-D and 3-D mixed", mixed))
    big_endian = _batch(_coords(2))
    big_endian.features[0].geometry = shapely.to_wkb(shapely.Point(1, 2), byte_order=0)
    cases.append(("big-endian WKB", big_endian))
    return cases


def _general(transform: functools.partial[StageResult]) -> StageResult:
    with mock.patch.object(g, "point_coordinates", return_value=None):
        return transform()


def _bytes(result: StageResult) -> tuple[bytes, bytes | None]:
    rejections = result.rejections
    return (
        result.batch.SerializeToString(deterministic=True),
        rejections.SerializeToString(deterministic=True) if rejections is not None else None,
    )


@pytest.mark.parametrize(("name", "batch"), _cases(), ids=[name for name, _ in _cases()])
@pytest.mark.parametrize("target", ["EPSG:3857", "EPSG:4326", "EPSG:32631"])
def test_point_batches_come_out_as_the_general_path_makes_them(
    name: str, batch: feature_pb2.FeatureBatch, target: str
) -> None:
    """Validated, then reprojected: the same bytes with the fast path on and off."""
    validated = validate(batch, POLICY)
    assert _bytes(validated) == _bytes(_general(functools.partial(validate, batch, POLICY)))
    reprojector = Reprojector(target)
    fast = reprojector(validated.batch)
    general = _general(functools.partial(reprojector, validated.batch))
    assert _bytes(fast) == _bytes(general)


def test_point_coordinates_reads_what_encode_writes() -> None:
    """Both dimensions round-trip through point_coordinates and point_wkbs."""
    for d in (2, 3):
        points = shapely.points(_coords(d))
        wkbs = [bytes(w) for w in g.encode(points)]
        coords = g.point_coordinates(wkbs)
        assert coords is not None
        assert np.array_equal(coords, shapely.get_coordinates(points, include_z=d == 3))
        assert g.point_wkbs(coords) == wkbs
    empty = bytes(g.encode(shapely.from_wkt(["POINT EMPTY"]))[0])
    line = bytes(g.encode(shapely.from_wkt(["LINESTRING (0 0, 1 1)"]))[0])
    assert g.point_coordinates([empty]) is None
    assert g.point_coordinates([line]) is None
    assert g.point_coordinates([]) is None


def test_a_batch_with_nothing_to_fix_is_not_copied_nor_sent_back() -> None:
    """The validator returns its input; the worker then sends no batch bytes, the stage
    reuses the request's."""
    batch = _batch(_coords(3))
    assert validate(batch, POLICY).batch is batch
    handle = serialized(functools.partial(functools.partial, validate, policy=POLICY))
    request = batch.SerializeToString()
    reply = handle(request)
    assert reply == (None, None)
    result = deserialize(reply, batch, request)
    assert result.batch is batch
    assert result.encoded is request


def test_a_changed_batch_comes_back_with_its_bytes() -> None:
    """The reprojector's output is sent back serialized, and kept for publishing."""
    batch = _batch(_coords(2))
    handle = serialized(functools.partial(Reprojector, "EPSG:3857"))
    request = batch.SerializeToString()
    batch_bytes, rejections = handle(request)
    assert batch_bytes is not None
    assert rejections is None
    result = deserialize((batch_bytes, rejections), batch, request)
    assert result.encoded is batch_bytes
    assert result.batch.SerializeToString() == batch_bytes
    assert result.batch.crs == "EPSG:3857"


async def test_the_runner_sends_the_message_body_and_publishes_what_comes_back() -> None:
    """Through worker processes: the body goes out as it came, the result keeps the bytes."""
    runner = StageRunner(
        functools.partial(functools.partial, validate, policy=POLICY),
        stage="validator",
        workers=1,
        time_limit=30.0,
    )
    await runner.start()
    try:
        batch = _batch(_coords(2))
        body = batch.SerializeToString()
        result = await runner(batch, body)
        assert result.batch is batch
        assert result.encoded is body
        assert result.rejections is None
    finally:
        await runner.close()
