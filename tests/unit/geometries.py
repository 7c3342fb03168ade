"""A catalogue of geometries for the stage tests, and batches built from them.

In the style of shapely's ``tests/common.py``: named geometries covering
valid, invalid, empty, 3-D, multi-part and collection cases. Batches are made
the way production makes them: GeoJSON text through the ingress codec
(:class:`~geobus.codec.convert.DocumentConverter`), never hand-built protobufs.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import shapely
from shapely.geometry import mapping

from geobus.codec.batches import BatchContext, BatchLimits
from geobus.codec.convert import DocumentConverter
from geobus.v1 import feature_pb2, rejection_pb2

W = shapely.from_wkt

# -- valid -------------------------------------------------------------------
point = W("POINT (2 3)")
point_z = W("POINT Z (2 3 4)")
line_string = W("LINESTRING (0 0, 1 0, 1 1)")
line_string_z = W("LINESTRING Z (0 0 4, 1 0 4, 1 1 4)")
polygon = W("POLYGON ((0 0, 2 0, 2 2, 0 2, 0 0))")  # CCW exterior, as RFC 7946 wants
polygon_cw = W("POLYGON ((0 0, 0 2, 2 2, 2 0, 0 0))")  # clockwise exterior
polygon_with_hole = W(
    "POLYGON ((0 0, 10 0, 10 10, 0 10, 0 0), (2 2, 2 4, 4 4, 4 2, 2 2))"
)  # CCW shell, CW hole
polygon_with_hole_wrong = W(
    "POLYGON ((0 0, 0 10, 10 10, 10 0, 0 0), (2 2, 4 2, 4 4, 2 4, 2 2))"
)  # CW shell, CCW hole
polygon_z_cw = W("POLYGON Z ((0 0 5, 0 2 6, 2 2 7, 2 0 8, 0 0 5))")
duplicate_points = W("POLYGON ((0 0, 0 0, 2 0, 2 2, 0 2, 0 0))")  # valid in OGC
multi_polygon_mixed = W(
    "MULTIPOLYGON (((0 0, 1 0, 1 1, 0 1, 0 0)), ((5 5, 5 6, 6 6, 6 5, 5 5)))"
)  # first part CCW, second CW
geometry_collection_cw = W(
    "GEOMETRYCOLLECTION (POINT (7 7), POLYGON ((0 0, 0 1, 1 1, 1 0, 0 0)), LINESTRING (3 3, 4 4))"
)

# -- empty -------------------------------------------------------------------
empty_point = W("POINT EMPTY")
empty_polygon = W("POLYGON EMPTY")
empty_collection = W("GEOMETRYCOLLECTION EMPTY")

# -- invalid -----------------------------------------------------------------
bowtie = W("POLYGON ((0 0, 2 2, 2 0, 0 2, 0 0))")  # Self-intersection[1 1]
bowtie_z = W("POLYGON Z ((0 0 1, 2 2 2, 2 0 3, 0 2 4, 0 0 1))")
self_touching_ring = W("POLYGON ((0 0, 4 0, 4 4, 2 0, 0 4, 0 0))")  # Ring Self-intersection[2 0]
hole_outside_shell = W("POLYGON ((0 0, 4 0, 4 4, 0 4, 0 0), (10 10, 11 10, 11 11, 10 10))")
nested_shells = W("MULTIPOLYGON (((0 0, 4 0, 4 4, 0 4, 0 0)), ((1 1, 2 1, 2 2, 1 2, 1 1)))")
collapsed = W("POLYGON ((0 0, 1 1, 2 2, 0 0))")  # zero area: repair leaves nothing
bowtie_in_collection = W(
    "GEOMETRYCOLLECTION (POLYGON ((0 0, 2 2, 2 0, 0 2, 0 0)), LINESTRING (5 5, 6 6))"
)

# -- out of WGS 84 range -----------------------------------------------------
beyond_antimeridian = W("LINESTRING (170 0, 179 1, 181 2, 185 3)")
beyond_pole_z = W("POINT Z (10 95 3)")

VALID = [
    point,
    point_z,
    line_string,
    line_string_z,
    polygon,
    polygon_cw,
    polygon_with_hole,
    polygon_with_hole_wrong,
    polygon_z_cw,
    duplicate_points,
    multi_polygon_mixed,
    geometry_collection_cw,
]
EMPTY = [empty_point, empty_polygon, empty_collection]
INVALID = [bowtie, bowtie_z, self_touching_ring, hole_outside_shell, nested_shells]

ROOT = Path(__file__).resolve().parents[2]


def geojson(geometry: shapely.Geometry | None) -> str:
    """The GeoJSON text of a geometry (``null`` for None), Z included."""
    return json.dumps(None if geometry is None else mapping(geometry))


def batch_of(
    geometries: list[shapely.Geometry | None], crs: str = "OGC:CRS84"
) -> feature_pb2.FeatureBatch:
    """One batch holding one feature per geometry (ids ``f0``, ``f1``, ...), via the codec."""
    features = ",".join(
        f'{{"type":"Feature","id":"f{i}","properties":{{"i":{i}}},"geometry":{geojson(g)}}}'
        for i, g in enumerate(geometries)
    )
    doc = f'{{"type":"FeatureCollection","features":[{features}]}}'.encode()
    outputs = list(DocumentConverter(io.BytesIO(doc), BatchContext(job_id="job-1", crs=crs)))
    assert len(outputs) == 1
    assert outputs[0].rejections is None, outputs[0].rejections
    batch = outputs[0].batch
    assert batch is not None
    return batch


def dataset_batches(
    name: str, crs: str = "OGC:CRS84", limits: BatchLimits | None = None
) -> list[feature_pb2.FeatureBatch]:
    """The batches of a real dataset, fetched into ``.data/`` on first use (bench/datasets.py)."""
    from bench import datasets

    with datasets.path(name).open("rb") as stream:
        outputs = list(DocumentConverter(stream, BatchContext(job_id="job-real", crs=crs), limits))
    assert all(o.rejections is None for o in outputs)
    return [o.batch for o in outputs if o.batch is not None]


def decoded(batch: feature_pb2.FeatureBatch) -> list[shapely.Geometry | None]:
    """The geometries of a batch (None for null)."""
    return [shapely.from_wkb(f.geometry) if f.geometry else None for f in batch.features]


def by_index(
    rejections: rejection_pb2.RejectionBatch | None,
) -> dict[int, rejection_pb2.Rejection]:
    """Rejections keyed by feature index (empty when there are none)."""
    return {} if rejections is None else {r.feature_index: r for r in rejections.rejections}
