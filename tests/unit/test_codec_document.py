"""Whole-document reading: framings, top-level errors, batching, identity."""

from __future__ import annotations

import gzip
import io
import json

import pytest

from geobus.codec.batches import BatchContext, BatchLimits
from geobus.codec.convert import DocumentConverter, framing_for_path
from geobus.codec.geojson import feature_texts
from geobus.codec.scanner import Framing
from geobus.errors import DocumentError
from geobus.v1 import feature_pb2

POINT = (
    '{{"type":"Feature","id":{id},"properties":{{"n":{n}}},'
    '"geometry":{{"type":"Point","coordinates":[{n},{n}]}}}}'
)


def _points(n: int) -> list[str]:
    return [POINT.format(id=json.dumps(f"p{i}"), n=i) for i in range(n)]


def _run(
    doc: bytes,
    framing: Framing = "json",
    limits: BatchLimits | None = None,
    chunk: int | None = None,
) -> tuple[list[feature_pb2.FeatureBatch], DocumentConverter]:
    converter = DocumentConverter(io.BytesIO(doc), BatchContext(job_id="j"), limits, framing)
    if chunk is not None:
        import geobus.codec.scanner as scanner

        scanner.CHUNK_BYTES = chunk
    batches = [o.batch for o in converter if o.batch is not None]
    return batches, converter


def test_feature_collection_streams_in_order() -> None:
    """Features come out in document order with their ids and indices."""
    doc = ('{"type":"FeatureCollection","features":[' + ",".join(_points(5)) + "]}").encode()
    batches, conv = _run(doc)
    features = [f for b in batches for f in b.features]
    assert [f.index for f in features] == [0, 1, 2, 3, 4]
    assert [f.id.string_id for f in features] == ["p0", "p1", "p2", "p3", "p4"]
    assert conv.totals.features == 5
    assert conv.totals.rejected == 0


def test_members_after_features_and_whitespace() -> None:
    """The "type" member may follow "features"; whitespace anywhere is fine."""
    doc = (
        '\ufeff {\n "features" : [\n' + ",\n".join(_points(3)) + '\n ] ,\n "type" : '
        '"FeatureCollection", "bbox": [0,0,2,2]}\n'
    ).encode()
    batches, _ = _run(doc)
    assert sum(len(b.features) for b in batches) == 3


def test_small_read_chunks_give_the_same_result() -> None:
    """Reading 7 bytes at a time splits tokens everywhere and changes nothing."""
    doc = ('{"type":"FeatureCollection","features":[' + ",".join(_points(50)) + "]}").encode()
    from geobus.codec.scanner import Scanner

    whole = [i.text for i in Scanner(io.BytesIO(doc))]
    small = [i.text for i in Scanner(io.BytesIO(doc), chunk=7)]
    assert whole == small
    assert len(whole) == 50


def test_batches_are_cut_by_count_and_bytes() -> None:
    """max_features and max_bytes both cut batches."""
    doc = ('{"type":"FeatureCollection","features":[' + ",".join(_points(25)) + "]}").encode()
    by_count, _ = _run(doc, limits=BatchLimits(max_features=10))
    assert [len(b.features) for b in by_count] == [10, 10, 5]
    by_bytes, _ = _run(doc, limits=BatchLimits(max_bytes=200))
    assert len(by_bytes) > 3
    assert [b.sequence for b in by_bytes] == list(range(len(by_bytes)))


@pytest.mark.parametrize(
    ("framing", "doc"),
    [
        ("seq", ("".join("\x1e" + p + "\n" for p in _points(4))).encode()),
        ("ndjson", ("\n".join(_points(4)) + "\n\n").encode()),
        ("ndjson", ("\n".join(_points(4))).encode()),
    ],
)
def test_sequences(framing: Framing, doc: bytes) -> None:
    """RFC 8142 sequences and NDJSON give one feature per record."""
    batches, conv = _run(doc, framing)
    assert [f.index for b in batches for f in b.features] == [0, 1, 2, 3]
    assert conv.totals.features == 4


def test_single_feature_and_bare_geometry() -> None:
    """A lone Feature or a bare Geometry is a document of one feature."""
    batches, _ = _run(_points(1)[0].encode())
    assert len(batches[0].features) == 1
    batches, _ = _run(b'{"type":"LineString","coordinates":[[0,0],[1,1]]}')
    assert batches[0].features[0].properties == b""


@pytest.mark.parametrize(
    ("doc", "code"),
    [
        (b"", "document_empty"),
        (b"hello", "document_not_object"),
        (b"[" * 1000, "document_not_object"),
        (b'{"type":"FeatureCollection","features":[', "document_truncated"),
        (b'{"type":"FeatureCollection","features":[{"type":"Feature"', "document_truncated"),
        (b'{"type":"FeatureCollection","features":[] } extra', "document_trailing_data"),
        (b'{"type":"Topology","features":[]}', "document_not_geojson"),
        (b'{"type":"FeatureCollection"}', "document_not_geojson"),
        (b'{"type":"Banana"}', "document_not_geojson"),
        (b'{"type":"FeatureCollection","features":[{"a":1} {"b":2}]}', "document_malformed"),
        (b'{"type":"FeatureCollection","features":[], "x": tru}', "document_not_json"),
        (
            b'{"type":"Feature","geometry":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            "document_too_deep",
        ),
    ],
)
def test_unusable_documents_are_one_clear_error(doc: bytes, code: str) -> None:
    """A document that is not JSON or not GeoJSON at the top level raises DocumentError."""
    with pytest.raises(DocumentError) as info:
        _run(doc)
    assert info.value.code == code
    assert info.value.message


def test_non_object_elements_are_rejected_not_fatal() -> None:
    """A number or array where a feature belongs is rejected; the others go on."""
    points = _points(2)
    doc = (
        '{"type":"FeatureCollection","features":['
        + points[0]
        + ',42,[1,[2]],"x",'
        + points[1]
        + "]}"
    ).encode()
    batches, conv = _run(doc)
    assert [f.index for b in batches for f in b.features] == [0, 4]
    assert conv.totals.rejected == 3


def test_ids_and_properties_are_kept_exactly() -> None:
    """Ids keep their JSON type; properties keep their exact text (int64 beyond 2^53)."""
    props = (
        b'{"big":9007199254740993,"neg":-9223372036854775808,"f":0.1,'
        b'"nested":{"a":[1,null,"x"]},"e":1E5}'
    )
    ids = [b'"abc"', b"42", b"-7", b"1.5", b"123456789012345678901234567890"]
    features = [
        b'{"type":"Feature","id":'
        + i
        + b',"properties":'
        + props
        + b',"geometry":{"type":"Point","coordinates":[0,0]}}'
        for i in ids
    ]
    doc = b'{"type":"FeatureCollection","features":[' + b",".join(features) + b"]}"
    batches, _ = _run(doc)
    out = [f for b in batches for f in b.features]
    assert [f.properties for f in out] == [props] * 5
    assert out[0].id.string_id == "abc"
    assert out[1].id.integer_id == 42
    assert out[2].id.integer_id == -7
    assert out[3].id.number_id == 1.5
    assert out[4].id.big_integer_id == "123456789012345678901234567890"
    back = [json.loads(t) for t in feature_texts(batches[0])]
    assert back[0]["properties"]["big"] == 9007199254740993
    assert back[4]["id"] == 123456789012345678901234567890


def test_feature_larger_than_a_message_is_rejected() -> None:
    """A single feature over max_message_bytes is rejected with feature_too_large."""
    coords = ",".join(f"[{i}.5,{i}.25]" for i in range(10000))
    big = (
        '{"type":"Feature","properties":{},"geometry":{"type":"LineString","coordinates":['
        + coords
        + "]}}"
    )
    doc = ('{"type":"FeatureCollection","features":[' + big + "," + _points(1)[0] + "]}").encode()
    converter = DocumentConverter(
        io.BytesIO(doc), BatchContext(job_id="j"), BatchLimits(max_message_bytes=64 * 1024 + 1000)
    )
    outs = list(converter)
    reasons = [r.reason for o in outs if o.rejections for r in o.rejections.rejections]
    from geobus.v1 import rejection_pb2

    assert reasons == [rejection_pb2.REJECT_REASON_FEATURE_TOO_LARGE]
    assert converter.totals.features == 2


def test_framing_from_path() -> None:
    """File suffixes and a leading RS choose the framing."""
    assert framing_for_path("a.geojsonl", b"{") == "ndjson"
    assert framing_for_path("a.json", b"\x1e{") == "seq"
    assert framing_for_path("a.geojson", b"{") == "json"


def test_gzip_is_the_callers_business() -> None:
    """The converter reads any binary stream, e.g. a gzip file object."""
    doc = ('{"type":"FeatureCollection","features":[' + ",".join(_points(3)) + "]}").encode()
    stream = gzip.GzipFile(fileobj=io.BytesIO(gzip.compress(doc)))
    converter = DocumentConverter(stream, BatchContext(job_id="j"))  # type: ignore[arg-type]
    assert sum(len(o.batch.features) for o in converter if o.batch) == 3


@pytest.mark.parametrize("chunk", [3, 7, 64, 1 << 20])
def test_strings_with_braces_and_escapes_across_chunks(chunk: int) -> None:
    """Braces and escaped quotes inside strings never end a feature, at any chunk size."""
    from geobus.codec.scanner import Scanner

    feature = (
        b'{"type":"Feature","properties":{"s":"a } { \\\\\\" \\" }'
        + b"x" * 5000
        + b'"},"geometry":null}'
    )
    doc = b'{"type":"FeatureCollection","features":[' + b",".join([feature] * 20) + b"]}"
    assert [i.text for i in Scanner(io.BytesIO(doc), chunk=chunk)] == [feature] * 20


@pytest.mark.parametrize("chunk", [5, 1 << 20])
def test_properties_nested_deeper_than_the_one_match_path(chunk: int) -> None:
    """Features nested deeper than the scanner's one-match pattern are sliced all the same."""
    from geobus.codec.scanner import Scanner

    deep = b'{"a":' * 9 + b'"} {"' + b"}" * 9
    shallow = b'{"type":"Feature","properties":{"k":"}"},"geometry":null}'
    nested = b'{"type":"Feature","properties":' + deep + b',"geometry":null}'
    features = [shallow, nested, shallow, nested]
    doc = b'{"type":"FeatureCollection","features":[' + b",\n".join(features) + b"]}"
    assert [i.text for i in Scanner(io.BytesIO(doc), chunk=chunk)] == features
