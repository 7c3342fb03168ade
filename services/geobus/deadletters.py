"""What a dead letter says, for people: reason, error, envelope, features. Pure: no I/O.

:mod:`geobus.dlq` fetches dead letters from the broker; this module turns
one AMQP message into what ``geobus dlq ls/show/export`` print: why it died
(``x-geobus-reason`` when geobus dead-lettered it, else the broker's most
recent ``x-death`` reason: ``rejected``, ``delivery_limit``, ``expired``…),
the error class from ``x-exception``, the ``geobus.v1.Envelope`` of its
properties and headers, and for a ``FeatureBatch`` a geometry summary per
feature computed with vectorised Shapely calls (type, vertex count, bbox,
GEOS's validity reason and the offending coordinate where GEOS names one).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import numpy as np
import shapely
from aio_pika.abc import AbstractMessage
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message as ProtoMessage

from geobus.broker import wire
from geobus.broker.redelivery import HEADER_REASON, header_int, header_text
from geobus.errors import MessageError
from geobus.v1 import envelope_pb2, feature_pb2

_TYPE_NAMES = (
    "Point",
    "LineString",
    "LinearRing",
    "Polygon",
    "MultiPoint",
    "MultiLineString",
    "MultiPolygon",
    "GeometryCollection",
)
# GEOS's validity reasons end with the coordinate they are about: "Self-intersection[3 4]".
_REASON_POINT = re.compile(r"\[(-?[\d.eE+-]+|nan|inf) (-?[\d.eE+-]+|nan|inf)(?: [^\]]*)?\]$")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """The headline of one dead letter (what ``geobus dlq ls`` groups by)."""

    stage: str
    message_id: str
    type: str
    job_id: str
    reason: str
    error_class: str
    exception: str
    attempt: int
    replays: int


def reason_of(headers: Mapping[str, Any] | None) -> str:
    """Why the message died: geobus's own reason, else the broker's latest x-death reason."""
    reason = header_text(headers, HEADER_REASON)
    if reason:
        return reason
    deaths = (headers or {}).get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], Mapping):
        # x-death lists the most recent death first.
        return header_text(deaths[0], "reason") or "unknown"
    return "unknown"


def error_class(exception: str) -> str:
    """``"MessageError"`` of ``"MessageError: …"``; ``"-"`` when there is no error text."""
    name, sep, _ = exception.partition(": ")
    return name if sep and name.isidentifier() else "-"


def headline(message: AbstractMessage, stage: str) -> DeadLetter:
    """The headline of ``message``, a dead letter of ``stage``."""
    headers = message.headers or {}
    exception = header_text(headers, wire.HEADER_EXCEPTION) or ""
    return DeadLetter(
        stage=stage,
        message_id=message.message_id or "",
        type=message.type or "",
        job_id=message.correlation_id or "",
        reason=reason_of(headers),
        error_class=error_class(exception),
        exception=exception,
        attempt=header_int(headers, wire.HEADER_ATTEMPT),
        replays=header_int(headers, wire.HEADER_REPLAYS),
    )


def envelope(message: AbstractMessage) -> envelope_pb2.Envelope:
    """The ``geobus.v1.Envelope`` of ``message``'s properties and headers."""
    headers = message.headers or {}
    return envelope_pb2.Envelope(
        content_type=message.content_type or "",
        type=message.type or "",
        message_id=message.message_id or "",
        correlation_id=message.correlation_id or "",
        schema=header_text(headers, wire.HEADER_SCHEMA) or "",
        stage=header_text(headers, wire.HEADER_STAGE) or "",
        attempt=header_int(headers, wire.HEADER_ATTEMPT),
        replays=header_int(headers, wire.HEADER_REPLAYS),
        exception=header_text(headers, wire.HEADER_EXCEPTION) or "",
        original_exchange=header_text(headers, wire.HEADER_ORIGINAL_EXCHANGE) or "",
        original_routing_key=header_text(headers, wire.HEADER_ORIGINAL_ROUTING_KEY) or "",
        traceparent=header_text(headers, wire.HEADER_TRACEPARENT) or "",
    )


def jsonable(value: Any) -> Any:
    """An AMQP table value as JSON can hold it (datetimes as ISO 8601, bytes as text)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def payload_of(message: AbstractMessage) -> tuple[ProtoMessage | None, str | None]:
    """The decoded Protobuf body, or None and why it does not decode."""
    try:
        return wire.decode_message(message), None
    except MessageError as exc:
        return None, str(exc)


def feature_summaries(batch: feature_pb2.FeatureBatch) -> list[dict[str, Any]]:
    """Per feature: index, id, geometry type, vertex count, bbox, validity, offending coordinate.

    Geometries are read as WKB whatever the batch's declared encoding (a
    batch dead-lettered for its encoding is still worth looking at); one that
    does not parse is reported as ``undecodable``.
    """
    count = len(batch.features)
    blobs = np.empty(count, dtype=object)
    blobs[:] = [f.geometry or None for f in batch.features]
    present = np.array([f.geometry != b"" for f in batch.features], dtype=bool)
    # A NaN coordinate is what we are looking for here, not a reason to warn.
    with np.errstate(invalid="ignore"):
        geoms = shapely.from_wkb(blobs, on_invalid="ignore")
        types = shapely.get_type_id(geoms)
        vertices = shapely.get_num_coordinates(geoms)
        bounds = shapely.bounds(geoms)
        reasons = np.full(count, None, dtype=object)
        parsed = ~shapely.is_missing(geoms)
        if parsed.any():
            reasons[parsed] = shapely.is_valid_reason(geoms[parsed])
        bad_coordinate = _first_non_finite(geoms)
    out = []
    for i, feature in enumerate(batch.features):
        entry: dict[str, Any] = {"index": feature.index}
        if feature.HasField("id"):
            entry["id"] = MessageToDict(feature.id)
        if not present[i]:
            entry["geometry"] = None
        elif not parsed[i]:
            entry["geometry"] = {"problem": "undecodable", "wkb_bytes": len(feature.geometry)}
        else:
            summary: dict[str, Any] = {
                "type": _TYPE_NAMES[int(types[i])],
                "vertices": int(vertices[i]),
                "bbox": [float(b) for b in bounds[i]] if np.isfinite(bounds[i]).all() else None,
                "validity": reasons[i],
            }
            point = bad_coordinate.get(i) or _reason_point(reasons[i])
            if point is not None:
                summary["offending_coordinate"] = point
            entry["geometry"] = summary
        out.append(entry)
    return out


def batch_header(batch: feature_pb2.FeatureBatch) -> dict[str, Any]:
    """A FeatureBatch's fields except its features."""
    return {
        "job_id": batch.job_id,
        "sequence": batch.sequence,
        "collection": batch.collection,
        "crs": batch.crs,
        "geometry_encoding": feature_pb2.GeometryEncoding.Name(batch.geometry_encoding),
        "features": len(batch.features),
    }


def show_document(message: AbstractMessage, stage: str) -> dict[str, Any]:
    """Everything ``geobus dlq show`` prints about one dead letter, JSON-ready."""
    head = headline(message, stage)
    headers = message.headers or {}
    payload, problem = payload_of(message)
    document: dict[str, Any] = {
        "stage": stage,
        "message_id": head.message_id,
        "job_id": head.job_id,
        "reason": head.reason,
        "error": head.exception or None,
        "error_class": head.error_class,
        "attempt": head.attempt,
        "replays": head.replays,
        "envelope": MessageToDict(
            envelope(message),
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        ),
        "headers": jsonable(dict(headers)),
        "deaths": jsonable(headers.get("x-death") or []),
        "body_bytes": len(message.body),
    }
    if payload is None:
        document["payload"] = None
        document["payload_error"] = problem
    elif isinstance(payload, feature_pb2.FeatureBatch):
        document["payload"] = batch_header(payload)
        document["features"] = feature_summaries(payload)
    else:
        document["payload"] = MessageToDict(payload, preserving_proto_field_name=True)
    return document


def exportable(batch: feature_pb2.FeatureBatch, dead: DeadLetter) -> feature_pb2.FeatureBatch:
    """A copy of ``batch`` ready for :mod:`geobus.codec.geojson`: error in the properties.

    Each feature's properties gain ``geobus_*`` members (stage, reason,
    error, message and job id); a geometry that does not parse as WKB
    becomes null (the error says why).
    """
    out = feature_pb2.FeatureBatch()
    out.CopyFrom(batch)
    out.geometry_encoding = feature_pb2.GEOMETRY_ENCODING_ISO_WKB
    blobs = np.empty(len(out.features), dtype=object)
    blobs[:] = [f.geometry or None for f in out.features]
    with np.errstate(invalid="ignore"):
        parsed = shapely.from_wkb(blobs, on_invalid="ignore")
        non_finite = list(_first_non_finite(parsed))
    # Null instead of what GeoJSON cannot hold (the error says why).
    undecodable = shapely.is_missing(parsed) & np.array(
        [f.geometry != b"" for f in out.features], dtype=bool
    )
    undecodable[non_finite] = True
    extra = {
        "geobus_stage": dead.stage,
        "geobus_reason": dead.reason,
        "geobus_error": dead.exception or None,
        "geobus_message_id": dead.message_id,
        "geobus_job_id": dead.job_id,
    }
    for i, feature in enumerate(out.features):
        if undecodable[i]:
            feature.geometry = b""
        feature.properties = _with_members(feature.properties, extra)
    return out


def _with_members(properties: bytes, extra: Mapping[str, Any]) -> bytes:
    """``properties`` (a JSON object's text) with ``extra`` members in front."""
    head = msgspec.json.encode(dict(extra))
    try:
        value = msgspec.json.decode(properties) if properties else None
    except msgspec.DecodeError:
        value = properties.decode(errors="replace")
    if isinstance(value, dict):
        if not value:
            return head
        # Spliced as text: the original members keep their exact bytes
        # (int64 beyond 2**53, number formatting).
        return head[:-1] + b"," + properties.lstrip()[1:]
    if value is None:
        return head
    return head[:-1] + b',"properties":' + msgspec.json.encode(value) + b"}"


def _first_non_finite(geoms: np.ndarray[Any, Any]) -> dict[int, list[float | str]]:
    """For each geometry holding a NaN or infinite coordinate: the first such coordinate."""
    # x and y only: GEOS reports a missing Z as NaN.
    coords, owner = shapely.get_coordinates(geoms, return_index=True)
    bad = ~np.isfinite(coords).all(axis=1)
    if not bad.any():
        return {}
    owners, first = np.unique(owner[bad], return_index=True)
    rows = coords[bad][first]
    # As text where not finite: JSON has no NaN or Infinity.
    return {
        int(o): [float(v) if np.isfinite(v) else str(v) for v in row]
        for o, row in zip(owners, rows, strict=True)
    }


def _reason_point(reason: object) -> list[float | str] | None:
    if not isinstance(reason, str):
        return None
    match = _REASON_POINT.search(reason)
    if match is None:
        return None
    try:
        return [float(match.group(1)), float(match.group(2))]
    except ValueError:
        return None
