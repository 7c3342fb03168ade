"""Turn raw features into ``geobus.v1.FeatureBatch`` messages.

Features are collected until a batch holds ``max_features`` features or
``max_bytes`` of input text; then the whole batch of geometries is parsed in
one vectorised :func:`shapely.from_geojson` call (C, no Python floats),
checked with vectorised rules, and written as ISO WKB in one
:func:`shapely.to_wkb` call. Only features that fail get the slow,
explaining check of :mod:`geobus.codec.structure`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import shapely

from geobus.codec.features import EXPLAIN_BYTES, ParsedFeature, parse_feature
from geobus.codec.limits import (
    DEFAULT_LIMITS,
    NUMBER_CHARS,
    DocumentLimits,
    out_of_range_number,
)
from geobus.codec.scanner import RawItem
from geobus.codec.structure import check_geometry_text
from geobus.problems import Problem, R
from geobus.settings import Settings
from geobus.v1 import feature_pb2, rejection_pb2

STAGE = "ingress"
# Room left in a message for the batch envelope and the AMQP headers.
_ENVELOPE_BYTES = 64 * 1024
_COLLECTION_TYPES = (4, 5, 6, 7)  # Multi* and GeometryCollection
_POLYGON = 3


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """When a batch is cut, and how large one feature may be."""

    # 5000 rather than 2000: 100k points end to end 2.61-2.70 -> 2.37-2.39 s
    # (fewer messages through three stages, RabbitMQ and COPY); documents of
    # larger features are cut by bytes first, and were unchanged.
    max_features: int = 5000
    max_bytes: int = 4 * 1024 * 1024
    max_message_bytes: int = 16 * 1024 * 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> BatchLimits:
        """The limits configured by ``GEOBUS_BATCH_*`` and ``GEOBUS_MAX_MESSAGE_BYTES``."""
        return cls(
            max_features=settings.batch_max_features,
            max_bytes=settings.batch_max_bytes,
            max_message_bytes=settings.max_message_bytes,
        )


@dataclass(frozen=True, slots=True)
class BatchContext:
    """What every batch of one job carries besides its features."""

    job_id: str
    collection: str = "features"
    crs: str = "OGC:CRS84"
    source: feature_pb2.Source = field(default_factory=feature_pb2.Source)
    # Decimal digits the job asked coordinates to be snapped to (None: the
    # deployment's GEOBUS_PRECISION applies downstream).
    precision: int | None = None


@dataclass(slots=True)
class Output:
    """One cut of the document: the batch of good features (None when every
    feature of the cut was rejected) and the rejections (None when there were
    none), both under the same sequence number."""

    sequence: int
    batch: feature_pb2.FeatureBatch | None
    rejections: rejection_pb2.RejectionBatch | None


@dataclass(slots=True)
class Totals:
    """Counts of a conversion so far."""

    features: int = 0
    batches: int = 0
    rejected: int = 0


class BatchBuilder:
    """Accumulates raw features and emits batches; call :meth:`flush` at the end."""

    def __init__(
        self,
        context: BatchContext,
        limits: BatchLimits,
        document: DocumentLimits = DEFAULT_LIMITS,
    ) -> None:
        self.context = context
        self.limits = limits
        self.document = document
        self.totals = Totals()
        self._pending: list[ParsedFeature] = []
        self._problems: list[tuple[int, Problem, feature_pb2.FeatureId | None]] = []
        self._pending_bytes = 0
        self._sequence = 0

    def add(self, item: RawItem) -> Iterator[Output]:
        """Take one raw feature; yield a batch when one is full."""
        self.totals.features += 1
        parsed: ParsedFeature | Problem
        if item.skipped:
            parsed = Problem(
                R.REJECT_REASON_FEATURE_TOO_LARGE,
                f"the feature's JSON text is {item.skipped} bytes, more than"
                f" {self.document.max_feature_bytes} (GEOBUS_MAX_FEATURE_BYTES); it was skipped"
                " unread",
            )
        else:
            parsed = parse_feature(item.index, item.text, self.document)
        if isinstance(parsed, Problem):
            self._problems.append((item.index, parsed, None))
        else:
            self._pending.append(parsed)
            self._pending_bytes += len(parsed.geometry) + len(parsed.properties)
        if (
            len(self._pending) >= self.limits.max_features
            or self._pending_bytes >= self.limits.max_bytes
            or len(self._problems) >= self.limits.max_features
        ):
            yield from self.flush()

    def flush(self) -> Iterator[Output]:
        """Emit what has been collected, if anything."""
        if not self._pending and not self._problems:
            return
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        encoded = self._encode(pending)
        problems, self._problems = self._problems, []
        problems.extend(encoded.problems)
        problems.sort(key=lambda p: p[0])
        rejections = self._rejections(problems) if problems else None
        self.totals.rejected += len(problems)
        groups = self._split(encoded.features)
        for n, features in enumerate(groups or [[]]):
            batch = None
            if features:
                batch = self._batch(features)
                self.totals.batches += 1
            yield Output(
                sequence=self._sequence,
                batch=batch,
                rejections=rejections if n == 0 else None,
            )
            self._sequence += 1

    # -- internals ---------------------------------------------------------

    def _encode(self, pending: list[ParsedFeature]) -> _Encoded:
        out = _Encoded()
        if not pending:
            return out
        has_geometry = np.fromiter((bool(p.geometry) for p in pending), bool, len(pending))
        texts = np.array([p.geometry for p in pending if p.geometry], dtype=object)
        wkb = np.full(len(pending), b"", dtype=object)
        bad = np.zeros(len(pending), dtype=bool)
        if len(texts):
            geometries = _parse(texts)
            where = np.flatnonzero(has_geometry)
            failed = shapely.is_missing(geometries) | _suspect(geometries)
            bad[where[failed]] = True
            good = ~failed
            wkb[where[good]] = shapely.to_wkb(
                geometries[good], output_dimension=3, flavor="iso", byte_order=1
            )
        limit = self.limits.max_message_bytes - _ENVELOPE_BYTES
        for i, feature in enumerate(pending):
            if bad[i]:
                out.problems.append((feature.index, _explain(feature.geometry), feature.id))
                continue
            size = len(wkb[i]) + len(feature.properties)
            if size > limit:
                problem = Problem(
                    R.REJECT_REASON_FEATURE_TOO_LARGE,
                    f"the feature takes {size} bytes encoded, more than the largest message"
                    f" ({limit} bytes; GEOBUS_MAX_MESSAGE_BYTES)",
                )
                out.problems.append((feature.index, problem, feature.id))
                continue
            out.features.append((feature, wkb[i]))
        return out

    def _split(
        self, features: list[tuple[ParsedFeature, bytes]]
    ) -> list[list[tuple[ParsedFeature, bytes]]]:
        """Cut encoded features into groups whose messages fit the size limit."""
        groups: list[list[tuple[ParsedFeature, bytes]]] = []
        current: list[tuple[ParsedFeature, bytes]] = []
        size = 0
        budget = self.limits.max_message_bytes - _ENVELOPE_BYTES
        for feature, wkb in features:
            # 16 bytes per feature cover its field tags and length prefixes.
            cost = len(wkb) + len(feature.properties) + 16 + 8 * len(feature.bbox)
            if current and size + cost > budget:
                groups.append(current)
                current, size = [], 0
            current.append((feature, wkb))
            size += cost
        if current:
            groups.append(current)
        return groups

    def _batch(self, features: list[tuple[ParsedFeature, bytes]]) -> feature_pb2.FeatureBatch:
        ctx = self.context
        batch = feature_pb2.FeatureBatch(
            job_id=ctx.job_id,
            sequence=self._sequence,
            source=ctx.source,
            crs=ctx.crs,
            geometry_encoding=feature_pb2.GEOMETRY_ENCODING_ISO_WKB,
            collection=ctx.collection,
            precision=ctx.precision,
        )
        add = batch.features.add
        for feature, wkb in features:
            message = add(index=feature.index, geometry=wkb, properties=feature.properties)
            if feature.id is not None:
                message.id.CopyFrom(feature.id)
            if feature.bbox:
                message.bbox.extend(feature.bbox)
        return batch

    def _rejections(
        self, problems: list[tuple[int, Problem, feature_pb2.FeatureId | None]]
    ) -> rejection_pb2.RejectionBatch:
        job_id = self.context.job_id
        return rejection_pb2.RejectionBatch(
            job_id=job_id,
            sequence=self._sequence,
            stage=STAGE,
            rejections=[
                problem.to_rejection(job_id=job_id, index=index, stage=STAGE, feature_id=fid)
                for index, problem, fid in problems
            ],
        )


@dataclass(slots=True)
class _Encoded:
    features: list[tuple[ParsedFeature, bytes]] = field(default_factory=list)
    problems: list[tuple[int, Problem, feature_pb2.FeatureId | None]] = field(default_factory=list)


def _parse(texts: npt.NDArray[np.object_]) -> npt.NDArray[np.object_]:
    with warnings.catch_warnings():
        # GEOS reports numbers like 1e400 as an overflow warning besides
        # failing the geometry; the failure is explained per feature.
        warnings.simplefilter("ignore", RuntimeWarning)
        result: npt.NDArray[np.object_] = shapely.from_geojson(texts, on_invalid="ignore")
    return result


def _suspect(geometries: npt.NDArray[np.object_]) -> npt.NDArray[np.bool_]:
    """Geometries GEOS read but RFC 7946 refuses: short rings, mixed 2-D/3-D."""
    n = len(geometries)
    flagged = np.zeros(n, dtype=bool)
    present = np.flatnonzero(~shapely.is_missing(geometries))
    if not len(present):
        return flagged
    geoms = geometries[present]
    # Rings: GEOS accepts a closed ring of three positions; RFC 7946 needs four.
    parts, owner = shapely.get_parts(geoms, return_index=True)
    types = shapely.get_type_id(parts)
    while np.isin(types, _COLLECTION_TYPES).any():
        nested = np.isin(types, _COLLECTION_TYPES)
        sub, sub_owner = shapely.get_parts(parts[nested], return_index=True)
        parts = np.concatenate([parts[~nested], sub])
        owner = np.concatenate([owner[~nested], owner[nested][sub_owner]])
        types = shapely.get_type_id(parts)
    polygons = types == _POLYGON
    if polygons.any():
        rings, ring_owner = shapely.get_rings(parts[polygons], return_index=True)
        short = shapely.get_num_coordinates(rings) < 4
        flagged[present[owner[polygons][ring_owner[short]]]] = True
    # Mixed dimensions: GEOS fills a missing z with NaN.
    with_z = np.flatnonzero(shapely.has_z(geoms))
    if len(with_z):
        coords, coord_owner = shapely.get_coordinates(
            geoms[with_z], include_z=True, return_index=True
        )
        nan_z = np.isnan(coords[:, 2]) & ~np.isnan(coords[:, 0])
        flagged[present[with_z[coord_owner[nan_z]]]] = True
    return flagged


def _explain(text: bytes) -> Problem:
    """The reason a geometry failed the fast path, with its location."""
    # A coordinate no double holds (a 10^6-digit integer) is named as such,
    # before the explanation below would choke on it.
    bad = out_of_range_number(text, DEFAULT_LIMITS)
    if bad is not None and len(bad[0]) > NUMBER_CHARS:
        literal, reason = bad
        shown = literal[:40].decode("ascii", "replace")
        return Problem(
            R.REJECT_REASON_NON_FINITE_COORDINATE,
            f"the number {shown}… is not a finite double: {reason}",
            "/geometry",
        )
    # Explaining decodes the geometry into Python objects: not for a huge one.
    problem = None if len(text) > EXPLAIN_BYTES else check_geometry_text(text)
    if problem is not None:
        return problem
    # The structure is fine by RFC 7946 yet GEOS refused it: report GEOS's words.
    try:
        shapely.from_geojson(text)
    except shapely.errors.GEOSException as exc:
        message = str(exc)
    else:
        message = "the geometry could not be read"
    return Problem(R.REJECT_REASON_INVALID_COORDINATES, message, "/geometry")
