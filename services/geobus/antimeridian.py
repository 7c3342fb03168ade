"""Lines and rings that cross the antimeridian, found per batch and cut per RFC 7946 §3.1.9.

Detection is vectorised over the whole batch: every line and ring of every
geometry is taken apart (:mod:`geobus.parts`), and a part crosses when two
consecutive positions are more than 180° of longitude apart — the shorter
way round goes over ±180. An edge along a pole (both ends at latitude ±90)
is the closing edge of a polar cap that was already cut, not a crossing.

Cutting is done by the ``antimeridian`` package (well kept, tested against
the cases its own suite ships) on the crossing few only, with
``great_circle=False``: geobus stores planar geometry, where an edge is a
straight line in longitude/latitude, so the crossing latitude is
interpolated linearly, as GEOS, PostGIS and QGIS draw the edge. A ring
around a pole is closed through the pole. The package reads 2-D only: for a
3-D geometry the cut is made in 2-D and every original vertex gets its own
z back; a vertex the cut adds on ±180 (or at a pole) takes the z of the
vertex before it.

A shell that goes around a pole is closed through the pole of its own
hemisphere whatever its winding (see :func:`_pole`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import antimeridian as am
import numpy as np
import shapely

from geobus import geometries as g
from geobus.parts import COLLECTION, LINESTRING, MULTILINESTRING, MULTIPOLYGON, POLYGON, flatten

_FIXERS: dict[int, Callable[..., Any]] = {
    POLYGON: am.fix_polygon,
    LINESTRING: am.fix_line_string,
    MULTILINESTRING: am.fix_multi_line_string,
}


def crossing(geometries: g.ObjectArray, live: g.BoolArray) -> g.IntArray:
    """Positions of the geometries with a line or ring that jumps over ±180°."""
    positions = np.flatnonzero(live)
    if not len(positions):
        return positions
    parts, owner = flatten(geometries[positions])
    types = shapely.get_type_id(parts)
    lines = types == LINESTRING
    polygons = np.flatnonzero(types == POLYGON)
    rings, ring_part = shapely.get_rings(parts[polygons], return_index=True)
    paths = np.concatenate([parts[lines], rings])
    path_owner = np.concatenate([owner[lines], owner[polygons][ring_part]])
    if not len(paths):
        return positions[:0]
    coords, path = shapely.get_coordinates(paths, return_index=True)
    x, y = coords[:, 0], coords[:, 1]
    jump = (path[1:] == path[:-1]) & (np.abs(np.diff(x)) > 180)
    along_pole = (np.abs(y[1:]) == 90) & (np.abs(y[:-1]) == 90) & (y[1:] == y[:-1])
    hit = np.unique(path_owner[path[1:][jump & ~along_pole]])
    found: g.IntArray = positions[hit]
    return found


def cut(geometries: g.ObjectArray) -> tuple[g.ObjectArray, dict[int, str]]:
    """Each geometry cut along the antimeridian, and why, by position, those that could not be.

    Geometries with nothing to cut come back equal (not necessarily identical).
    """
    out = geometries.copy()
    failed: dict[int, str] = {}
    for k, geometry in enumerate(geometries):
        try:
            result = _cut_one(shapely.force_2d(geometry))
        except Exception as exc:
            failed[k] = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            continue
        if shapely.has_z(geometry):
            result = _restore_z(result, geometry)
        out[k] = result
    return out, failed


def _cut_one(geometry: shapely.Geometry) -> shapely.Geometry:
    kind = int(shapely.get_type_id(geometry))
    if kind == COLLECTION:
        members = [_cut_one(member) for member in shapely.get_parts(geometry)]
        return shapely.geometrycollections(members)
    if kind == MULTIPOLYGON:
        # Part by part, so that the hole fallback below applies to each.
        polygons = [_cut_one(p) for p in shapely.get_parts(geometry)]
        pieces = np.concatenate([shapely.get_parts(p) for p in polygons])
        # A hole taken out with GEOS may leave slivers of lower dimension.
        pieces = pieces[(shapely.get_type_id(pieces) == POLYGON) & ~shapely.is_empty(pieces)]
        return shapely.multipolygons(pieces)
    fixer = _FIXERS.get(kind)
    if fixer is None:
        # Points cannot cross anything.
        return geometry
    options = _pole(geometry) if kind == POLYGON else {}
    try:
        return _fix(fixer, geometry, **options)
    except ValueError:
        if kind != POLYGON or not shapely.get_num_interior_rings(geometry):
            raise
    # The package refuses some crossing polygons with holes ("assert not
    # interiors"): cut the shell and each hole on their own, then take the
    # holes out of the shell with GEOS.
    shell = _fix(fixer, shapely.Polygon(shapely.get_exterior_ring(geometry)), **options)
    holes = [
        _fix(fixer, shapely.Polygon(shapely.get_interior_ring(geometry, k)))
        for k in range(shapely.get_num_interior_rings(geometry))
    ]
    result: shapely.Geometry = shapely.difference(shell, shapely.union_all(holes))
    return result


def _pole(polygon: shapely.Geometry) -> dict[str, bool]:
    """Which pole a shell around a pole encloses: the one of its hemisphere.

    A shell that crosses the antimeridian an odd number of times goes
    around a pole, and only its winding says which side is inside. Real
    feeds wind either way (the @geo-maps countries are clockwise), so a
    shell wholly in one hemisphere is closed through that hemisphere's pole;
    one that reaches both is left to its winding (RFC 7946 §3.1.6).
    """
    coords = shapely.get_coordinates(shapely.get_exterior_ring(polygon))
    x, y = coords[:, 0], coords[:, 1]
    along_pole = (np.abs(y[1:]) == 90) & (y[1:] == y[:-1])
    jumps = int(((np.abs(np.diff(x)) > 180) & ~along_pole).sum())
    if jumps % 2 == 0:
        return {}
    if (y <= 0).all():
        return {"force_south_pole": True}
    if (y >= 0).all():
        return {"force_north_pole": True}
    return {}


def _fix(fixer: Callable[..., Any], geometry: shapely.Geometry, **options: Any) -> shapely.Geometry:
    with warnings.catch_warnings():
        # The package warns when it rewinds a clockwise exterior; the
        # validator orients every polygon per RFC 7946 afterwards anyway.
        warnings.simplefilter("ignore", am.FixWindingWarning)
        try:
            result: shapely.Geometry = fixer(geometry, great_circle=False, **options)
        except Exception as exc:
            msg = f"the antimeridian package could not cut it ({type(exc).__name__}: {exc})"
            raise ValueError(msg) from exc
    return result


def _restore_z(result: shapely.Geometry, original: shapely.Geometry) -> shapely.Geometry:
    """``result`` (2-D) with z taken from ``original``'s vertices at the same x, y."""
    source = shapely.get_coordinates(original, include_z=True)
    target = shapely.get_coordinates(result)
    if not len(target):
        return shapely.force_3d(result)
    key = source[:, 0] + 1j * source[:, 1]
    order = np.argsort(key)
    sorted_key = key[order]
    wanted = target[:, 0] + 1j * target[:, 1]
    at = np.clip(np.searchsorted(sorted_key, wanted), 0, len(sorted_key) - 1)
    found = sorted_key[at] == wanted
    z = np.where(found, source[order[at], 2], np.nan)
    # Forward fill the new vertices from the one before them (backward for a
    # leading one).
    filled = np.where(~np.isnan(z), np.arange(len(z)), 0)
    np.maximum.accumulate(filled, out=filled)
    z = z[filled]
    if np.isnan(z[0]):
        first = np.flatnonzero(~np.isnan(z))
        z[np.isnan(z)] = z[first[0]] if len(first) else 0.0
    xyz = np.column_stack([target, z])
    restored: shapely.Geometry = shapely.set_coordinates(shapely.force_3d(result), xyz)
    return restored


def crossing_bbox(geometry: shapely.Geometry) -> list[float]:
    """The RFC 7946 §5.2 bbox of a cut geometry: west > east when it crosses.

    When parts touch both +180 and -180, west is the westernmost longitude
    of the parts in the eastern hemisphere and east the easternmost of those
    in the western one; otherwise the plain bounds. A 3-D geometry gets the
    six-number form with its z range.
    """
    pieces, _ = flatten(np.asarray([geometry], dtype=object))
    b = shapely.bounds(pieces)
    west, south, east, north = (
        float(np.min(b[:, 0])),
        float(np.min(b[:, 1])),
        float(np.max(b[:, 2])),
        float(np.max(b[:, 3])),
    )
    eastern = b[:, 0] >= 0
    if west == -180 and east == 180 and eastern.any() and (~eastern).any():
        # A polar cap spans every longitude: its bbox does not cross.
        spans = (b[:, 0] == -180) & (b[:, 2] == 180)
        if not spans.any():
            west, east = float(np.min(b[eastern, 0])), float(np.max(b[~eastern, 2]))
    if not shapely.has_z(geometry):
        return [west, south, east, north]
    z = shapely.get_coordinates(geometry, include_z=True)[:, 2]
    return [west, south, float(np.nanmin(z)), east, north, float(np.nanmax(z))]
