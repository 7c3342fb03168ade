"""``geobus.v1.FeatureBatch`` → GeoJSON text (the way back, for tools and tests).

Geometries are decoded from WKB and written by GEOS in one vectorised call
per batch; GEOS writes each double in its shortest round-trip form, so a
coordinate read back is bit-identical to the one that was sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import msgspec
import numpy as np
import numpy.typing as npt
import shapely

from geobus.errors import MessageError
from geobus.v1 import feature_pb2

_TYPE_NAMES = {
    0: b"Point",
    1: b"LineString",
    2: b"LineString",  # a LinearRing is never sent; written as the LineString it is
    3: b"Polygon",
    4: b"MultiPoint",
    5: b"MultiLineString",
    6: b"MultiPolygon",
}
_GEOMETRY_COLLECTION = 7


def feature_id_json(fid: feature_pb2.FeatureId) -> bytes | None:
    """The GeoJSON text of a FeatureId, or None when no alternative is set."""
    which = fid.WhichOneof("value")
    if which == "string_id":
        return msgspec.json.encode(fid.string_id)
    if which == "integer_id":
        return str(fid.integer_id).encode()
    if which == "number_id":
        return msgspec.json.encode(fid.number_id)
    if which == "big_integer_id":
        return fid.big_integer_id.encode()
    return None


def geometries(batch: feature_pb2.FeatureBatch) -> npt.NDArray[np.object_]:
    """The batch's geometries as a Shapely array (None for null geometries)."""
    if batch.geometry_encoding != feature_pb2.GEOMETRY_ENCODING_ISO_WKB:
        msg = f"unsupported geometry encoding {batch.geometry_encoding}"
        raise MessageError(msg)
    blobs = np.array([f.geometry or None for f in batch.features], dtype=object)
    result: npt.NDArray[np.object_] = shapely.from_wkb(blobs)
    return result


def feature_texts(batch: feature_pb2.FeatureBatch) -> Iterator[bytes]:
    """Each feature of the batch as a GeoJSON Feature text."""
    geoms = geometries(batch)
    present = ~shapely.is_missing(geoms)
    texts = np.full(len(geoms), b"null", dtype=object)
    if present.any():
        texts[present] = [t.encode() for t in shapely.to_geojson(geoms[present])]
        # GEOS writes an empty polygon as [[]]; RFC 7946 readers expect [] for
        # every empty geometry, which is also what came in.
        empty = present & shapely.is_empty(geoms)
        for i in np.flatnonzero(empty):
            type_id = int(shapely.get_type_id(geoms[i]))
            if type_id != _GEOMETRY_COLLECTION:
                texts[i] = b'{"type":"%s","coordinates":[]}' % _TYPE_NAMES[type_id]
    for feature, geometry in zip(batch.features, texts, strict=True):
        parts = [b'{"type":"Feature"']
        if feature.HasField("id"):
            fid = feature_id_json(feature.id)
            if fid is not None:
                parts.append(b',"id":' + fid)
        if feature.bbox:
            parts.append(b',"bbox":' + msgspec.json.encode(list(feature.bbox)))
        parts.append(b',"geometry":' + geometry)
        parts.append(b',"properties":' + (feature.properties or b"null") + b"}")
        yield b"".join(parts)


def feature_collection(batches: Iterable[feature_pb2.FeatureBatch]) -> Iterator[bytes]:
    """A FeatureCollection text, in pieces, from batches in order."""
    yield b'{"type":"FeatureCollection","features":['
    first = True
    for batch in batches:
        for text in feature_texts(batch):
            yield text if first else b"," + text
            first = False
    yield b"]}"
