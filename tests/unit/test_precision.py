"""The per-job ``precision``: from the spool metadata onto every batch, through the validator,
applied by the reprojector in the stored CRS instead of ``GEOBUS_PRECISION``."""

from __future__ import annotations

import asyncio
import io
from dataclasses import replace
from pathlib import Path

import geometries as geo
import numpy as np
import pytest
import shapely
from starlette.requests import Request

from geobus.codec.batches import BatchLimits
from geobus.codec.convert import DocumentConverter
from geobus.errors import MessageError
from geobus.ingress import spool
from geobus.ingress.conversion import context_for, open_body, publish_document
from geobus.ingress.intake import _job_parameters
from geobus.ingress.ports import JobRecord
from geobus.ingress.resources import InvalidParameterError
from geobus.ingress.resume import resume_spooled
from geobus.ingress.spool import SpoolMeta
from geobus.jobs import job_document
from geobus.reprojector.transform import Reprojector
from geobus.v1 import feature_pb2, rejection_pb2
from geobus.validator.transform import ValidationPolicy, validate
from tests.unit.fakes import FakeRunner, FakeStore, RecordingPublisher

W = shapely.from_wkt
# Qatar as countries-land-10km has it (feature 20): valid, but rounding each
# coordinate to one decimal on its own makes the shell cross itself.
QATAR = W(
    "POLYGON ((51.3 24.51, 50.99 24.5, 50.81 24.74, 50.76 25.5, 50.85 25.47, 50.85 25.65,"
    " 50.91 25.51, 50.99 25.98, 51.26 26.16, 51.66 25.9, 51.47 25.51, 51.66 25.02,"
    " 51.37 24.58, 51.22 24.64, 51.3 24.51))"
)


_POINT = b'{"type":"Feature","properties":null,"geometry":{"type":"Point","coordinates":[1,2]}}'
_POINTS = b'{"type":"FeatureCollection","features":[' + b",".join([_POINT] * 5) + b"]}"


def _with_precision(
    geometries: list[shapely.Geometry | None], precision: int | None, crs: str = "OGC:CRS84"
) -> feature_pb2.FeatureBatch:
    batch = geo.batch_of(geometries, crs=crs)
    if precision is not None:
        batch.precision = precision
    return batch


def _decimals_at_most(geometry: shapely.Geometry, digits: int) -> bool:
    coords = shapely.get_coordinates(geometry)
    return bool((np.round(coords, digits) == coords).all())


def _meta(precision: int | None) -> SpoolMeta:
    return SpoolMeta(
        job_id="job-p",
        collection="features",
        media_type="application/geo+json",
        content_encoding="identity",
        source_crs=None,
        callback_url=None,
        created="2026-11-27T00:00:00Z",
        body_bytes=1,
        document_bytes=1,
        precision=precision,
    )


def _parameters(query: str) -> int | None:
    request = Request({"type": "http", "method": "POST", "query_string": query.encode()})
    return asyncio.run(_job_parameters(request)).precision


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", None),
        ("precision=", None),
        ("precision=0", 0),
        ("precision=2", 2),
        ("precision=15", 15),
        ("precision=07", 7),
    ],
)
def test_precision_parameter_is_read_from_the_query(query: str, expected: int | None) -> None:
    """?precision= takes 0-15 digits; absent or empty means the deployment default."""
    assert _parameters(query) == expected


@pytest.mark.parametrize("value", ["16", "-1", "2.5", "two", "1e1", " 2", "100"])
def test_an_unusable_precision_is_refused_by_name(value: str) -> None:
    """Anything but a whole number 0-15 is an invalid-precision problem naming the parameter."""
    with pytest.raises(InvalidParameterError) as refused:
        _parameters(f"precision={value}")
    assert (refused.value.code, refused.value.parameter) == ("invalid-precision", "precision")
    assert "0 to 15" in refused.value.detail


def test_spool_metadata_keeps_the_precision_for_a_resumed_job() -> None:
    """precision survives the spool metadata file; metadata without it reads as None."""
    assert SpoolMeta.from_json(_meta(3).to_json()).precision == 3
    assert SpoolMeta.from_json(_meta(0).to_json()).precision == 0
    old = _meta(None).to_json().replace(b', "precision": null', b"")
    assert b"precision" not in old
    assert SpoolMeta.from_json(old).precision is None


@pytest.mark.parametrize("precision", [None, 0, 7])
def test_every_batch_of_the_job_carries_the_precision(precision: int | None) -> None:
    """The spool's precision is set on every batch (0 included); absent when none was asked."""
    context = context_for(_meta(precision))
    outputs = list(DocumentConverter(io.BytesIO(_POINTS), context, BatchLimits(max_features=2)))
    batches = [o.batch for o in outputs if o.batch is not None]
    assert len(batches) == 3
    for batch in batches:
        assert batch.HasField("precision") == (precision is not None)
        assert batch.precision == (precision or 0)


def test_the_validator_passes_the_precision_on_untouched() -> None:
    """The validator does not snap (that is done in the stored CRS) and keeps batch.precision."""
    batch = _with_precision([geo.polygon, W("POINT (0.123456 1.5)")], 2)
    out = validate(batch, ValidationPolicy()).batch
    assert out.HasField("precision")
    assert out.precision == 2
    assert out.features[1].geometry == batch.features[1].geometry


def test_batch_precision_wins_over_the_deployment_setting() -> None:
    """A batch's precision is applied instead of GEOBUS_PRECISION; without one the setting is."""
    point = W("POINT (0.123456 1.987654)")
    asked = Reprojector("EPSG:4326", precision=5)(_with_precision([point], 1)).batch
    assert shapely.get_coordinates(geo.decoded(asked)[0]).tolist() == [[0.1, 2.0]]
    default = Reprojector("EPSG:4326", precision=5)(_with_precision([point], None)).batch
    assert shapely.get_coordinates(geo.decoded(default)[0]).tolist() == [[0.12346, 1.98765]]
    exact = Reprojector("EPSG:4326")(_with_precision([point], None)).batch
    assert exact.features[0].geometry == geo.batch_of([point]).features[0].geometry


def test_zero_digits_is_a_request_not_an_absence() -> None:
    """precision=0 on the batch snaps to whole units over the deployment's 6 digits."""
    sliver = W("POLYGON ((0 0, 0.2 0, 0.2 0.2, 0 0.2, 0 0))")
    batch = _with_precision([W("POINT (2.4 -3.6)"), sliver], 0)
    result = Reprojector("EPSG:4326", precision=6)(batch)
    assert [f.index for f in result.batch.features] == [0]
    assert shapely.get_coordinates(geo.decoded(result.batch)[0]).tolist() == [[2.0, -4.0]]
    assert result.rejections is not None
    (rejection,) = result.rejections.rejections
    assert rejection.reason == rejection_pb2.REJECT_REASON_INVALID_TOPOLOGY
    assert "snapping to 0 decimal digits (the job's precision parameter)" in rejection.message


def test_snapping_a_real_polygon_that_rounding_breaks_keeps_it_valid() -> None:
    """Qatar rounded coordinate by coordinate self-intersects; snapped by geobus it stays valid."""
    rounded = shapely.set_precision(QATAR, 0.1, mode="pointwise")
    assert not shapely.is_valid(rounded), shapely.is_valid_reason(rounded)
    validated = validate(_with_precision([QATAR], 1), ValidationPolicy()).batch
    result = Reprojector("EPSG:4326")(validated)
    assert result.rejections is None
    (snapped,) = geo.decoded(result.batch)
    assert shapely.is_valid(snapped)
    assert _decimals_at_most(snapped, 1)
    # Snapping moves no vertex by more than half a grid cell.
    assert shapely.hausdorff_distance(snapped, QATAR) <= 0.05 * 2**0.5 + 1e-12
    assert shapely.is_ccw(shapely.get_exterior_ring(shapely.get_parts(snapped)[0]))


def test_precision_is_applied_in_the_stored_crs() -> None:
    """Into EPSG:3857, 2 digits means whole centimetres of the projected coordinates."""
    result = Reprojector("EPSG:3857")(_with_precision([QATAR], 2))
    (snapped,) = geo.decoded(result.batch)
    assert shapely.is_valid(snapped)
    assert _decimals_at_most(snapped, 2)
    assert not _decimals_at_most(snapped, 0)


def test_more_digits_than_a_double_holds_is_a_broken_message() -> None:
    """A batch asking for more than 15 digits breaks the contract: the message is poison."""
    with pytest.raises(MessageError, match="16 digits"):
        Reprojector("EPSG:4326")(_with_precision([geo.point], 16))


@pytest.mark.parametrize("precision", [None, 0, 4])
def test_the_job_document_shows_the_precision(precision: int | None) -> None:
    """GET /v1/jobs/{id} says which precision the job asked for (null: the deployment's)."""
    document = job_document(JobRecord(job_id="j", precision=precision))
    assert "precision" in document
    assert document["precision"] == precision


async def test_a_resumed_job_still_carries_its_precision(tmp_path: Path) -> None:
    """After a crash the job is read back from the spool and its batches keep the precision."""
    store, runner = FakeStore(), FakeRunner()
    meta = replace(_meta(3), body_bytes=len(_POINTS), document_bytes=len(_POINTS))
    store.create_job(JobRecord(job_id=meta.job_id, status="running"))
    spool.body_path(tmp_path, meta.job_id).write_bytes(_POINTS)
    spool.write_meta(tmp_path, meta)

    await resume_spooled(tmp_path, store, runner)

    (resumed,) = runner.submitted
    assert resumed.precision == 3
    publisher = RecordingPublisher()
    with open_body(spool.body_path(tmp_path, meta.job_id), resumed.content_encoding) as stream:
        await publish_document(stream, resumed, BatchLimits(max_features=2), publisher, "t")
    batches = [
        feature_pb2.FeatureBatch.FromString(s.payload)
        for s in publisher.sent
        if s.key == "feature.ingested"
    ]
    assert len(batches) == 3
    assert all(b.HasField("precision") and b.precision == 3 for b in batches)
