"""The legacy top-level ``crs`` member of GeoJSON 2008, read as the source CRS.

RFC 7946 dropped ``crs``: GeoJSON is OGC:CRS84 longitude/latitude. Old
exports (and some current ones) still name their CRS with it, and reading
their metres as degrees would be silently wrong, so geobus honours it and
says so on the job. Two forms existed: ``{"type": "name", "properties":
{"name": "urn:ogc:def:crs:EPSG::3857"}}`` and the older ``{"type": "EPSG",
"properties": {"code": 3857}}``. Linked CRSs (``"type": "link"``) are
refused: geobus does not fetch URLs named by a document.

Positions are read x first (easting or longitude) whatever the CRS's
official axis order: that is what every GeoJSON writer did, including for
``urn:ogc:def:crs:EPSG::4326``.
"""

from __future__ import annotations

from typing import Any

import msgspec
from pyproj import CRS
from pyproj.exceptions import CRSError

from geobus.errors import DocumentError

_CRS84 = CRS.from_user_input("OGC:CRS84")


def legacy_crs(raw: bytes) -> str:
    """The source CRS (``OGC:CRS84`` or ``AUTHORITY:CODE``) a raw ``crs`` member names.

    Raises DocumentError when the member is malformed or names nothing PROJ knows.
    """
    try:
        member: Any = msgspec.json.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise _unusable(f"it is not JSON ({exc})") from None
    if not isinstance(member, dict) or not isinstance(member.get("properties"), dict):
        raise _unusable('it must be an object with "type" and "properties"')
    kind, properties = member.get("type"), member["properties"]
    if kind == "name" and isinstance(properties.get("name"), str):
        name: str = properties["name"]
    elif kind == "EPSG" and isinstance(properties.get("code"), int):
        name = f"EPSG:{properties['code']}"
    else:
        raise _unusable(f'only "name" and "EPSG" crs members are understood, not {kind!r}')
    try:
        crs = CRS.from_user_input(name)
    except CRSError:
        raise _unusable(f"PROJ does not know {name!r}") from None
    if crs.equals(_CRS84, ignore_axis_order=True):
        return "OGC:CRS84"
    authority = crs.to_authority(min_confidence=90)
    if authority is None:
        raise _unusable(f"{name!r} has no authority code PROJ could name")
    return f"{authority[0]}:{authority[1]}"


def _unusable(why: str) -> DocumentError:
    return DocumentError(
        "document_crs_unusable", f'the document\'s legacy "crs" member cannot be used: {why}'
    )
