"""The geometries of a ``FeatureBatch`` as a Shapely array, and back.

Stages decode every geometry of a batch in one :func:`shapely.from_wkb`
call, work on the whole array, and write back only the features whose
geometry changed; :func:`rebuild` copies the batch once and edits the copy,
so the input message is never mutated and unchanged features keep their
exact bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

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


def decode(batch: feature_pb2.FeatureBatch) -> tuple[ObjectArray, BoolArray]:
    """Geometries of ``batch`` (None for a null geometry) and the mask of present ones.

    Raises MessageError when the batch is not ISO WKB or a geometry does not
    decode: the message itself is broken, not one feature.
    """
    if batch.geometry_encoding != feature_pb2.GEOMETRY_ENCODING_ISO_WKB:
        msg = f"unsupported geometry encoding {batch.geometry_encoding} in batch {batch.sequence}"
        raise MessageError(msg)
    raw = np.empty(len(batch.features), dtype=object)
    raw[:] = [f.geometry for f in batch.features]
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
