"""Read one raw feature text: its id, properties, bbox and raw geometry.

Only the small members are decoded here; the geometry stays raw JSON text
(``msgspec.Raw``) until a whole batch of geometries is parsed at once in C by
:func:`shapely.from_geojson`, and the properties stay raw text all the way to
the store, so no Python float is ever made for a coordinate.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import msgspec

from geobus.codec.limits import (
    DEFAULT_LIMITS,
    DocumentLimits,
    check_geometry,
    check_id,
    within_limits,
)
from geobus.codec.limits import check_properties as check_properties_limits
from geobus.problems import Problem, R
from geobus.v1 import feature_pb2

GEOMETRY_TYPES = frozenset(
    {
        "Point",
        "MultiPoint",
        "LineString",
        "MultiLineString",
        "Polygon",
        "MultiPolygon",
        "GeometryCollection",
    }
)

_INT = re.compile(rb"-?(?:0|[1-9][0-9]*)")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_NULL = b"null"
_FEATURE = b'"Feature"'
# Explaining a malformed feature decodes it into Python objects; beyond this
# size the explanation is not worth that memory.
EXPLAIN_BYTES = 4 * 1024 * 1024


class _Member(msgspec.Struct, forbid_unknown_fields=False):
    """The members of a Feature (or of a bare Geometry) geobus looks at."""

    type: msgspec.Raw = msgspec.Raw(b"")
    id: msgspec.Raw = msgspec.Raw(b"")
    geometry: msgspec.Raw = msgspec.Raw(b"")
    properties: msgspec.Raw = msgspec.Raw(b"")
    bbox: msgspec.Raw = msgspec.Raw(b"")


_decoder = msgspec.json.Decoder(_Member)


@dataclass(slots=True)
class ParsedFeature:
    """A feature whose members are checked, with its geometry still raw JSON.

    ``geometry`` is ``b""`` for a null geometry.
    """

    index: int
    id: feature_pb2.FeatureId | None
    geometry: bytes
    properties: bytes
    bbox: list[float]


def parse_feature(
    index: int, text: bytes, limits: DocumentLimits = DEFAULT_LIMITS
) -> ParsedFeature | Problem:
    """Check one raw feature (or bare geometry) text against RFC 7946 and the
    document ``limits``, and slice its members."""
    try:
        member = _decoder.decode(text)
    except msgspec.ValidationError:
        return Problem(R.REJECT_REASON_INVALID_FEATURE, "a feature must be a JSON object")
    except msgspec.DecodeError as exc:
        return _malformed(text, exc)
    except RecursionError:
        # msgspec stops at about a thousand levels; nothing in GeoJSON nests
        # that deep, and GEOS's own parser would overflow its stack on it.
        return Problem(
            R.REJECT_REASON_NESTED_TOO_DEEPLY,
            "the feature's JSON is nested too deeply (arrays or objects inside each other"
            " about a thousand times)",
        )
    # The common small feature passes one screen over its whole text; only
    # one the screen cannot vouch for takes the exact checks member by member.
    checked = within_limits(text, limits)
    if not checked:
        problem = _not_utf8(member)
        if problem is not None:
            return problem
    raw_type = bytes(member.type)
    # The common spelling skips a JSON decode (same result as _string).
    kind = "Feature" if raw_type == _FEATURE else _string(raw_type)
    if kind == "Feature":
        return _feature(index, member, limits, checked)
    if kind in GEOMETRY_TYPES:
        # A bare geometry (a sequence record or a whole document) is a feature
        # with that geometry and no properties.
        problem = None if checked else check_geometry(text, limits, "", 0)
        if problem is not None:
            return problem
        return ParsedFeature(index=index, id=None, geometry=text, properties=b"", bbox=[])
    if kind is None:
        return Problem(
            R.REJECT_REASON_INVALID_FEATURE,
            'a feature must have "type": "Feature"; the "type" member is missing or not a string',
            "/type",
        )
    return Problem(
        R.REJECT_REASON_INVALID_FEATURE,
        f'a feature must have "type": "Feature", not {kind!r}',
        "/type",
    )


def _raw(value: msgspec.Raw) -> bytes:
    return bytes(value)


def _feature(
    index: int, member: _Member, limits: DocumentLimits, checked: bool
) -> ParsedFeature | Problem:
    geometry = bytes(member.geometry)
    if not geometry:
        return Problem(
            R.REJECT_REASON_INVALID_FEATURE,
            'a feature must have a "geometry" member (null for a feature without location)',
            "/geometry",
        )
    if geometry == _NULL:
        geometry = b""
    elif not geometry.startswith(b"{"):
        return Problem(
            R.REJECT_REASON_INVALID_FEATURE,
            '"geometry" must be a GeoJSON geometry object or null',
            "/geometry",
        )
    properties = bytes(member.properties)
    if properties == _NULL:
        # RFC 7946 requires the member; a missing one is read as null, which
        # is what it means, rather than refusing a whole feature for it.
        properties = b""
    elif properties and not properties.startswith(b"{"):
        return Problem(
            R.REJECT_REASON_INVALID_FEATURE,
            '"properties" must be a JSON object or null',
            "/properties",
        )
    raw_id = bytes(member.id)
    if not checked:
        problem = (
            (check_geometry(geometry, limits, "/geometry", 1) if geometry else None)
            or (check_properties_limits(properties, limits) if properties else None)
            or check_id(raw_id, limits)
        )
        if problem is not None:
            return problem
    feature_id = _feature_id(raw_id)
    if isinstance(feature_id, Problem):
        return feature_id
    bbox = _bbox(_raw(member.bbox))
    if isinstance(bbox, Problem):
        return bbox
    return ParsedFeature(
        index=index, id=feature_id, geometry=geometry, properties=properties, bbox=bbox
    )


def _not_utf8(member: _Member) -> Problem | None:
    """The member geobus decodes or stores that is not UTF-8 (msgspec's Raw does not check)."""
    for raw, pointer in (
        (member.type, "/type"),
        (member.id, "/id"),
        (member.properties, "/properties"),
    ):
        text = _raw(raw)
        if text.isascii():
            continue  # the common case, in one fast C pass
        try:
            text.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Problem(
                R.REJECT_REASON_MALFORMED_JSON,
                f"the text is not UTF-8 (RFC 8259 §8.1): {exc.reason} at byte {exc.start}",
                pointer,
            )
    return None


def _string(raw: bytes) -> str | None:
    if not raw.startswith(b'"'):
        return None
    value: str = msgspec.json.decode(raw, type=str)
    return value


def _feature_id(raw: bytes) -> feature_pb2.FeatureId | Problem | None:
    if not raw or raw == _NULL:
        # "id": null is written by many tools for "no id".
        return None
    if raw.startswith(b'"'):
        return feature_pb2.FeatureId(string_id=msgspec.json.decode(raw, type=str))
    if _INT.fullmatch(raw):
        number = int(raw)
        if _INT64_MIN <= number <= _INT64_MAX:
            return feature_pb2.FeatureId(integer_id=number)
        return feature_pb2.FeatureId(big_integer_id=raw.decode("ascii"))
    if raw[:1] in b"-0123456789":
        value = float(raw)
        if math.isfinite(value):
            return feature_pb2.FeatureId(number_id=value)
    return Problem(
        R.REJECT_REASON_INVALID_ID,
        f'"id" must be a string or a finite number, not {raw[:40].decode("utf-8", "replace")}',
        "/id",
    )


def _bbox(raw: bytes) -> list[float] | Problem:
    if not raw or raw == _NULL:
        return []
    try:
        values = msgspec.json.decode(raw, type=list[float])
    except msgspec.DecodeError:
        values = None
    if values is None or len(values) not in (4, 6) or not all(map(math.isfinite, values)):
        return Problem(
            R.REJECT_REASON_INVALID_BBOX,
            '"bbox" must be an array of 4 or 6 finite numbers',
            "/bbox",
        )
    return values


def _malformed(text: bytes, exc: msgspec.DecodeError) -> Problem:
    # Python's json module accepts NaN and Infinity; when it can read the
    # text, the problem is a non-finite number, which the structure check
    # reports with its exact location.
    from geobus.codec.structure import check_feature_text

    problem = check_feature_text(text) if len(text) <= EXPLAIN_BYTES else None
    if problem is not None:
        return problem
    return Problem(R.REJECT_REASON_MALFORMED_JSON, f"the feature is not valid JSON: {exc}")
