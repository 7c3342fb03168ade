"""Sloppy but readable positions in WGS 84 input, found and fixed per batch.

Each function works on the whole geometry array of a batch (bounds and
coordinate arrays, no Python loop over coordinates), edits the array in
place and returns the positions it changed or flagged, so the validator can
record one adjustment or rejection per feature.

The decisions, each documented in the README:

- longitudes in (180, 540] (data written in 0-360 or "unwrapped" past the
  antimeridian) are brought back by subtracting 360; the result may then
  cross the antimeridian and be cut there;
- latitude and longitude swapped is detected only where it is unambiguous:
  some latitude beyond ±90, while every latitude would be a valid longitude
  and every longitude a valid latitude; such a feature is rejected, naming
  the swap, rather than silently swapped back;
- consecutive identical positions in lines and rings are removed (the shape
  does not change; PostGIS, GEOS and most renderers are indifferent, but
  some consumers count vertices or compute bearings between them). In 3-D,
  positions that share x and y but not z (a vertical segment) are kept.
"""

from __future__ import annotations

import numpy as np
import shapely

from geobus import geometries as g
from geobus.parts import COLLECTION, MULTIPOINT, POINT


def _bounds(geometries: g.ObjectArray, positions: g.IntArray) -> g.FloatArray:
    bounds: g.FloatArray = shapely.bounds(geometries[positions])
    return bounds


def swapped(geometries: g.ObjectArray, live: g.BoolArray) -> g.IntArray:
    """Positions whose coordinates are unambiguously (latitude, longitude)."""
    positions = np.flatnonzero(live)
    b = _bounds(geometries, positions)
    latitude_out = (b[:, 1] < -90) | (b[:, 3] > 90)
    fits_swapped = (b[:, 0] >= -90) & (b[:, 2] <= 90) & (b[:, 1] >= -180) & (b[:, 3] <= 180)
    return positions[latitude_out & fits_swapped]


def normalise_longitudes(geometries: g.ObjectArray, live: g.BoolArray) -> g.IntArray:
    """Subtract 360 from longitudes in (180, 540], in place; the positions changed.

    Only geometries that are otherwise in range qualify: a longitude beyond
    540 or below -180, or a latitude beyond ±90, is left for the range check
    to reject.
    """
    positions = np.flatnonzero(live)
    b = _bounds(geometries, positions)
    hit = (b[:, 2] > 180) & (b[:, 2] <= 540) & (b[:, 0] >= -180) & (b[:, 1] >= -90)
    hit &= b[:, 3] <= 90
    changed = positions[hit]
    if len(changed):
        geometries[changed] = shapely.transform(
            geometries[changed], _wrap, include_z=None, interleaved=False
        )
    return changed


def _wrap(
    x: g.FloatArray, y: g.FloatArray, z: g.FloatArray | None = None
) -> tuple[g.FloatArray, ...]:
    x = np.where(x > 180, x - 360, x)
    return (x, y) if z is None else (x, y, z)


def remove_duplicate_vertices(geometries: g.ObjectArray, live: g.BoolArray) -> g.IntArray:
    """Drop consecutive identical positions of lines and rings in place; the positions changed.

    A ring that collapses below four positions makes its polygon invalid:
    the validity check that follows repairs or rejects it.
    """
    positions = np.flatnonzero(live)
    types = shapely.get_type_id(geometries[positions])
    # Repeated points of a MultiPoint are separate points, not vertices.
    positions = positions[~np.isin(types, (POINT, MULTIPOINT, COLLECTION))]
    if not len(positions):
        return positions
    coords, owner = shapely.get_coordinates(
        geometries[positions], include_z=True, return_index=True
    )
    same_owner = owner[1:] == owner[:-1]
    same_xy = (coords[1:, 0] == coords[:-1, 0]) & (coords[1:, 1] == coords[:-1, 1]) & same_owner
    if not same_xy.any():
        return positions[:0]
    z0, z1 = coords[:-1, 2], coords[1:, 2]
    same_z = (z0 == z1) | (np.isnan(z0) & np.isnan(z1))
    # GEOS compares x and y only: a geometry with a vertical segment is left alone.
    vertical = np.unique(owner[1:][same_xy & ~same_z])
    candidates = np.setdiff1d(np.unique(owner[1:][same_xy]), vertical)
    subset = geometries[positions[candidates]]
    cleaned = _remove_repeated(subset)
    # A duplicate across two rings (one ring's end, the next ring's start) is
    # no duplicate: GEOS leaves it, and the count says nothing changed.
    fewer = shapely.get_num_coordinates(cleaned) < shapely.get_num_coordinates(subset)
    changed: g.IntArray = positions[candidates[fewer]]
    geometries[changed] = cleaned[fewer]
    return changed


def _remove_repeated(subset: g.ObjectArray) -> g.ObjectArray:
    """GEOS RemoveRepeatedPoints; a geometry it refuses is left as it was.

    GEOS throws when a ring would fall below four positions (a polygon of
    repeated points): that geometry is invalid anyway, and the validity
    check that follows names the reason and repairs or rejects it.
    """
    try:
        cleaned: g.ObjectArray = shapely.remove_repeated_points(subset)
    except shapely.errors.GEOSException:
        cleaned = subset.copy()
        for k, geometry in enumerate(subset):
            try:
                cleaned[k] = shapely.remove_repeated_points(geometry)
            except shapely.errors.GEOSException:
                cleaned[k] = geometry
    return cleaned
