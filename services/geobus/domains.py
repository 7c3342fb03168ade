"""The area of use of a target CRS, and geometry clipped to it before projection.

PROJ does not enforce a projection's area of use: Web Mercator turns
latitude 89.9 into y ≈ 4.5e7 m and 90 into a finite 2.4e8 m; a UTM zone
projects the far side of the globe into huge, meaningless numbers. The
reprojector therefore clips, in longitude/latitude and before transforming,
to the area of use PROJ's database records for the target CRS
(``CRS.area_of_use``: EPSG:3857 is ±180° by ±85.06°), or rejects what lies
beyond it, as the deployment chooses (``GEOBUS_CLIP``). An area of use that
crosses the antimeridian (west > east) is two boxes.

Clipping is a GEOS intersection with the box(es): exact, valid output, z
interpolated on the new edges; a polygon stays polygonal (points or lines
where it only touches the box are dropped).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from pyproj import CRS

from geobus import geometries as g
from geobus.parts import keep_dimension

_WORLD = (-180.0, -90.0, 180.0, 90.0)


@dataclass(frozen=True)
class Domain:
    """Where a CRS may be used, in WGS 84 longitude/latitude."""

    name: str
    bounds: tuple[float, float, float, float]  # west, south, east, north
    area: shapely.Geometry

    @property
    def description(self) -> str:
        """For messages: ``World between 85.06°S and 85.06°N (lon -180..180, lat ...)``."""
        w, s, e, n = self.bounds
        # PROJ's names can list dozens of countries: the first sentence is enough.
        name = self.name.split(". ")[0].rstrip(".")[:80]
        return f"{name} (lon {w:g}..{e:g}, lat {s:g}..{n:g})"


def domain_of(crs: CRS) -> Domain | None:
    """The area of use of ``crs``, or None when it is the whole world or unknown."""
    area = crs.area_of_use
    if area is None:
        return None
    w, s, e, n = area.west, area.south, area.east, area.north
    if (w, s, e, n) == _WORLD or (w <= -180 and s <= -90 and e >= 180 and n >= 90):
        return None
    if w > e:
        # Across the antimeridian: the part east of west, and the part west of east.
        shape = shapely.union(shapely.box(w, s, 180, n), shapely.box(-180, s, e, n))
    else:
        shape = shapely.box(w, s, e, n)
    shapely.prepare(shape)
    return Domain(name=area.name, bounds=(w, s, e, n), area=shape)


@dataclass(slots=True)
class Clipped:
    """The outcome of :func:`clip` by batch position."""

    # Positions partly outside, with the clipped geometry and the share removed.
    partly: dict[int, tuple[shapely.Geometry, float]]
    # Positions wholly outside (nothing would be left).
    wholly: list[int]


def clip(geometries: g.ObjectArray, live: g.BoolArray, domain: Domain) -> Clipped:
    """Which live geometries reach beyond ``domain``, and what is left of each inside it."""
    positions = np.flatnonzero(live)
    if not len(positions):
        return Clipped({}, [])
    b = shapely.bounds(geometries[positions])
    w, s, e, n = domain.bounds
    if w <= e:
        inside = (b[:, 0] >= w) & (b[:, 2] <= e) & (b[:, 1] >= s) & (b[:, 3] <= n)
        candidates = positions[~inside]
    else:
        candidates = positions
    if not len(candidates):
        return Clipped({}, [])
    subset = geometries[candidates]
    beyond = ~shapely.covered_by(subset, domain.area)
    candidates, subset = candidates[beyond], subset[beyond]
    if not len(candidates):
        return Clipped({}, [])
    clipped = shapely.intersection(subset, domain.area)
    dimensions = shapely.get_dimensions(subset)
    for dimension in (0, 1, 2):
        mismatch = (dimensions == dimension) & (shapely.get_dimensions(clipped) != dimension)
        if mismatch.any():
            clipped[mismatch] = keep_dimension(clipped[mismatch], dimension)
    empty = shapely.is_empty(clipped)
    removed = _share_removed(subset, clipped, dimensions)
    partly = {
        int(p): (geometry, float(share))
        for p, geometry, share in zip(
            candidates[~empty], clipped[~empty], removed[~empty], strict=True
        )
    }
    return Clipped(partly, [int(p) for p in candidates[empty]])


def _share_removed(
    before: g.ObjectArray, after: g.ObjectArray, dimensions: g.IntArray
) -> g.FloatArray:
    """Share (0-1) of the area, length or point count that was outside, in degrees."""
    measure_before = np.where(
        dimensions == 2,
        shapely.area(before),
        np.where(dimensions == 1, shapely.length(before), shapely.get_num_geometries(before)),
    )
    measure_after = np.where(
        dimensions == 2,
        shapely.area(after),
        np.where(dimensions == 1, shapely.length(after), shapely.get_num_geometries(after)),
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        share = 1 - measure_after / measure_before
    clean: g.FloatArray = np.nan_to_num(np.clip(share, 0, 1), nan=0.0)
    return clean
