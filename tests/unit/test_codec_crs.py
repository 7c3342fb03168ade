"""The legacy top-level ``crs`` member: honoured as the source CRS, with a warning."""

from __future__ import annotations

import io
import json

import pytest

from geobus.codec.batches import BatchContext
from geobus.codec.convert import DocumentConverter
from geobus.codec.crs import legacy_crs
from geobus.errors import DocumentError

POINT = '{"type":"Feature","properties":null,"geometry":{"type":"Point","coordinates":[1e6,2e6]}}'


def _convert(doc: str, crs: str = "OGC:CRS84") -> tuple[list[str], list[str]]:
    converter = DocumentConverter(io.BytesIO(doc.encode()), BatchContext(job_id="j", crs=crs))
    batches = [o.batch.crs for o in converter if o.batch is not None]
    return batches, converter.warnings


def _member(name: str) -> str:
    return json.dumps({"type": "name", "properties": {"name": name}})


@pytest.mark.parametrize(
    ("member", "expected"),
    [
        (_member("urn:ogc:def:crs:EPSG::3857"), "EPSG:3857"),
        (_member("EPSG:27700"), "EPSG:27700"),
        (_member("urn:ogc:def:crs:OGC:1.3:CRS84"), "OGC:CRS84"),
        (_member("urn:ogc:def:crs:EPSG::4326"), "OGC:CRS84"),
        ('{"type":"EPSG","properties":{"code":2154}}', "EPSG:2154"),
    ],
)
def test_crs_member_forms_name_the_source_crs(member: str, expected: str) -> None:
    """Both 2008 forms are read; WGS 84 in either axis order is OGC:CRS84 (x first)."""
    assert legacy_crs(member.encode()) == expected


@pytest.mark.parametrize(
    "member",
    [
        '{"type":"link","properties":{"href":"http://example.com/crs"}}',
        _member("urn:ogc:def:crs:EPSG::999999"),
        '"EPSG:3857"',
    ],
)
def test_unusable_crs_members_fail_the_document(member: str) -> None:
    """Links are not fetched; unknown names and malformed members are document errors."""
    with pytest.raises(DocumentError) as caught:
        legacy_crs(member.encode())
    assert caught.value.code == "document_crs_unusable"


def test_crs_before_features_sets_the_batch_crs_with_a_warning() -> None:
    """Batches carry the document's CRS; the job gets a warning that says so."""
    crs = _member("urn:ogc:def:crs:EPSG::3857")
    doc = f'{{"type":"FeatureCollection","crs":{crs},"features":[{POINT}]}}'
    batches, warnings = _convert(doc)
    assert batches == ["EPSG:3857"]
    assert len(warnings) == 1
    assert "RFC 7946" in warnings[0]
    assert "EPSG:3857" in warnings[0]


def test_crs_of_a_single_feature_document_is_honoured() -> None:
    """A bare Feature document with a crs member is read in that CRS."""
    feature = json.loads(POINT)
    feature["crs"] = {"type": "EPSG", "properties": {"code": 3857}}
    batches, warnings = _convert(json.dumps(feature))
    assert batches == ["EPSG:3857"]
    assert warnings


def test_crs_after_the_features_fails_the_job() -> None:
    """A crs member after features already read as CRS84 cannot be honoured: the job fails."""
    crs = _member("EPSG:3857")
    doc = f'{{"type":"FeatureCollection","features":[{POINT}],"crs":{crs}}}'
    with pytest.raises(DocumentError) as caught:
        _convert(doc)
    assert caught.value.code == "document_crs_too_late"


def test_a_crs_named_by_the_request_wins_with_a_warning() -> None:
    """When the request named a CRS, the document's member is ignored and the job says so."""
    crs = _member("EPSG:3857")
    doc = f'{{"type":"FeatureCollection","crs":{crs},"features":[{POINT}]}}'
    batches, warnings = _convert(doc, crs="EPSG:2154")
    assert batches == ["EPSG:2154"]
    assert "ignored" in warnings[0]


def test_documents_without_crs_have_no_warning() -> None:
    """Plain RFC 7946 input stays OGC:CRS84 without warnings; "crs": null is no member."""
    doc = f'{{"type":"FeatureCollection","crs":null,"features":[{POINT}]}}'
    assert _convert(doc) == (["OGC:CRS84"], [])
