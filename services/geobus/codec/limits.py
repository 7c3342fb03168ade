"""What one document and one feature may hold, checked on raw JSON slices.

An ingress faces documents written by anybody. These limits keep a hostile
(or broken) one from costing memory or time out of proportion: the scanner
skips a feature larger than ``max_feature_bytes`` without holding it, the
converter stops after ``max_features``, and the checks here reject, before
any geometry is parsed, a feature whose geometry has too many positions or
nests too deeply, whose properties are too large, or whose properties or id
hold an over-long string or an absurd number (``1e999999``, a
10^6-digit integer) that the store or a consumer would choke on.

The checks work on the raw text slices :mod:`geobus.codec.features` already
cut, with a few C-level passes each (``bytes.count``, ``bytes.translate``,
one regular expression); the common feature takes only the counting fast
paths. Nothing is decoded into Python objects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from geobus.problems import Problem, R

if TYPE_CHECKING:
    from geobus.settings import Settings

# A number literal longer than this, or with an exponent beyond it, is refused
# whatever its value: PostgreSQL's numeric refuses exponents beyond ±1000 and
# nobody writes a double with more than a few dozen digits.
NUMBER_CHARS = 400
NUMBER_EXPONENT = 400
_DOUBLE_MAX = 1.7976931348623157e308

_ESCAPE = re.compile(rb"\\.", re.DOTALL)
# translate() keeps only the bytes that shape the structure, braces as brackets.
_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'[]{}"')))
_AS_BRACKETS = bytes.maketrans(b"{}", b"[]")
# Levels of a MultiPolygon: the geometry object, coordinates, polygon, ring, position.
_SHALLOWEST = 5
_QUOTED = re.compile(rb'"[^"]*"')
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"', re.DOTALL)


@dataclass(frozen=True, slots=True)
class DocumentLimits:
    """The ``GEOBUS_MAX_*`` limits on one document and its features."""

    max_features: int = 1_000_000
    max_feature_bytes: int = 64 * 1024 * 1024
    max_vertices: int = 1_000_000
    max_depth: int = 64
    max_properties_bytes: int = 1024 * 1024
    max_string_bytes: int = 256 * 1024
    max_number_magnitude: float = _DOUBLE_MAX

    @classmethod
    def from_settings(cls, settings: Settings) -> DocumentLimits:
        """The limits configured by the ``GEOBUS_MAX_*`` settings."""
        return cls(
            max_features=settings.max_features,
            max_feature_bytes=settings.max_feature_bytes,
            max_vertices=settings.max_vertices_per_feature,
            max_depth=settings.max_nesting_depth,
            max_properties_bytes=settings.max_properties_bytes,
            max_string_bytes=settings.max_string_bytes,
            max_number_magnitude=settings.max_number_magnitude,
        )

    def suspect_numbers(self) -> tuple[bytes, re.Pattern[bytes]]:
        """A run of number characters that may break the magnitude bound (anything
        shorter without an exponent is below it), and a pattern for such numbers."""
        rule = _SUSPECTS.get(self.max_number_magnitude)
        if rule is None:
            width = min(len(f"{self.max_number_magnitude:.0f}"), 64)
            pattern = re.compile(
                rb"-?(?:[0-9.]{%d,}(?:[eE][+-]?[0-9]+)?|[0-9.]+[eE][+-]?[0-9]+)" % width
            )
            rule = _SUSPECTS[self.max_number_magnitude] = (b"0" * width, pattern)
        return rule


_SUSPECTS: dict[float, tuple[bytes, re.Pattern[bytes]]] = {}
_NUMBER_SHAPE = bytes(
    ord("0")
    if chr(c) in "0123456789."
    else ord("e")
    if chr(c) in "eE"
    else ord("-")
    if chr(c) in "+-"
    else ord(" ")
    for c in range(256)
)


DEFAULT_LIMITS = DocumentLimits()


@dataclass(frozen=True, slots=True)
class _Screen:
    """Bounds, computed once per :class:`DocumentLimits`, under which a whole
    feature text passes every check of this module (and the UTF-8 check)."""

    limits: DocumentLimits
    max_bytes: int  # -1: the screen vouches for nothing under these limits
    max_brackets: int
    run: bytes


# A larger feature (a polygon, mostly) would fail the bracket bound anyway, and
# the exact checks cost it little next to its size: it skips the screen.
_SCREEN_BYTES = 8 * 1024
# One C pass for the screen: digits and '.' as '0', e/E as 'e', '[' and '{'
# as '[', the rest as ' ', and signs deleted (so "1e-5" reads "0e0"; runs of
# digits only ever get longer, which only sends more texts to the exact checks).
_SCREEN_SHAPE = bytes(
    ord("0")
    if chr(c) in "0123456789."
    else ord("e")
    if chr(c) in "eE"
    else ord("[")
    if chr(c) in "[{"
    else ord(" ")
    for c in range(256)
)
# re finds this literal faster than ``in`` does (its '0' is so frequent).
_EXPONENT = re.compile(rb"0e0")


def _screen_for(limits: DocumentLimits) -> _Screen:
    global _last_screen
    run, _ = limits.suspect_numbers()
    usable = (
        # At most max_depth - 1 openers means at most that many positions.
        limits.max_depth - 1 <= limits.max_vertices
        # A number shorter than the run and without exponent is at most the
        # bound only for a bound that is a number >= 0 (not NaN, not negative).
        and limits.max_number_magnitude >= 0
    )
    screen = _Screen(
        limits=limits,
        max_bytes=(
            min(
                _SCREEN_BYTES,
                limits.max_properties_bytes,
                limits.max_string_bytes + 2,
                3 * limits.max_vertices,
            )
            if usable
            else -1
        ),
        max_brackets=limits.max_depth - 1,
        run=run,
    )
    _last_screen = screen
    return screen


_last_screen: _Screen | None = None


def within_limits(text: bytes, limits: DocumentLimits) -> bool:
    """Whether a valid JSON feature (or geometry) text certainly passes every check
    here and is ASCII; False only means "run the exact checks".

    Every member is a slice of ``text``, so a bound that holds for the whole
    text holds for each member: no more bytes than the smallest size limit
    (properties, a string, 3 bytes a position); no more brackets and braces
    than the properties may nest (so no member nests deeper, and a geometry
    has no more positions); and no run of number characters or exponent
    that :func:`out_of_range_number` or :func:`check_id` would look at (a
    number without exponent shorter than the run is below the bound). Four
    C passes, and no Python work per member, for the common small feature.
    """
    screen = _last_screen
    if screen is None or screen.limits is not limits:
        screen = _screen_for(limits)
    if len(text) > screen.max_bytes or not text.isascii():
        return False
    shape = text.translate(_SCREEN_SHAPE, b"+-")
    return (
        shape.count(b"[") <= screen.max_brackets
        and _EXPONENT.search(shape) is None
        and screen.run not in shape
    )


def skeleton(text: bytes) -> bytes:
    """The brackets and braces of a JSON text outside strings, in order, braces
    written as brackets (``{"a":[1,2]}`` → ``[[]]``)."""
    if b"\\" in text:
        # Escapes go first, so that an escaped quote cannot end a string.
        text = _ESCAPE.sub(b"", text)
    shape = text.translate(None, _NOT_STRUCTURE)
    if b'"' in shape:
        shape = _QUOTED.sub(b"", shape)
    return shape.translate(_AS_BRACKETS)


def deeper_than(shape: bytes, allowed: int) -> bool:
    """Whether a :func:`skeleton` nests more than ``allowed`` levels (``[[]]``: 2).

    Each ``replace`` (one C pass) removes every innermost pair, so it lowers
    the nesting by exactly one; after the first the text is tiny for real
    GeoJSON (its positions are gone).
    """
    for _ in range(allowed):
        if not shape:
            return False
        shape = shape.replace(b"[]", b"")
    return bool(shape)


def check_geometry(text: bytes, limits: DocumentLimits, pointer: str, level: int) -> Problem | None:
    """Depth and position count of a raw geometry text nested ``level`` levels deep."""
    allowed = limits.max_depth - level
    # Fast path, no pass over the coordinates: a position (or an empty array)
    # takes at least three bytes, and a geometry GEOS reads nests five levels
    # (MultiPolygon) plus two per GeometryCollection. Deeper arrays or
    # foreign members GEOS refuses or drops; msgspec has already stopped at
    # about a thousand levels.
    if (
        len(text) <= 3 * limits.max_vertices
        and _SHALLOWEST + 2 * text.count(b"GeometryCollection") <= allowed
    ):
        return None
    shape = skeleton(text)
    if deeper_than(shape, allowed):
        return Problem(
            R.REJECT_REASON_NESTED_TOO_DEEPLY,
            f"the geometry nests arrays or objects more than {limits.max_depth} levels deep"
            " in the feature (GEOBUS_MAX_NESTING_DEPTH)",
            pointer,
        )
    # Every position is an innermost array, "[…]" → "[]"; an empty array or
    # object counts too, which only ever overstates.
    vertices = shape.count(b"[]")
    if vertices > limits.max_vertices:
        return Problem(
            R.REJECT_REASON_TOO_MANY_VERTICES,
            f"the geometry has {vertices} positions, more than {limits.max_vertices}"
            " (GEOBUS_MAX_VERTICES_PER_FEATURE)",
            pointer,
        )
    return None


def check_properties(text: bytes, limits: DocumentLimits) -> Problem | None:
    """Size, depth, strings and numbers of a raw ``properties`` object."""
    if len(text) > limits.max_properties_bytes:
        return Problem(
            R.REJECT_REASON_PROPERTIES_TOO_LARGE,
            f'"properties" is {len(text)} bytes of JSON, more than {limits.max_properties_bytes}'
            " (GEOBUS_MAX_PROPERTIES_BYTES)",
            "/properties",
        )
    allowed = limits.max_depth - 1
    if text.count(b"[") + text.count(b"{") > allowed and deeper_than(skeleton(text), allowed):
        return Problem(
            R.REJECT_REASON_NESTED_TOO_DEEPLY,
            f'"properties" nests arrays or objects more than {limits.max_depth} levels deep'
            " in the feature (GEOBUS_MAX_NESTING_DEPTH)",
            "/properties",
        )
    if len(text) - 2 > limits.max_string_bytes:
        longest = longest_string(text)
        if longest > limits.max_string_bytes:
            return _string_too_long(longest, limits, "/properties")
    bad = out_of_range_number(text, limits)
    if bad is not None:
        return _number_out_of_range(bad, limits, "/properties")
    return None


def check_id(raw: bytes, limits: DocumentLimits) -> Problem | None:
    """Length of a string id, range of a number id (raw JSON text)."""
    if raw.startswith(b'"'):
        if len(raw) - 2 > limits.max_string_bytes:
            return _string_too_long(len(raw) - 2, limits, "/id")
        return None
    if raw[:1] in b"-0123456789":
        reason = number_problem(raw, limits.max_number_magnitude)
        if reason is not None:
            return _number_out_of_range((raw, reason), limits, "/id")
    return None


def longest_string(text: bytes) -> int:
    """Bytes of JSON text between the quotes of the longest string in ``text``."""
    if b"\\" in text:
        # Same length, and no escaped quote left to pair wrongly.
        text = _ESCAPE.sub(b"__", text)
    quotes = np.flatnonzero(np.frombuffer(text, dtype=np.uint8) == ord('"'))
    pairs = len(quotes) // 2
    if not pairs:
        return 0
    return int((quotes[1 : 2 * pairs : 2] - quotes[0 : 2 * pairs : 2]).max()) - 1


def out_of_range_number(text: bytes, limits: DocumentLimits) -> tuple[bytes, str] | None:
    """The first number of a JSON text beyond the limits, with why; None if all are fine."""
    run, suspects = limits.suspect_numbers()
    # One C pass maps digits and '.' to '0', e/E to 'e', signs to '-' and the
    # rest to ' '; substring searches then find every long number run and
    # every exponent (strings included: a hit there only costs the slow path).
    shape = text.translate(_NUMBER_SHAPE)
    if b"0e0" not in shape and b"0e-0" not in shape and run not in shape:
        return None
    if b'"' in text:
        text = _STRING.sub(b'""', text)
    for match in suspects.finditer(text):
        literal = match.group()
        reason = number_problem(literal, limits.max_number_magnitude)
        if reason is not None:
            return literal, reason
    return None


def number_problem(literal: bytes, bound: float) -> str | None:
    """Why a JSON number literal is refused (None: it is fine)."""
    if len(literal) > NUMBER_CHARS:
        return f"it is written with {len(literal)} characters, more than {NUMBER_CHARS}"
    _, _, exponent = literal.lower().partition(b"e")
    try:
        if exponent and abs(int(exponent)) > NUMBER_EXPONENT:
            return f"its exponent is beyond ±{NUMBER_EXPONENT}"
        value = abs(float(literal))
    except ValueError:
        return None  # not a number after all; the JSON parser judges it
    if not value <= bound:
        return f"its absolute value is more than {bound:g} (GEOBUS_MAX_NUMBER_MAGNITUDE)"
    return None


def _string_too_long(length: int, limits: DocumentLimits, pointer: str) -> Problem:
    return Problem(
        R.REJECT_REASON_STRING_TOO_LONG,
        f"a string is {length} bytes long, more than {limits.max_string_bytes}"
        " (GEOBUS_MAX_STRING_BYTES)",
        pointer,
    )


def _number_out_of_range(bad: tuple[bytes, str], limits: DocumentLimits, pointer: str) -> Problem:
    literal, reason = bad
    shown = literal[:40].decode("ascii", "replace") + ("…" if len(literal) > 40 else "")
    return Problem(
        R.REJECT_REASON_NUMBER_OUT_OF_RANGE, f"the number {shown} is refused: {reason}", pointer
    )
