"""Fuzzing the codec: whatever the bytes, conversion ends in batches, rejections or a DocumentError.

Hypothesis generates GeoJSON-shaped documents, mutates their bytes (flips,
cuts, splices of hostile tokens) and also feeds raw bytes; the examples are
bounded so that the file runs in seconds. The longer atheris run is
``bench/fuzz_codec.py``.
"""

from __future__ import annotations

import io
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geobus.codec.batches import BatchContext, BatchLimits
from geobus.codec.convert import DocumentConverter
from geobus.codec.limits import DocumentLimits
from geobus.codec.scanner import Framing, Scanner
from geobus.errors import DocumentError

LIMITS = DocumentLimits(
    max_features=50,
    max_feature_bytes=2048,
    max_vertices=40,
    max_depth=12,
    max_properties_bytes=512,
    max_string_bytes=64,
    max_number_magnitude=1e12,
)
FRAMINGS: list[Framing] = ["json", "seq", "ndjson"]
HOSTILE = [
    b"[",
    b"]",
    b"{",
    b"}",
    b'"',
    b"\\",
    b",",
    b":",
    b"\x00",
    b"\xff",
    b"\xef\xbb\xbf",
    b"\x1e",
    b"\n",
    b"NaN",
    b"-Infinity",
    b"1e999999",
    b"9" * 80,
    b'"\\ud800"',
    b"null",
    b"[" * 40,
    b'{"type":"GeometryCollection","geometries":[',
    b'"features":',
]

_number = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False),
)
_position = st.lists(_number, min_size=0, max_size=5)
_coordinates = st.recursive(_position, lambda inner: st.lists(inner, max_size=6), max_leaves=40)
_json_value = st.recursive(
    st.none() | st.booleans() | _number | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_kind = st.sampled_from(
    ["Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon", "Blob"]
)
_geometry = st.one_of(
    st.none(),
    st.builds(lambda k, c: {"type": k, "coordinates": c}, _kind, _coordinates),
    st.builds(
        lambda gs: {"type": "GeometryCollection", "geometries": gs},
        st.lists(
            st.builds(lambda k, c: {"type": k, "coordinates": c}, _kind, _coordinates), max_size=3
        ),
    ),
)
_feature = st.builds(
    lambda g, p, i: {"type": "Feature", "geometry": g, "properties": p, **i},
    _geometry,
    st.one_of(st.none(), st.dictionaries(st.text(max_size=10), _json_value, max_size=5)),
    st.one_of(st.just({}), st.builds(lambda v: {"id": v}, _json_value)),
)


def _document(features: list[dict[str, Any]], framing: Framing) -> bytes:
    if framing == "json":
        return json.dumps({"type": "FeatureCollection", "features": features}).encode()
    sep = "\x1e" if framing == "seq" else ""
    return "".join(sep + json.dumps(f) + "\n" for f in features).encode()


@st.composite
def _mutated(draw: st.DrawFn) -> tuple[bytes, Framing]:
    framing = draw(st.sampled_from(FRAMINGS))
    data = bytearray(_document(draw(st.lists(_feature, max_size=6)), framing))
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "cut", "splice", "drop"]))
        if action == "flip":
            data[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[at:]
        elif action == "splice":
            data[at:at] = draw(st.sampled_from(HOSTILE)) * draw(st.integers(1, 3))
        else:
            del data[at : at + draw(st.integers(1, 20))]
    return bytes(data), framing


def _convert(data: bytes, framing: Framing) -> None:
    """Run a whole conversion; only a DocumentError may leave it."""
    converter = DocumentConverter(
        io.BytesIO(data),
        BatchContext(job_id="fuzz"),
        BatchLimits(max_features=3, max_bytes=600),
        framing,
        LIMITS,
    )
    kept = rejected = 0
    seen: list[int] = []
    try:
        for out in converter:
            if out.batch is not None:
                kept += len(out.batch.features)
                seen += [f.index for f in out.batch.features]
            if out.rejections is not None:
                rejected += len(out.rejections.rejections)
                seen += [r.feature_index for r in out.rejections.rejections]
    except DocumentError as exc:
        failure = exc.code
    else:
        failure = ""
    if failure:
        assert failure.startswith("document_")
        return
    # Every feature read is either in a batch or rejected, exactly once.
    assert kept + rejected == converter.totals.features
    assert sorted(seen) == list(range(converter.totals.features))
    assert converter.totals.features <= LIMITS.max_features


@st.composite
def _hostile_strings(draw: st.DrawFn) -> bytes:
    junk = st.binary(max_size=12)
    return (
        b'{"type":"Feature","id":"'
        + draw(junk)
        + b'","properties":{"'
        + draw(junk)
        + b'":"'
        + draw(junk)
        + b'"},"geometry":{"type":"'
        + draw(st.sampled_from([b"Point", b"Poi\xffnt", b""]))
        + draw(junk)
        + b'","coordinates":[1,2]}}'
    )


def _scan(data: bytes, framing: Framing, chunk: int) -> list[tuple[bytes, int]] | str:
    try:
        return [(i.text, i.skipped) for i in Scanner(io.BytesIO(data), framing, chunk, 2048)]
    except DocumentError as exc:
        return exc.code


FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


@FUZZ
@given(_mutated())
def test_mutated_documents_never_crash_the_converter(case: tuple[bytes, Framing]) -> None:
    """Mutated GeoJSON converts to batches and rejections, or fails with a DocumentError."""
    _convert(*case)


@FUZZ
@given(st.binary(max_size=400), st.sampled_from(FRAMINGS))
def test_random_bytes_never_crash_the_converter(data: bytes, framing: Framing) -> None:
    """Arbitrary bytes convert or fail with a DocumentError, never anything else."""
    _convert(data, framing)


@FUZZ
@given(_mutated(), st.integers(1, 64))
def test_read_chunk_size_never_changes_what_is_scanned(
    case: tuple[bytes, Framing], chunk: int
) -> None:
    """Reading the document in tiny chunks slices the same features (or fails the same way)."""
    data, framing = case
    assert _scan(data, framing, chunk) == _scan(data, framing, 1 << 20)


@FUZZ
@given(st.lists(_hostile_strings(), min_size=1, max_size=4), st.sampled_from(FRAMINGS))
def test_any_bytes_inside_strings_never_crash_the_converter(
    features: list[bytes], framing: Framing
) -> None:
    """Arbitrary bytes (invalid UTF-8, escapes, quotes) inside id, keys, values and types."""
    if framing == "json":
        data = b'{"type":"FeatureCollection","features":[' + b",".join(features) + b"]}"
    else:
        sep = b"\x1e" if framing == "seq" else b""
        data = b"".join(sep + f + b"\n" for f in features)
    _convert(data, framing)


FOUND = [
    # atheris, bench/fuzz_codec.py: invalid UTF-8 in the top-level "type".
    b'{"features":[],"type":"Fe\xc9\xc9atureCollection"}',
    # atheris: a top-level "type" that is an array (unhashable in the type lookup).
    b'{"type":[{"type":"Feature","geometry":null}]}',
    # invalid UTF-8 in a legacy "crs" name.
    b'{"type":"FeatureCollection","crs":{"type":"name","properties":{"name":"\xff"}},"features":[]}',
    # invalid UTF-8 in a feature's "id" and "type" (found while writing the hostile suite).
    b'{"type":"FeatureCollection","features":[{"type":"Feature","id":"\xff","geometry":null}]}',
    b'{"type":"FeatureCollection","features":[{"type":"\xff","geometry":null}]}',
]


def test_inputs_fuzzing_found_fail_cleanly() -> None:
    """Each input a fuzzer once crashed the codec with now converts or fails with DocumentError."""
    for data in FOUND:
        for framing in FRAMINGS:
            _convert(data, framing)
