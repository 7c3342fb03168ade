"""The whole-feature screen of geobus.codec.limits never vouches for a feature
that an exact per-member check would refuse."""

from __future__ import annotations

import itertools
import random
from typing import Any

import msgspec
import pytest

from geobus.codec import features
from geobus.codec.limits import (
    DEFAULT_LIMITS,
    DocumentLimits,
    check_geometry,
    check_id,
    check_properties,
    within_limits,
)

POINT = (
    b'{"type":"Feature","id":7,"properties":{"mag":2.5,"place":"4km W"},'
    b'"geometry":{"type":"Point","coordinates":[-118.6,34.5]}}'
)
VALUES = [
    b"9",
    b"10",
    b"99.4",
    b"-99.5",
    b"100",
    b"1e2",
    b"1E+2",
    b"2.5e-3",
    b"9" * 63,
    b"9" * 64,
    b"9" * 65,
    b'"x"',
    b'"' + b"y" * 40 + b'"',
    b"[1,[2,[3]]]",
    b'{"a":{"b":{"c":1}}}',
    b'"\xc3\xa9"',
    b'"a\\"b"',
    b"null",
]
IDS = [b"", b'"id":5,', b'"id":1e3,', b'"id":' + b"9" * 70 + b",", b'"id":"abcdefghij",']
GEOMETRIES = [
    b"null",
    b'{"type":"Point","coordinates":[1.5,-2.25]}',
    b'{"type":"LineString","coordinates":[[1,2],[3,4],[5,6]]}',
    b'{"type":"GeometryCollection","geometries":[{"type":"Point","coordinates":[1,2]}]}',
]
_VARIANTS: dict[str, list[Any]] = {
    "max_number_magnitude": [
        -1.0,
        0.0,
        9.4,
        9.6,
        99.5,
        100.0,
        1e70,
        float("inf"),
        float("nan"),
    ],
    "max_depth": [1, 3, 5, 6, 7],
    "max_vertices": [0, 1, 2, 4],
    "max_string_bytes": [0, 5, 30],
    "max_properties_bytes": [2, 20, 60],
}
LIMITS = [
    DEFAULT_LIMITS,
    *(DocumentLimits(**{name: value}) for name, values in _VARIANTS.items() for value in values),
]


def _exact(text: bytes, limits: DocumentLimits) -> bool:
    """Whether every exact check (and the UTF-8 check) passes, as parse_feature runs them."""
    member = msgspec.json.decode(text, type=features._Member)
    if features._not_utf8(member) is not None:
        return False
    geometry = bytes(member.geometry)
    properties = bytes(member.properties)
    return (
        (geometry == b"null" or check_geometry(geometry, limits, "/geometry", 1) is None)
        and check_properties(properties, limits) is None
        and check_id(bytes(member.id), limits) is None
    )


def test_screen_passes_a_small_point_under_the_default_limits() -> None:
    """A typical small point feature takes the screen, not the exact checks."""
    assert within_limits(POINT, DEFAULT_LIMITS)


@pytest.mark.parametrize("limits", LIMITS, ids=repr)
def test_screen_implies_every_exact_check_passes(limits: DocumentLimits) -> None:
    """Whenever the screen passes a feature, each exact per-member check passes it too."""
    rng = random.Random(repr(limits))
    passed = 0
    for fid, geometry in itertools.product(IDS, GEOMETRIES):
        for _ in range(25):
            members = (b'"k%d":%s' % (i, rng.choice(VALUES)) for i in range(rng.randint(0, 4)))
            properties = b"{" + b",".join(members) + b"}"
            text = b'{"type":"Feature",' + fid + b'"properties":' + properties
            text += b',"geometry":' + geometry + b"}"
            if within_limits(text, limits):
                passed += 1
                assert _exact(text, limits), text
    if limits == DEFAULT_LIMITS:
        assert passed > 0
