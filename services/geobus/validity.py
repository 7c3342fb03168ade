"""Repair and orientation, shared by the validator and the reprojector.

The validator repairs what arrives invalid; the reprojector repairs what a
transformation made invalid (vertices a hair apart in degrees can cross after
projection: 6 of the 220 countries-land-10km polygons, valid after repair in
WGS 84, self-intersect in EPSG:3857). Both use the same GEOS calls so that a
stored geometry is valid in the CRS it is stored in, wound per RFC 7946.
"""

from __future__ import annotations

import numpy as np
import shapely

from geobus import geometries as g

_POLYGON, _MULTIPOLYGON = 3, 6


def repair(invalid: g.ObjectArray) -> g.ObjectArray:
    """GEOS MakeValid (structure, collapsed parts dropped); polygonal input stays polygonal.

    An input whose repair collapses entirely comes back empty: the caller
    rejects it.
    """
    repaired: g.ObjectArray = shapely.make_valid(invalid, method="structure", keep_collapsed=False)
    types = shapely.get_type_id(invalid)
    polygonal_in = (types == _POLYGON) | (types == _MULTIPOLYGON)
    out_types = shapely.get_type_id(repaired)
    stray = polygonal_in & (out_types != _POLYGON) & (out_types != _MULTIPOLYGON)
    if stray.any():
        repaired[stray] = polygonal_parts(repaired[stray])
    return repaired


def polygonal_parts(collections: g.ObjectArray) -> g.ObjectArray:
    """Only the polygons of each geometry, as one (Multi)Polygon; empty when there are none."""
    parts, owner = shapely.get_parts(collections, return_index=True)
    # Collections may nest; flatten level by level (depth, not coordinates).
    nested = np.isin(shapely.get_type_id(parts), (4, 5, 6, 7))
    while nested.any():
        inner, inner_owner = shapely.get_parts(parts[nested], return_index=True)
        parts = np.concatenate([parts[~nested], inner])
        owner = np.concatenate([owner[~nested], owner[nested][inner_owner]])
        nested = np.isin(shapely.get_type_id(parts), (4, 5, 6, 7))
    keep = (shapely.get_type_id(parts) == _POLYGON) & ~shapely.is_empty(parts)
    parts, owner = parts[keep], owner[keep]
    order = np.argsort(owner, kind="stable")
    parts, owner = parts[order], owner[order]
    out = np.full(len(collections), shapely.from_wkt("POLYGON EMPTY"), dtype=object)
    counts = np.bincount(owner, minlength=len(collections))
    single = counts == 1
    out[single] = parts[np.isin(owner, np.flatnonzero(single))]
    multi = counts > 1
    if multi.any():
        take = np.isin(owner, np.flatnonzero(multi))
        _, dense = np.unique(owner[take], return_inverse=True)
        out[multi] = shapely.multipolygons(parts[take], indices=dense)
    return out


def orient(geometries: g.ObjectArray, live: g.BoolArray) -> g.BoolArray:
    """Orient polygon rings per RFC 7946 §3.1.6 in place; the mask of geometries that changed.

    Orienting everything and comparing with :func:`shapely.equals_identical`
    costs less than finding the wrongly wound rings first (get_parts,
    get_rings, is_ccw: 0.044 s against 0.009 s on countries-maritime-10m),
    and the comparison tells exactly which features need re-encoding.
    """
    changed = np.zeros(len(geometries), dtype=bool)
    positions = np.flatnonzero(live)
    if len(positions) == 0:
        return changed
    before = geometries[positions]
    after = shapely.orient_polygons(before, exterior_cw=False)
    differs = ~shapely.equals_identical(after, before)
    changed[positions[differs]] = True
    geometries[positions[differs]] = after[differs]
    return changed
