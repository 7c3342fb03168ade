"""Reproject one ``FeatureBatch`` into the target CRS.

All coordinates of a batch go through PROJ in one call per dimensionality
(2-D and 3-D geometries are split so that Z is carried and 2-D stays 2-D):
:func:`shapely.get_coordinates` → ``Transformer.transform`` on the numpy
columns → :func:`shapely.set_coordinates`. PROJ reports a point it cannot
transform as ``inf``; a feature with any such coordinate is rejected.

PROJ does not enforce a projection's area of use: Web Mercator turns
latitude 89.9 into y ≈ 4.5e7 m and even 90 into a finite 2.4e8 m; only
beyond the pole does it give ``inf``. Clipping to the area of use is a
separate policy, not done here.
"""

from __future__ import annotations

import numpy as np
import shapely
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError, ProjError

from geobus import geometries as g
from geobus.errors import ConfigurationError, MessageError
from geobus.problems import Problem, R
from geobus.stage import StageResult
from geobus.v1 import feature_pb2
from geobus.validity import orient, repair

STAGE = "reprojector"


class Reprojector:
    """Callable transform ``FeatureBatch → StageResult`` into ``target_crs``.

    Transformers are cached per source CRS string (creating one costs
    milliseconds of PROJ database work). Use one instance per thread: a
    pyproj Transformer must not be shared between threads.
    """

    def __init__(self, target_crs: str) -> None:
        try:
            self._target = CRS.from_user_input(target_crs)
        except CRSError as exc:
            msg = f"PROJ does not know the target CRS {target_crs!r}: {exc}"
            raise ConfigurationError(msg) from exc
        self.target_crs = target_crs
        # None marks a source that is the target up to axis order: with
        # always_xy the transform would be a no-op (OGC:CRS84 → EPSG:4326).
        self._transformers: dict[str, Transformer | None] = {}

    def transformer(self, source_crs: str) -> Transformer | None:
        """The cached transformer from ``source_crs`` (None when no transform is needed)."""
        if source_crs not in self._transformers:
            try:
                source = CRS.from_user_input(source_crs)
            except CRSError as exc:
                msg = f"PROJ does not know the batch CRS {source_crs!r}: {exc}"
                raise MessageError(msg) from exc
            same = source.equals(self._target, ignore_axis_order=True)
            self._transformers[source_crs] = (
                None if same else Transformer.from_crs(source, self._target, always_xy=True)
            )
        return self._transformers[source_crs]

    def __call__(self, batch: feature_pb2.FeatureBatch) -> StageResult:
        """``batch`` with every geometry in the target CRS; untransformable features rejected."""
        if not batch.crs:
            msg = f"batch {batch.sequence} of job {batch.job_id} names no CRS"
            raise MessageError(msg)
        transformer = self.transformer(batch.crs)
        if transformer is None:
            return StageResult(g.rebuild(batch, crs=self.target_crs))
        geometries, present = g.decode(batch)
        positions = np.flatnonzero(present)
        problems: dict[int, Problem] = {}
        result = geometries.copy()
        done = np.zeros(len(geometries), dtype=bool)
        subset = geometries[positions]
        has_z = shapely.has_z(subset)
        for include_z in (False, True):
            mask = has_z == include_z
            if not mask.any():
                continue
            where = positions[mask]
            transformed, bad = _transform(subset[mask], transformer, include_z)
            problems.update({int(where[k]): problem for k, problem in bad.items()})
            ok = np.ones(len(where), dtype=bool)
            ok[list(bad)] = False
            result[where[ok]] = transformed[ok]
            done[where[ok]] = True
        adjustments = self._revalidate(result, done, problems)
        written = np.flatnonzero(done)
        encoded = {
            int(p): bytes(w) for p, w in zip(written, g.encode(result[written]), strict=True)
        }
        out = g.rebuild(
            batch, drop=problems, geometry=encoded, adjustments=adjustments, crs=self.target_crs
        )
        return StageResult(out, g.rejection_batch(batch, STAGE, problems))

    def _revalidate(
        self, geometries: g.ObjectArray, live: g.BoolArray, problems: dict[int, Problem]
    ) -> dict[int, feature_pb2.Adjustment]:
        """Repair, in place, what the transformation made invalid; reject what cannot be.

        A geometry valid in degrees can self-intersect after projection when
        two of its vertices were a hair apart; the store must hold geometry
        valid in the CRS it is stored in.
        """
        positions = np.flatnonzero(live)
        invalid = positions[~shapely.is_valid(geometries[positions])]
        if not len(invalid):
            return {}
        reasons = shapely.is_valid_reason(geometries[invalid])
        repaired = repair(geometries[invalid])
        empty = shapely.is_empty(repaired)
        orient(repaired, ~empty)
        adjustments = {}
        for k, position in enumerate(invalid.tolist()):
            reason = f"{reasons[k]} after transformation into {self.target_crs}"
            if empty[k]:
                live[position] = False
                problems[position] = Problem(
                    R.REJECT_REASON_INVALID_TOPOLOGY,
                    f"{reason}; repairing it left nothing of its dimension",
                )
                continue
            geometries[position] = repaired[k]
            adjustments[position] = feature_pb2.Adjustment(
                kind=feature_pb2.ADJUSTMENT_KIND_REPAIRED, stage=STAGE, message=reason
            )
        return adjustments


def _transform(
    geometries: g.ObjectArray, transformer: Transformer, include_z: bool
) -> tuple[g.ObjectArray, dict[int, Problem]]:
    """The transformed geometries, and problems of those with non-finite results by position."""
    coords, owner = shapely.get_coordinates(geometries, include_z=include_z, return_index=True)
    if len(coords) == 0:
        return geometries, {}
    # One contiguous row per axis lets PROJ write its results in place.
    columns = np.ascontiguousarray(coords.T)
    try:
        if include_z:
            transformer.transform(columns[0], columns[1], columns[2], inplace=True, errcheck=False)
        else:
            transformer.transform(columns[0], columns[1], inplace=True, errcheck=False)
    except ProjError as exc:  # pragma: no cover - errcheck=False reports failures as inf
        msg = f"PROJ failed on a whole batch: {exc}"
        raise MessageError(msg) from exc
    # set_coordinates fills a copy of the array with new geometries (Shapely
    # geometries are immutable); the copy keeps the caller's array intact.
    transformed: g.ObjectArray = shapely.set_coordinates(geometries.copy(), columns.T)
    finite = np.isfinite(columns).all(axis=0)
    if finite.all():
        return transformed, {}
    owners, rows = g.first_rows(owner, ~finite)
    problems = {}
    for k, row in zip(owners.tolist(), rows.tolist(), strict=True):
        source = tuple(float(v) for v in coords[row])
        problems[k] = Problem(
            R.REJECT_REASON_PROJECTION_FAILED,
            f"the coordinate {list(source)} cannot be transformed into {transformer.target_crs}"
            " (PROJ gives no finite result: outside the projection's domain)",
            coordinate=source,
        )
    return transformed, problems
