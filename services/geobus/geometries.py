"""The geometries of a ``FeatureBatch`` as a Shapely array, and back.

Stages decode every geometry of a batch in one :func:`shapely.from_wkb`
call, work on the whole array, and write back only the features whose
geometry changed; :func:`rebuild` copies the batch once and edits the copy,
so the input message is never mutated and unchanged features keep their
exact bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt
import shapely

from geobus.errors import MessageError
from geobus.problems import Problem
from geobus.v1 import feature_pb2, rejection_pb2

ObjectArray = npt.NDArray[np.object_]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.intp]
FloatArray = npt.NDArray[np.float64]
# Most decimal digits coordinates may be snapped to (GEOBUS_PRECISION, the
# `precision` request parameter): a double holds 15-17 significant digits.
MAX_PRECISION = 15


def check_encoding(batch: feature_pb2.FeatureBatch) -> None:
    """Raise MessageError unless the batch's geometry is ISO WKB."""
    if batch.geometry_encoding != feature_pb2.GEOMETRY_ENCODING_ISO_WKB:
        msg = f"unsupported geometry encoding {batch.geometry_encoding} in batch {batch.sequence}"
        raise MessageError(msg)


def decode(
    batch: feature_pb2.FeatureBatch, wkbs: list[bytes] | None = None
) -> tuple[ObjectArray, BoolArray]:
    """Geometries of ``batch`` (None for a null geometry) and the mask of present ones.

    ``wkbs`` are the batch's geometry fields when the caller read them
    already. Raises MessageError when the batch is not ISO WKB or a geometry
    does not decode: the message itself is broken, not one feature.
    """
    check_encoding(batch)
    if wkbs is None:
        wkbs = [f.geometry for f in batch.features]
    raw = np.empty(len(wkbs), dtype=object)
    raw[:] = wkbs
    present = np.fromiter((len(b) > 0 for b in raw), dtype=bool, count=len(raw))
    geometries = np.full(len(raw), None, dtype=object)
    if present.any():
        try:
            geometries[present] = shapely.from_wkb(raw[present], on_invalid="raise")
        except shapely.errors.GEOSException as exc:
            msg = f"batch {batch.sequence} of job {batch.job_id} holds undecodable WKB: {exc}"
            raise MessageError(msg) from exc
    return geometries, present


def encode(geometries: ObjectArray) -> ObjectArray:
    """ISO WKB, little-endian, keeping Z where a geometry has it (the contract's encoding)."""
    encoded: ObjectArray = shapely.to_wkb(
        geometries, output_dimension=3, flavor="iso", byte_order=1
    )
    return encoded


# The ISO WKB header of a little-endian Point (what the codec and encode()
# write), by the length of the whole WKB: 2-D (x, y) and 3-D (x, y, z).
_POINT_HEADERS = {21: b"\x01\x01\x00\x00\x00", 29: b"\x01\xe9\x03\x00\x00"}


def point_coordinates(wkbs: Sequence[bytes]) -> FloatArray | None:
    """The coordinates (n x 2 or n x 3) when every WKB is a finite point, else None.

    The fast path of point data: all of them little-endian ISO WKB Points of
    one dimension, none empty (an empty point is NaN), so that the stages
    can read and write the doubles with numpy instead of a GEOS round trip
    (:func:`decode`, then :func:`encode`). Anything else (null geometries
    too) takes the general path.
    """
    if not wkbs:
        return None
    size = len(wkbs[0])
    header = _POINT_HEADERS.get(size)
    if header is None:
        return None
    if not (np.fromiter(map(len, wkbs), dtype=np.intp, count=len(wkbs)) == size).all():
        return None
    rows = np.frombuffer(b"".join(wkbs), dtype=np.uint8).reshape(len(wkbs), size)
    if not (rows[:, :5] == np.frombuffer(header, dtype=np.uint8)).all():
        return None
    coords: FloatArray = rows[:, 5:].copy().view("<f8").astype(np.float64, copy=False)
    if not np.isfinite(coords).all():
        return None
    return coords


def point_wkbs(coords: FloatArray) -> list[bytes]:
    """ISO WKB of points (rows of x, y and maybe z): what :func:`encode` writes for them."""
    count, dimensions = coords.shape
    size = 5 + 8 * dimensions
    rows = np.empty((count, size), dtype=np.uint8)
    rows[:, :5] = np.frombuffer(_POINT_HEADERS[size], dtype=np.uint8)
    rows[:, 5:] = np.ascontiguousarray(coords, dtype="<f8").view(np.uint8)
    data = rows.tobytes()
    return [data[start : start + size] for start in range(0, len(data), size)]


def first_rows(owner: IntArray, bad: BoolArray) -> tuple[IntArray, IntArray]:
    """For each owner with a bad row: the owner and the first bad row's position.

    ``owner`` is the per-row feature index of :func:`shapely.get_coordinates`
    (``return_index=True``), which is sorted, so the first occurrence is the
    first coordinate in the geometry's own order.
    """
    rows = np.flatnonzero(bad)
    owners, first = np.unique(owner[rows], return_index=True)
    return owners, rows[first]


def coordinate(row: FloatArray) -> tuple[float, ...]:
    """One coordinate row as a tuple, without the NaN Z that 2-D geometries get."""
    values = [float(v) for v in row]
    if len(values) == 3 and np.isnan(values[2]):
        values.pop()
    return tuple(values)


def rebuild(
    batch: feature_pb2.FeatureBatch,
    *,
    drop: Iterable[int] = (),
    geometry: Mapping[int, bytes] | None = None,
    adjustments: Mapping[int, feature_pb2.Adjustment] | None = None,
    crs: str | None = None,
) -> feature_pb2.FeatureBatch:
    """A copy of ``batch`` with new geometry/adjustments at some positions and others dropped."""
    out = feature_pb2.FeatureBatch()
    out.CopyFrom(batch)
    if crs is not None:
        out.crs = crs
    features = out.features
    for position, wkb in (geometry or {}).items():
        features[position].geometry = wkb
    for position, adjustment in (adjustments or {}).items():
        features[position].adjustments.append(adjustment)
    # Rejections are rare: deleting from the end keeps earlier positions valid.
    for position in sorted(drop, reverse=True):
        del features[position]
    return out


def rejection_batch(
    batch: feature_pb2.FeatureBatch, stage: str, problems: Mapping[int, Problem]
) -> rejection_pb2.RejectionBatch | None:
    """Rejections of the features at the given batch positions, in document order."""
    if not problems:
        return None
    rejections = []
    for position in sorted(problems):
        feature = batch.features[position]
        rejections.append(
            problems[position].to_rejection(
                job_id=batch.job_id,
                index=feature.index,
                stage=stage,
                feature_id=feature.id if feature.HasField("id") else None,
            )
        )
    return rejection_pb2.RejectionBatch(
        job_id=batch.job_id, sequence=batch.sequence, stage=stage, rejections=rejections
    )
