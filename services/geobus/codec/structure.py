"""Explain exactly why a GeoJSON geometry is structurally wrong (RFC 7946 §3.1).

The fast path parses whole batches of geometries in C and only learns *that*
one failed. For those few, this module walks the decoded JSON and names the
first rule broken, with a JSON Pointer to the place and the offending
position. It is deliberately plain Python: it runs on rejected features only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from geobus.codec.features import GEOMETRY_TYPES
from geobus.problems import Problem, R

MAX_NESTING = 32

_DEPTH = {
    "Point": 0,
    "MultiPoint": 1,
    "LineString": 1,
    "MultiLineString": 2,
    "Polygon": 2,
    "MultiPolygon": 3,
}


class _NonFinite(float):
    """A NaN/Infinity literal, kept apart so it can be reported as such."""


def _load(text: bytes) -> Any:
    return json.loads(text, parse_constant=lambda name: _NonFinite(name))


def check_feature_text(text: bytes) -> Problem | None:
    """The first structural problem of a raw feature (or bare geometry) text."""
    try:
        value = _load(text)
    except (ValueError, RecursionError):
        return None
    if isinstance(value, dict) and value.get("type") == "Feature":
        geometry = value.get("geometry")
        return None if geometry is None else check_geometry(geometry, "/geometry")
    return check_geometry(value, "")


def check_geometry_text(text: bytes, pointer: str = "/geometry") -> Problem | None:
    """The first structural problem of a raw geometry text, or None."""
    try:
        value = _load(text)
    except (ValueError, RecursionError) as exc:
        return Problem(
            R.REJECT_REASON_MALFORMED_JSON, f"the geometry is not valid JSON: {exc}", pointer
        )
    return check_geometry(value, pointer)


def check_geometry(value: Any, pointer: str, nesting: int = 0) -> Problem | None:
    """The first structural problem of a decoded geometry object, or None."""
    if not isinstance(value, dict):
        return Problem(
            R.REJECT_REASON_INVALID_GEOMETRY_TYPE, "a geometry must be a JSON object", pointer
        )
    kind = value.get("type")
    if not isinstance(kind, str) or kind not in GEOMETRY_TYPES:
        if "type" not in value:
            found = 'no "type" member'
        elif isinstance(kind, str):
            found = f"unknown type {kind!r}"
        else:
            found = f'a "type" that is {_json_type(kind)}, not a string'
        return Problem(
            R.REJECT_REASON_INVALID_GEOMETRY_TYPE,
            f"the geometry has {found}; expected one of {', '.join(sorted(GEOMETRY_TYPES))}",
            pointer + "/type",
        )
    if kind == "GeometryCollection":
        return _collection(value, pointer, nesting)
    if "coordinates" not in value:
        return Problem(
            R.REJECT_REASON_INVALID_COORDINATES,
            f'a {kind} must have a "coordinates" member',
            pointer + "/coordinates",
        )
    walker = _Walker(kind)
    return walker.walk(value["coordinates"], _DEPTH[kind], pointer + "/coordinates")


def _collection(value: dict[str, Any], pointer: str, nesting: int) -> Problem | None:
    members = value.get("geometries")
    if not isinstance(members, list):
        return Problem(
            R.REJECT_REASON_INVALID_COORDINATES,
            'a GeometryCollection must have a "geometries" array',
            pointer + "/geometries",
        )
    if nesting >= MAX_NESTING:
        return Problem(
            R.REJECT_REASON_INVALID_COORDINATES,
            f"GeometryCollections nested deeper than {MAX_NESTING} levels",
            pointer + "/geometries",
        )
    dims: set[int] = set()
    for i, member in enumerate(members):
        problem = check_geometry(member, f"{pointer}/geometries/{i}", nesting + 1)
        if problem is not None:
            return problem
        dims |= _dimensions(member)
    if len(dims) > 1:
        return Problem(
            R.REJECT_REASON_MIXED_DIMENSIONS,
            "some members of the GeometryCollection are 2-D and others 3-D",
            pointer + "/geometries",
        )
    return None


def _dimensions(value: Any) -> set[int]:
    """Dimensions of the positions of an already checked geometry."""
    if value.get("type") == "GeometryCollection":
        out: set[int] = set()
        for member in value["geometries"]:
            out |= _dimensions(member)
        return out
    stack = [value["coordinates"]]
    while stack:
        item = stack.pop()
        if item and not isinstance(item[0], list):
            return {len(item)}
        stack.extend(item)
    return set()


class _Walker:
    """Checks the nesting, positions, lines and rings of one geometry."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.dimension: int | None = None

    def walk(self, coords: Any, depth: int, pointer: str) -> Problem | None:
        if depth == 0:
            return self.position(coords, pointer)
        if not isinstance(coords, list):
            return Problem(
                R.REJECT_REASON_INVALID_COORDINATES,
                f"expected an array at this depth of a {self.kind}'s coordinates, found "
                f"{_json_type(coords)}",
                pointer,
            )
        for i, item in enumerate(coords):
            problem = self.walk(item, depth - 1, f"{pointer}/{i}")
            if problem is not None:
                return problem
        return self.shape(coords, depth, pointer)

    def shape(self, coords: list[Any], depth: int, pointer: str) -> Problem | None:
        """Rules on a list of positions: line length, ring length, closure."""
        if depth != 1:
            return None
        is_ring = self.kind in ("Polygon", "MultiPolygon")
        if self.kind in ("LineString", "MultiLineString") and len(coords) == 1:
            return Problem(
                R.REJECT_REASON_LINESTRING_TOO_SHORT,
                "a LineString needs at least two positions, it has one",
                pointer,
                _position(coords[0]),
            )
        if is_ring and coords:
            if len(coords) < 4:
                return Problem(
                    R.REJECT_REASON_RING_TOO_SHORT,
                    f"a linear ring needs at least four positions, it has {len(coords)}",
                    pointer,
                    _position(coords[0]),
                )
            if list(coords[0]) != list(coords[-1]):
                return Problem(
                    R.REJECT_REASON_RING_NOT_CLOSED,
                    "a linear ring's first and last positions must be equal; "
                    f"first {coords[0]}, last {coords[-1]}",
                    f"{pointer}/{len(coords) - 1}",
                    _position(coords[-1]),
                )
        return None

    def position(self, pos: Any, pointer: str) -> Problem | None:
        if not isinstance(pos, list):
            return Problem(
                R.REJECT_REASON_INVALID_COORDINATES,
                f"expected a position (an array of numbers) in a {self.kind}, found "
                f"{_json_type(pos)}",
                pointer,
            )
        if self.kind == "Point" and not pos:
            return None  # POINT EMPTY
        if any(isinstance(n, list) for n in pos):
            return Problem(
                R.REJECT_REASON_INVALID_COORDINATES,
                f"the coordinates of a {self.kind} are nested one level too deep here",
                pointer,
            )
        if len(pos) < 2:
            return Problem(
                R.REJECT_REASON_POSITION_TOO_SHORT,
                f"a position needs at least two numbers, it has {len(pos)}",
                pointer,
            )
        if len(pos) > 3:
            return Problem(
                R.REJECT_REASON_POSITION_TOO_LONG,
                f"a position has {len(pos)} numbers; geobus carries x, y and an optional z"
                " (M values are not supported)",
                pointer,
                _position(pos[:3]),
            )
        for i, number in enumerate(pos):
            if isinstance(number, bool) or not isinstance(number, int | float):
                return Problem(
                    R.REJECT_REASON_NON_NUMERIC_COORDINATE,
                    f"a coordinate must be a number, found {_json_type(number)}",
                    f"{pointer}/{i}",
                )
            if isinstance(number, _NonFinite) or not math.isfinite(number):
                return Problem(
                    R.REJECT_REASON_NON_FINITE_COORDINATE,
                    "a coordinate must be a finite number (JSON has no NaN or Infinity, and"
                    " values beyond ±1.8e308 overflow)",
                    f"{pointer}/{i}",
                )
        if self.dimension is None:
            self.dimension = len(pos)
        elif self.dimension != len(pos):
            return Problem(
                R.REJECT_REASON_MIXED_DIMENSIONS,
                f"this position has {len(pos)} numbers but earlier ones have {self.dimension};"
                " all positions of a geometry must be 2-D or all 3-D",
                pointer,
                _position(pos),
            )
        return None


def _position(pos: Any) -> tuple[float, ...]:
    if isinstance(pos, Sequence) and all(
        isinstance(n, int | float) and not isinstance(n, bool) for n in pos
    ):
        return tuple(float(n) for n in pos)
    return ()


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, list):
        return "an array"
    return "an object"
