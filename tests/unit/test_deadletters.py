"""What geobus dlq reads out of a dead letter, without a broker."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import shapely
from aio_pika import Message

from geobus.broker import wire
from geobus.codec.geojson import feature_texts
from geobus.deadletters import (
    error_class,
    exportable,
    feature_summaries,
    headline,
    jsonable,
    reason_of,
    show_document,
)
from geobus.v1 import feature_pb2

NAN_LINE = b"\x01\x02\x00\x00\x00\x02\x00\x00\x00" + (
    b"\x00" * 16 + b"\x00\x00\x00\x00\x00\x00\xf8\x7f" + b"\x00" * 8
)


def _batch() -> feature_pb2.FeatureBatch:
    bowtie = shapely.from_wkt("POLYGON ((0 0, 2 2, 2 0, 0 2, 0 0))")
    return feature_pb2.FeatureBatch(
        job_id="j",
        sequence=2,
        geometry_encoding=feature_pb2.GEOMETRY_ENCODING_ISO_WKB,
        features=[
            feature_pb2.Feature(
                index=0, geometry=shapely.to_wkb(bowtie), properties=b'{"a": 18446744073709551615}'
            ),
            feature_pb2.Feature(index=1, geometry=b"\x01\x99garbage", properties=b"{}"),
            feature_pb2.Feature(index=2, geometry=b"", properties=b""),
            feature_pb2.Feature(index=3, geometry=NAN_LINE, properties=b"[1, 2]"),
        ],
    )


def _dead(headers: dict[str, object]) -> Message:
    return Message(
        _batch().SerializeToString(),
        content_type=wire.CONTENT_TYPE,
        type="geobus.v1.FeatureBatch",
        message_id="j:feature.ingested:2",
        correlation_id="j",
        headers=headers,
    )


def test_reason_prefers_geobus_then_the_latest_death() -> None:
    """x-geobus-reason wins; else x-death[0] (most recent); else unknown."""
    deaths = [{"reason": "delivery_limit"}, {"reason": "rejected"}]
    assert reason_of({"x-geobus-reason": "error", "x-death": deaths}) == "error"
    assert reason_of({"x-death": deaths}) == "delivery_limit"
    assert reason_of({}) == "unknown"
    assert error_class("MessageError: x: y") == "MessageError"
    assert error_class("") == "-"
    assert error_class("not an error class: x") == "-"


def test_feature_summaries_name_the_problem_per_feature() -> None:
    """Self-intersection point, undecodable WKB, null geometry, NaN coordinate: each reported."""
    bowtie, garbage, null, nan_line = feature_summaries(_batch())
    assert bowtie["geometry"]["type"] == "Polygon"
    assert bowtie["geometry"]["vertices"] == 5
    assert bowtie["geometry"]["bbox"] == [0.0, 0.0, 2.0, 2.0]
    assert bowtie["geometry"]["offending_coordinate"] == [1.0, 1.0]
    assert garbage["geometry"] == {"problem": "undecodable", "wkb_bytes": 9}
    assert null["geometry"] is None
    assert nan_line["geometry"]["type"] == "LineString"
    assert nan_line["geometry"]["offending_coordinate"] == ["nan", 0.0]


def test_show_document_is_json_with_the_envelope() -> None:
    """show: JSON-serialisable, the Envelope fields from headers, deaths as ISO times."""
    when = datetime(2026, 1, 1, tzinfo=UTC)
    message = _dead(
        {
            wire.HEADER_EXCEPTION: "PermanentError: boom",
            wire.HEADER_ATTEMPT: 1,
            wire.HEADER_STAGE: "ingress",
            "x-death": [{"reason": "rejected", "time": when, "routing-keys": [b"k"]}],
        }
    )
    document = show_document(message, "validator")
    json.dumps(document)
    assert document["envelope"]["exception"] == "PermanentError: boom"
    assert document["envelope"]["replays"] == 0
    assert document["deaths"] == [
        {"reason": "rejected", "time": "2026-01-01T00:00:00+00:00", "routing-keys": ["k"]}
    ]
    assert document["reason"] == "rejected"
    assert document["payload"]["features"] == 4
    assert len(document["features"]) == 4
    assert jsonable({"b": b"\xff"}) == {"b": "\ufffd"}


def test_export_puts_the_error_in_the_properties_and_keeps_values_exact() -> None:
    """Exported features: geobus_* members first, uint64 kept, bad WKB as null geometry."""
    message = _dead({wire.HEADER_EXCEPTION: "PermanentError: boom", "x-geobus-reason": "error"})
    batch = exportable(_batch(), headline(message, "validator"))
    texts = [json.loads(t) for t in feature_texts(batch)]
    first = texts[0]["properties"]
    assert first["geobus_error"] == "PermanentError: boom"
    assert first["geobus_stage"] == "validator"
    assert first["a"] == 18446744073709551615
    assert texts[1]["geometry"] is None
    assert set(texts[1]["properties"]) == {
        "geobus_stage",
        "geobus_reason",
        "geobus_error",
        "geobus_message_id",
        "geobus_job_id",
    }
    assert texts[2]["properties"]["geobus_reason"] == "error"
    assert texts[3]["properties"]["properties"] == [1, 2]
    assert texts[3]["geometry"] is None  # GeoJSON cannot hold its NaN coordinate
