"""Geometries taken apart into single parts and put back together, vectorised.

Multi* geometries and GeometryCollections (which may nest) are flattened
level by level with :func:`shapely.get_parts` — a loop over nesting depth,
never over coordinates — and rebuilt with Shapely's array constructors.
"""

from __future__ import annotations

import numpy as np
import shapely

from geobus import geometries as g

POINT, LINESTRING, POLYGON = 0, 1, 3
MULTIPOINT, MULTILINESTRING, MULTIPOLYGON, COLLECTION = 4, 5, 6, 7
_NESTED = (MULTIPOINT, MULTILINESTRING, MULTIPOLYGON, COLLECTION)
# The Multi* type id built from single parts of a type id.
_MULTI_OF = {POINT: MULTIPOINT, LINESTRING: MULTILINESTRING, POLYGON: MULTIPOLYGON}


def flatten(geometries: g.ObjectArray) -> tuple[g.ObjectArray, g.IntArray]:
    """Every single part (Point, LineString, Polygon) and the position of its geometry.

    Parts come out grouped by owner, in the order they appear in it.
    """
    parts, owner = shapely.get_parts(geometries, return_index=True)
    nested = np.isin(shapely.get_type_id(parts), _NESTED)
    while nested.any():
        inner, inner_owner = shapely.get_parts(parts[nested], return_index=True)
        parts = np.concatenate([parts[~nested], inner])
        owner = np.concatenate([owner[~nested], owner[nested][inner_owner]])
        nested = np.isin(shapely.get_type_id(parts), _NESTED)
    order = np.argsort(owner, kind="stable")
    return parts[order], owner[order]


def assemble(
    parts: g.ObjectArray, owner: g.IntArray, count: int, kind: int, empty: str
) -> g.ObjectArray:
    """``count`` geometries: the single part where an owner has one, else the Multi* ``kind``.

    ``parts`` must be singles of one type, grouped by ``owner``; an owner
    without parts gets the geometry ``empty`` (WKT).
    """
    out = np.full(count, shapely.from_wkt(empty), dtype=object)
    counts = np.bincount(owner, minlength=count)
    single = counts == 1
    out[single] = parts[np.isin(owner, np.flatnonzero(single))]
    multi = counts > 1
    if multi.any():
        take = np.isin(owner, np.flatnonzero(multi))
        _, dense = np.unique(owner[take], return_inverse=True)
        build = {
            MULTIPOINT: shapely.multipoints,
            MULTILINESTRING: shapely.multilinestrings,
            MULTIPOLYGON: shapely.multipolygons,
        }[kind]
        out[multi] = build(parts[take], indices=dense)
    return out


def keep_dimension(geometries: g.ObjectArray, dimension: int) -> g.ObjectArray:
    """Only the parts of topological ``dimension`` (0, 1, 2) of each geometry.

    Overlay results (an intersection with a box) may add points or lines
    where a polygon only touches the box; a polygon must stay polygonal.
    """
    parts, owner = flatten(geometries)
    keep = (shapely.get_dimensions(parts) == dimension) & ~shapely.is_empty(parts)
    kind = {0: MULTIPOINT, 1: MULTILINESTRING, 2: MULTIPOLYGON}[dimension]
    empty = {0: "POINT EMPTY", 1: "LINESTRING EMPTY", 2: "POLYGON EMPTY"}[dimension]
    return assemble(parts[keep], owner[keep], len(geometries), kind, empty)


def explode_collections(geometries: g.ObjectArray, live: g.BoolArray) -> g.IntArray:
    """Turn, in place, homogeneous GeometryCollections into Multi* geometries.

    A collection whose members (flattened) are all points, all lines or all
    polygons becomes a MultiPoint, MultiLineString or MultiPolygon, even with
    one member, so that a layer's geometry type stays one family. Mixed and
    empty collections are left alone. Returns the positions changed.
    """
    positions = np.flatnonzero(live)
    positions = positions[shapely.get_type_id(geometries[positions]) == COLLECTION]
    positions = positions[~shapely.is_empty(geometries[positions])]
    if not len(positions):
        none: g.IntArray = positions
        return none
    parts, owner = flatten(geometries[positions])
    types = shapely.get_type_id(parts)
    low = np.full(len(positions), 99)
    high = np.full(len(positions), -1)
    np.minimum.at(low, owner, types)
    np.maximum.at(high, owner, types)
    changed: list[g.IntArray] = []
    for kind in (POINT, LINESTRING, POLYGON):
        hit = np.flatnonzero((low == kind) & (high == kind))
        if not len(hit):
            continue
        take = np.isin(owner, hit)
        _, dense = np.unique(owner[take], return_inverse=True)
        build = {
            POINT: shapely.multipoints,
            LINESTRING: shapely.multilinestrings,
            POLYGON: shapely.multipolygons,
        }[kind]
        geometries[positions[hit]] = build(parts[take], indices=dense)
        changed.append(positions[hit])
    out: g.IntArray = np.sort(np.concatenate(changed)) if changed else positions[:0]
    return out
