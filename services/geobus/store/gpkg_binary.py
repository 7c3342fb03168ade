"""GeoPackageBinary geometry blobs and the SQL functions the spec's RTree triggers call.

A GeoPackage geometry is a header (``GP``, version, flags, SRS id, envelope)
followed by ISO WKB (OGC 12-128r18 §2.1.3). geobus writes the XY envelope
of every non-empty geometry and no envelope for empty ones (empty flag set).

The RTree spatial index extension (§F.3) keeps ``rtree_<t>_<c>`` up to date
with triggers that call ``ST_IsEmpty``, ``ST_MinX``, ``ST_MaxX``, ``ST_MinY``
and ``ST_MaxY``. GDAL and QGIS define these on their own connections; geobus
registers the Python versions below on its sqlite3 connections, so the one
set of spec triggers serves every program that writes to the file.
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Callable

import numpy as np
import shapely

Envelope = tuple[float, float, float, float]
_MAGIC = b"GP"
_VERSION = 0
_LITTLE_ENDIAN = 0x01
_ENVELOPE_XY = 0x01 << 1
_EMPTY = 0x10
# Envelope sizes (in doubles) by the flags' envelope contents indicator.
_ENVELOPE_DOUBLES = {0: 0, 1: 4, 2: 6, 3: 6, 4: 8}


def encode(wkbs: list[bytes], srid: int) -> tuple[list[bytes | None], list[Envelope | None]]:
    """ISO WKB (b"" = null geometry) → GeoPackageBinary blobs (None = null), vectorised.

    Also returns each blob's envelope (minx, maxx, miny, maxy), None for null
    and empty geometries: the RTree rows of the features.
    """
    out: list[bytes | None] = [None] * len(wkbs)
    boxes: list[Envelope | None] = [None] * len(wkbs)
    present = [i for i, w in enumerate(wkbs) if w]
    if not present:
        return out, boxes
    geometries = shapely.from_wkb(np.array([wkbs[i] for i in present], dtype=object))
    bounds = shapely.bounds(geometries)
    empty = shapely.is_empty(geometries)
    # minx, maxx, miny, maxy is the GeoPackage envelope order.
    envelopes = np.ascontiguousarray(bounds[:, [0, 2, 1, 3]], dtype="<f8")
    full = struct.pack("<2sBBi", _MAGIC, _VERSION, _LITTLE_ENDIAN | _ENVELOPE_XY, srid)
    bare = struct.pack("<2sBBi", _MAGIC, _VERSION, _LITTLE_ENDIAN | _EMPTY, srid)
    for row, (i, box) in enumerate(zip(present, envelopes.tolist(), strict=True)):
        if empty[row]:
            out[i] = bare + wkbs[i]
        else:
            out[i] = full + envelopes[row].tobytes() + wkbs[i]
            boxes[i] = (box[0], box[1], box[2], box[3])
    return out, boxes


def _envelope(blob: bytes) -> tuple[float, float, float, float] | None:
    """(minx, maxx, miny, maxy) of a GeoPackageBinary blob; None when empty."""
    flags = blob[3]
    if flags & _EMPTY:
        return None
    order = "<" if flags & _LITTLE_ENDIAN else ">"
    indicator = (flags >> 1) & 0x07
    if indicator:
        minx, maxx, miny, maxy = struct.unpack_from(order + "4d", blob, 8)
        return minx, maxx, miny, maxy
    # GDAL writes points without an envelope: read the WKB.
    wkb = blob[8 + 8 * _ENVELOPE_DOUBLES.get(indicator, 0) :]
    geometry = shapely.from_wkb(wkb)
    if geometry is None or shapely.is_empty(geometry):
        return None
    minx, miny, maxx, maxy = shapely.bounds(geometry).tolist()
    return minx, maxx, miny, maxy


def _is_empty(blob: bytes | None) -> int | None:
    if blob is None:
        return None
    return 1 if _envelope(blob) is None else 0


def _coordinate(position: int) -> Callable[[bytes | None], float | None]:
    def extract(blob: bytes | None) -> float | None:
        if blob is None:
            return None
        envelope = _envelope(blob)
        return None if envelope is None else envelope[position]

    return extract


def register_functions(connection: sqlite3.Connection) -> None:
    """Define ST_IsEmpty / ST_MinX / ST_MaxX / ST_MinY / ST_MaxY on ``connection``."""
    connection.create_function("ST_IsEmpty", 1, _is_empty, deterministic=True)
    for position, name in enumerate(("ST_MinX", "ST_MaxX", "ST_MinY", "ST_MaxY")):
        connection.create_function(name, 1, _coordinate(position), deterministic=True)
