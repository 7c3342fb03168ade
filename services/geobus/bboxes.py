"""RFC 7946 §5 bounding boxes of geometries, in the CRS the geometries are in.

A feature's ``bbox`` describes its geometry's coordinates, so a stage that
moves the coordinates into another CRS (the reprojector) or changes them
(clip, snap) writes the bbox again from the result. In a geographic CRS a
geometry cut along the antimeridian keeps the §5.2 form (west > east,
:func:`geobus.antimeridian.crossing_bbox`); in a projected CRS the bbox is
the plain bounds. Three-dimensional geometry gets the six-number form
``[west, south, min z, east, north, max z]``.
"""

from __future__ import annotations

import numpy as np
import shapely
from pyproj import Transformer
from pyproj.exceptions import ProjError

from geobus import antimeridian
from geobus import geometries as g
from geobus.v1 import feature_pb2


def bounding_boxes(geometries: g.ObjectArray, *, geographic: bool) -> list[list[float]]:
    """The bbox of each non-empty geometry: ``[w, s, e, n]``, or with the z range in 3-D."""
    bounds = shapely.bounds(geometries)
    boxes: list[list[float]] = bounds.tolist()
    where = np.flatnonzero(shapely.has_z(geometries))
    if len(where):
        coords, owner = shapely.get_coordinates(
            geometries[where], include_z=True, return_index=True
        )
        low = np.full(len(where), np.inf)
        high = np.full(len(where), -np.inf)
        # fmin/fmax skip the NaN z of a position without one.
        np.fmin.at(low, owner, coords[:, 2])
        np.fmax.at(high, owner, coords[:, 2])
        for k, position in enumerate(where.tolist()):
            west, south, east, north = boxes[position]
            boxes[position] = [west, south, float(low[k]), east, north, float(high[k])]
    if geographic:
        # Only a geometry reaching both -180 and +180 can be one cut along the
        # antimeridian; the §5.2 rule (one geometry at a time) is for those.
        for position in np.flatnonzero((bounds[:, 0] == -180) & (bounds[:, 2] == 180)).tolist():
            boxes[position] = antimeridian.crossing_bbox(geometries[position])
    return boxes


def transformed_bbox(bbox: list[float], transformer: Transformer) -> list[float]:
    """A bbox with no geometry to measure, its corners transformed; empty when PROJ cannot.

    PROJ densifies the edges and, from a geographic CRS, reads west > east
    as a box across the antimeridian. A z range is kept as it was.
    """
    three_d = len(bbox) == 6
    west, south, east, north = (bbox[0], bbox[1], bbox[3], bbox[4]) if three_d else bbox
    try:
        box = transformer.transform_bounds(west, south, east, north, errcheck=True)
    except ProjError:
        return []
    if not np.isfinite(box).all():
        return []
    if three_d:
        return [box[0], box[1], bbox[2], box[2], box[3], bbox[5]]
    return list(box)


def target_bboxes(
    batch: feature_pb2.FeatureBatch,
    result: g.ObjectArray,
    live: g.BoolArray,
    bare: g.BoolArray,
    changed: g.BoolArray,
    transformer: Transformer | None,
    geographic: bool,
) -> dict[int, list[float]]:
    """New bboxes, by batch position, of the features that carry one, in the target CRS.

    ``result`` holds the batch's geometries after the stage; ``live`` marks
    the kept features with a geometry, ``bare`` those with a null or empty
    one, ``changed`` the geometries the stage rewrote. A geometry that
    changed or was transformed (``transformer`` not None) gets the bbox of
    its new coordinates; one untouched in the same CRS keeps its bbox; a
    bare feature's bbox has its corners transformed (dropped when PROJ
    gives no finite result).
    """
    has_bbox = np.fromiter((len(f.bbox) > 0 for f in batch.features), bool, len(result))
    measured = has_bbox & live & (changed | (transformer is not None))
    bboxes = dict(
        zip(
            np.flatnonzero(measured).tolist(),
            bounding_boxes(result[measured], geographic=geographic),
            strict=True,
        )
    )
    if transformer is not None:
        for position in np.flatnonzero(has_bbox & bare).tolist():
            bboxes[position] = transformed_bbox(list(batch.features[position].bbox), transformer)
    return bboxes
