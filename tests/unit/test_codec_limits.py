"""Document-level limits: each one rejects or fails with its code, the rest goes on."""

from __future__ import annotations

import io
import time
import tracemalloc
from collections.abc import Iterator

import pytest

from geobus.codec.batches import BatchContext
from geobus.codec.convert import DocumentConverter
from geobus.codec.limits import DocumentLimits, deeper_than, longest_string, skeleton
from geobus.codec.scanner import Framing, Scanner
from geobus.errors import DocumentError
from geobus.problems import reason_name
from geobus.settings import Settings
from geobus.v1 import rejection_pb2

GOOD = b'{"type":"Feature","properties":{"ok":1},"geometry":{"type":"Point","coordinates":[1,2]}}'
SMALL = DocumentLimits(
    max_features=5,
    max_feature_bytes=64 * 1024,
    max_vertices=10,
    max_depth=8,
    max_properties_bytes=1024,
    max_string_bytes=64,
    max_number_magnitude=1e15,
)


def _collection(*features: bytes) -> bytes:
    return b'{"type":"FeatureCollection","features":[' + b",".join(features) + b"]}"


def _feature(properties: bytes = b"{}", geometry: bytes = b"null", fid: bytes = b"") -> bytes:
    head = b'{"type":"Feature",' + (b'"id":' + fid + b"," if fid else b"")
    return head + b'"properties":' + properties + b',"geometry":' + geometry + b"}"


def _convert(
    doc: bytes, limits: DocumentLimits = SMALL, framing: Framing = "json"
) -> tuple[list[int], list[rejection_pb2.Rejection], DocumentConverter]:
    converter = DocumentConverter(
        io.BytesIO(doc), BatchContext(job_id="j"), framing=framing, document=limits
    )
    kept: list[int] = []
    rejected: list[rejection_pb2.Rejection] = []
    for out in converter:
        if out.batch is not None:
            kept += [f.index for f in out.batch.features]
        if out.rejections is not None:
            rejected += list(out.rejections.rejections)
    return kept, rejected, converter


def _line(n: int) -> bytes:
    coords = b",".join(b"[%d,%d]" % (i, i) for i in range(n))
    return b'{"type":"LineString","coordinates":[' + coords + b"]}"


CASES = [
    ("too many vertices", _feature(geometry=_line(11)), "too_many_vertices", "/geometry"),
    (
        "too many empty parts",
        _feature(geometry=b'{"type":"MultiPolygon","coordinates":[' + b"[]," * 40 + b"[]]}"),
        "too_many_vertices",
        "/geometry",
    ),
    (
        "collections nested too deeply",
        _feature(
            geometry=b'{"type":"GeometryCollection","geometries":[' * 4
            + b'{"type":"Point","coordinates":[1,2]}'
            + b"]}" * 4
        ),
        "nested_too_deeply",
        "/geometry",
    ),
    (
        "properties too large",
        _feature(b'{"a":[' + b"1," * 600 + b"1]}"),
        "properties_too_large",
        "/properties",
    ),
    (
        "properties too deep",
        _feature(b'{"a":' + b"[" * 8 + b"]" * 8 + b"}"),
        "nested_too_deeply",
        "/properties",
    ),
    (
        "string value too long",
        _feature(b'{"a":"' + b"x" * 65 + b'"}'),
        "string_too_long",
        "/properties",
    ),
    ("key too long", _feature(b'{"' + b"k" * 65 + b'":1}'), "string_too_long", "/properties"),
    ("string id too long", _feature(fid=b'"' + b"i" * 65 + b'"'), "string_too_long", "/id"),
    ("huge exponent", _feature(b'{"a":1e999999}'), "number_out_of_range", "/properties"),
    ("tiny exponent", _feature(b'{"a":[1,-1E-999999]}'), "number_out_of_range", "/properties"),
    ("over the magnitude", _feature(b'{"a":{"b":-2e15}}'), "number_out_of_range", "/properties"),
    ("long integer", _feature(b'{"a":' + b"9" * 500 + b"}"), "number_out_of_range", "/properties"),
    ("10^4-digit integer id", _feature(fid=b"1" + b"0" * 10_000), "number_out_of_range", "/id"),
    ("1e400 id", _feature(fid=b"1e400"), "number_out_of_range", "/id"),
]


@pytest.mark.parametrize(("name", "feature", "reason", "pointer"), CASES, ids=[c[0] for c in CASES])
def test_a_feature_over_a_limit_is_rejected_alone(
    name: str, feature: bytes, reason: str, pointer: str
) -> None:
    """The feature over the limit is rejected with its reason and place; its neighbours go on."""
    kept, rejected, _ = _convert(_collection(GOOD, feature, GOOD))
    assert kept == [0, 2], name
    assert [r.feature_index for r in rejected] == [1]
    assert reason_name(rejected[0].reason) == reason, rejected[0].message
    assert rejected[0].location.json_pointer == pointer


def test_values_within_the_limits_pass() -> None:
    """Strings, numbers and depth just inside the limits, and look-alikes inside strings, pass."""
    within = _feature(
        b'{"s":"' + b"x" * 64 + b'","n":-1e15,"t":"1e999999 ' + b"9" * 40 + b'","f":1.5e-300,'
        b'"e":"\\"' + b"q" * 60 + b'","d":' + b"[" * 6 + b"]" * 6 + b"}",
        _line(10),
        b"123456789012345",
    )
    kept, rejected, _ = _convert(_collection(within))
    assert [r.message for r in rejected] == []
    assert kept == [0]


def test_features_beyond_the_document_limit_fail_the_job_after_the_first_ones() -> None:
    """The 6th feature of a 5-feature limit fails the document; the first 5 were emitted."""
    converter = DocumentConverter(
        io.BytesIO(_collection(*[GOOD] * 9)), BatchContext(job_id="j"), document=SMALL
    )
    kept: list[int] = []

    def run() -> None:
        for out in converter:
            assert out.batch is not None
            kept.extend(f.index for f in out.batch.features)

    with pytest.raises(DocumentError) as caught:
        run()
    assert caught.value.code == "document_too_many_features"
    assert kept == [0, 1, 2, 3, 4]
    assert converter.totals.features == 5


@pytest.mark.parametrize("chunk", [7, 4096, 1 << 20])
def test_an_oversize_feature_is_skipped_unread(chunk: int) -> None:
    """A feature above max_feature_bytes is rejected as too large; the scan goes on after it."""
    huge = _feature(b'{"a":"' + b"x" * 100_000 + b'","b":"}{]["}', _line(3))
    items = list(
        Scanner(io.BytesIO(_collection(GOOD, huge, GOOD)), chunk=chunk, max_item_bytes=4096)
    )
    assert [i.text for i in items] == [GOOD, b"", GOOD]
    assert items[1].skipped == len(huge)
    kept, rejected, _ = _convert(_collection(GOOD, huge, GOOD))
    assert kept == [0, 2]
    assert reason_name(rejected[0].reason) == "feature_too_large"


@pytest.mark.parametrize("framing", ["ndjson", "seq"])
def test_an_oversize_record_is_skipped_unread(framing: Framing) -> None:
    """A text-sequence record above max_feature_bytes is rejected; later records still count."""
    sep = b"\n" if framing == "ndjson" else b"\x1e"
    huge = _feature(b'{"a":"' + b"x" * 100_000 + b'"}')
    doc = sep.join([GOOD, huge, GOOD]) + sep
    items = list(Scanner(io.BytesIO(doc), framing, chunk=1000, max_item_bytes=4096))
    assert [(i.index, i.text, i.skipped > 4096) for i in items] == [
        (0, GOOD, False),
        (1, b"", True),
        (2, GOOD, False),
    ]


class _Repeat(io.RawIOBase):
    """A stream of ``head``, then ``body`` repeated to ``size`` bytes, then ``tail``."""

    def __init__(self, head: bytes, body: bytes, size: int, tail: bytes) -> None:
        self._parts: Iterator[bytes] = iter([head, *[body] * (size // len(body)), tail])

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return next(self._parts, b"")


@pytest.mark.parametrize(
    ("head", "body", "tail"),
    [
        (b'{"type":"FeatureCollection","features":[{"a":"', b"x" * 65536, b'"}]}'),
        (b'{"type":"FeatureCollection","features":[{"a":[', b"[1,2]," * 10000, b"[]]}]}"),
        (b'{"type":"FeatureCollection","features":["', b"y" * 65536, b'"]}'),
        (b'{"type":"FeatureCollection","features":[', b" " * 65536, b"]}"),
    ],
    ids=["long string", "long array", "string element", "whitespace"],
)
def test_memory_stays_flat_on_a_huge_element(head: bytes, body: bytes, tail: bytes) -> None:
    """64 MB of one element (or of whitespace) is read with a few MB of memory."""
    tracemalloc.start()
    try:
        list(Scanner(_Repeat(head, body, 64 << 20, tail), max_item_bytes=1 << 20))  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_a_huge_top_level_fails_early() -> None:
    """A bare Feature, or a top-level member, larger than max_feature_bytes fails the document."""
    for doc in (
        _feature(b'{"a":"' + b"x" * 100_000 + b'"}'),
        b'{"type":"FeatureCollection","name":"' + b"n" * 100_000 + b'","features":[]}',
        b'{"type":"FeatureCollection","features":[],"x":[' + b"1," * 50_000 + b"1]}",
    ):
        with pytest.raises(DocumentError) as caught:
            _convert(doc)
        assert caught.value.code == "document_too_large"


def test_a_deep_top_level_fails_as_too_deep() -> None:
    """Foreign members nesting past the depth limit fail the document (document_too_deep)."""
    doc = b'{"type":"FeatureCollection","x":' + b"[" * 20 + b"]" * 20 + b',"features":[]}'
    with pytest.raises(DocumentError) as caught:
        _convert(doc)
    assert caught.value.code == "document_too_deep"


def test_arrays_where_features_belong_are_stepped_over_in_linear_time() -> None:
    """A 10^5-deep array in the features array is one rejection, found fast; the rest goes on."""
    deep = b"[" * 100_000 + b"]" * 100_000
    started = time.monotonic()
    kept, rejected, _ = _convert(_collection(GOOD, deep, b'"s"', b"12", GOOD), DocumentLimits())
    assert time.monotonic() - started < 5
    assert kept == [0, 4]
    assert [r.feature_index for r in rejected] == [1, 2, 3]


def test_skeleton_depth_and_strings() -> None:
    """Strings (escaped quotes included) are not structure; braces count as brackets."""
    shape = skeleton(b'{"a":"[[\\"{","b":[1,{"c":[]}]}')
    assert shape == b"[[[[]]]]"
    assert deeper_than(shape, 3)
    assert not deeper_than(shape, 4)
    assert longest_string(b'{"k":"ab\\"cd","long":"' + b"z" * 30 + b'"}') == 30


def test_limits_come_from_the_settings() -> None:
    """Every GEOBUS_MAX_* variable reaches the document limits."""
    settings = Settings.from_env(
        {
            "GEOBUS_MAX_FEATURES": "7",
            "GEOBUS_MAX_FEATURE_BYTES": "1000",
            "GEOBUS_MAX_VERTICES_PER_FEATURE": "9",
            "GEOBUS_MAX_NESTING_DEPTH": "11",
            "GEOBUS_MAX_PROPERTIES_BYTES": "500",
            "GEOBUS_MAX_STRING_BYTES": "40",
            "GEOBUS_MAX_NUMBER_MAGNITUDE": "1e9",
        }
    )
    assert DocumentLimits.from_settings(settings) == DocumentLimits(7, 1000, 9, 11, 500, 40, 1e9)


@pytest.mark.parametrize(
    ("feature", "reason", "pointer"),
    [
        (_feature(fid=b'"\xff\xfe"'), "malformed_json", "/id"),
        (_feature(b'{"\xc3":1}'), "malformed_json", "/properties"),
        (b'{"type":"Fea\xffture","properties":null,"geometry":null}', "malformed_json", "/type"),
        (
            _feature(geometry=b'{"type":"Point","coordinates":[1' + b"0" * 5000 + b",2]}"),
            "non_finite_coordinate",
            "/geometry",
        ),
    ],
    ids=["id", "properties", "type", "5000-digit coordinate"],
)
def test_bytes_no_decoder_takes_are_rejected_not_raised(
    feature: bytes, reason: str, pointer: str
) -> None:
    """Invalid UTF-8 in a decoded member, or a coordinate no double holds, is a rejection."""
    kept, rejected, _ = _convert(_collection(GOOD, feature), DocumentLimits())
    assert kept == [0]
    assert [(reason_name(r.reason), r.location.json_pointer) for r in rejected] == [
        (reason, pointer)
    ]


def test_a_long_string_at_the_top_level_is_read_in_linear_time() -> None:
    """A 40 MB top-level string (within the limit) is not matched again after every chunk."""
    doc = b'{"type":"FeatureCollection","name":"' + b"n" * (40 << 20) + b'","features":[]}'
    started = time.monotonic()
    kept, rejected, _ = _convert(doc, DocumentLimits())
    assert time.monotonic() - started < 5
    assert (kept, rejected) == ([], [])
