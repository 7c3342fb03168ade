"""The wire format and the ack decision: pure functions, no broker."""

from __future__ import annotations

import aio_pika
import pytest

from geobus.broker import routing, wire
from geobus.broker.consumer import Disposition, disposition
from geobus.errors import DocumentError, MessageError, TransientError
from geobus.v1 import feature_pb2, job_pb2


def _encoded(payload: feature_pb2.FeatureBatch | job_pb2.JobSealed) -> aio_pika.Message:
    return wire.encode(
        payload, message_id="j:feature.ingested:0", correlation_id="j", stage="ingress"
    )


def test_encode_sets_the_envelope_properties() -> None:
    """encode sets content type, type name, ids, persistence and the geobus headers."""
    message = wire.encode(
        job_pb2.JobSealed(job_id="j"),
        message_id="j:job.sealed:0",
        correlation_id="j",
        stage="ingress",
        attempt=2,
        headers={"traceparent": "00-abc", "x-geobus-stage": "spoofed"},
    )
    assert message.content_type == "application/x-protobuf"
    assert message.type == "geobus.v1.JobSealed"
    assert message.message_id == "j:job.sealed:0"
    assert message.correlation_id == "j"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.timestamp is not None
    assert message.headers == {
        "traceparent": "00-abc",
        "x-geobus-schema": "geobus.v1",
        "x-geobus-stage": "ingress",
        "x-geobus-attempt": 2,
    }
    assert wire.attempt(message) == 2


def test_round_trip_keeps_the_message() -> None:
    """decode(encode(x)) == x for a batch with a feature."""
    batch = feature_pb2.FeatureBatch(
        job_id="j", sequence=4, features=[feature_pb2.Feature(index=3, properties=b"{}")]
    )
    assert wire.decode_message(_encoded(batch)) == batch


def test_serialized_payload_needs_a_known_type_name() -> None:
    """Bytes are encoded with the given type; without one, or with an unknown one, MessageError."""
    body = job_pb2.JobSealed(job_id="j").SerializeToString()
    message = wire.encode(
        body, message_id="m", correlation_id="j", stage="s", type_name="geobus.v1.JobSealed"
    )
    assert wire.decode_message(message) == job_pb2.JobSealed(job_id="j")
    with pytest.raises(MessageError, match="type_name"):
        wire.encode(body, message_id="m", correlation_id="j", stage="s")
    with pytest.raises(MessageError, match=r"not a geobus\.v1 message type"):
        wire.encode(body, message_id="m", correlation_id="j", stage="s", type_name="x.Y")


@pytest.mark.parametrize(
    ("body", "type_name", "content_type", "match"),
    [
        (b"", None, wire.CONTENT_TYPE, "no AMQP type"),
        (b"", "geobus.v2.FeatureBatch", wire.CONTENT_TYPE, "unknown message type"),
        (b"", "geobus.v1.FeatureBatch", "application/json", "content type"),
        (b"", "geobus.v1.FeatureBatch", None, "content type"),
        (b"\xff\xff\xff\xff", "geobus.v1.FeatureBatch", wire.CONTENT_TYPE, "not a valid"),
    ],
)
def test_decode_refuses_what_it_cannot_read(
    body: bytes, type_name: str | None, content_type: str | None, match: str
) -> None:
    """Missing/unknown type, other content type and garbage bytes raise MessageError."""
    with pytest.raises(MessageError, match=match):
        wire.decode(body, type_name, content_type=content_type)


def test_message_id_format() -> None:
    """Message ids are <job>:<routing key>:<sequence> as envelope.proto documents."""
    assert wire.message_id("abc", routing.FEATURE_VALIDATED, 12) == "abc:feature.validated:12"


def test_every_routing_key_carries_a_registered_type() -> None:
    """Each routing key's message type is decodable."""
    assert set(routing.MESSAGE_TYPES.values()) <= set(wire.MESSAGE_TYPES)
    assert len(routing.MESSAGE_TYPES) == 9


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (None, Disposition.ACK),
        (TransientError("db away"), Disposition.RETRY),
        (MessageError("garbage"), Disposition.DEAD_LETTER),
        (DocumentError("c", "m"), Disposition.DEAD_LETTER),
        (ZeroDivisionError(), Disposition.DEAD_LETTER),
    ],
)
def test_disposition(error: Exception | None, expected: Disposition) -> None:
    """Success acks, transient retries, permanent and unexpected errors dead-letter."""
    assert disposition(error) is expected
