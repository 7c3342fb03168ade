"""How a geobus Protobuf message travels as an AMQP message, both ways. Pure: no I/O.

The properties and headers follow ``proto/geobus/v1/envelope.proto``: the
body is the serialized Protobuf message, ``type`` names it, ``message_id`` is
stable across re-publication (consumers deduplicate on it) and
``correlation_id`` is the job id.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from aio_pika import DeliveryMode, Message
from aio_pika.abc import AbstractMessage
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage

from geobus.errors import MessageError
from geobus.v1 import envelope_pb2, feature_pb2, job_pb2, rejection_pb2

CONTENT_TYPE = "application/x-protobuf"
SCHEMA = "geobus.v1"

HEADER_SCHEMA = "x-geobus-schema"
HEADER_STAGE = "x-geobus-stage"
HEADER_ATTEMPT = "x-geobus-attempt"
HEADER_REPLAYS = "x-geobus-replays"
HEADER_EXCEPTION = "x-exception"
HEADER_ORIGINAL_EXCHANGE = "x-original-exchange"
HEADER_ORIGINAL_ROUTING_KEY = "x-original-routing-key"
HEADER_TRACEPARENT = "traceparent"


def _registry() -> Mapping[str, type[ProtoMessage]]:
    # Built from the generated descriptors, so a message added to the contract
    # is decodable without touching this module.
    types: dict[str, type[ProtoMessage]] = {}
    for module in (feature_pb2, rejection_pb2, job_pb2, envelope_pb2):
        for name, descriptor in module.DESCRIPTOR.message_types_by_name.items():
            types[descriptor.full_name] = getattr(module, name)
    return MappingProxyType(types)


MESSAGE_TYPES: Mapping[str, type[ProtoMessage]] = _registry()
"""Fully qualified name → generated class, for every message of ``geobus.v1``."""


def message_id(job_id: str, routing_key: str, sequence: int) -> str:
    """The stable message id ``<job id>:<routing key>:<sequence>``."""
    return f"{job_id}:{routing_key}:{sequence}"


def encode(
    payload: ProtoMessage | bytes,
    *,
    message_id: str,
    correlation_id: str,
    stage: str,
    type_name: str | None = None,
    attempt: int = 0,
    headers: Mapping[str, Any] | None = None,
) -> Message:
    """The persistent AMQP message carrying ``payload``.

    ``payload`` may be already serialized (the ingress serializes off the
    event loop); ``type_name`` must then name its message type. ``attempt``
    counts how often geobus has already tried to process the message (0 for a
    new one). The geobus headers win over equally named ``headers``.
    """
    if isinstance(payload, ProtoMessage):
        name = payload.DESCRIPTOR.full_name
        if type_name is not None and type_name != name:
            msg = f"type_name {type_name!r} does not match the payload's type {name!r}"
            raise MessageError(msg)
        body = payload.SerializeToString()
    else:
        if type_name is None:
            msg = "a serialized payload needs its type_name"
            raise MessageError(msg)
        name, body = type_name, bytes(payload)
    if name not in MESSAGE_TYPES:
        msg = f"{name!r} is not a {SCHEMA} message type"
        raise MessageError(msg)
    table: dict[str, Any] = dict(headers or {})
    table[HEADER_SCHEMA] = SCHEMA
    table[HEADER_STAGE] = stage
    table[HEADER_ATTEMPT] = attempt
    return Message(
        body,
        content_type=CONTENT_TYPE,
        type=name,
        message_id=message_id,
        correlation_id=correlation_id,
        # Without it the broker keeps the message in memory only.
        delivery_mode=DeliveryMode.PERSISTENT,
        timestamp=datetime.now(UTC),
        headers=table,
    )


def decode(
    body: bytes, type_name: str | None, *, content_type: str | None = CONTENT_TYPE
) -> ProtoMessage:
    """The Protobuf message in ``body``, of the type named ``type_name``.

    Raises MessageError for a missing or unknown type, another content type,
    or bytes that do not parse as that type.
    """
    if content_type != CONTENT_TYPE:
        msg = f"content type {content_type!r} is not {CONTENT_TYPE!r}"
        raise MessageError(msg)
    if not type_name:
        msg = "the message has no AMQP type property naming its Protobuf type"
        raise MessageError(msg)
    cls = MESSAGE_TYPES.get(type_name)
    if cls is None:
        msg = f"unknown message type {type_name!r} (not a {SCHEMA} message)"
        raise MessageError(msg)
    payload = cls()
    try:
        payload.ParseFromString(body)
    except DecodeError as exc:
        msg = f"the body ({len(body)} bytes) is not a valid {type_name}: {exc}"
        raise MessageError(msg) from exc
    return payload


def decode_message(message: AbstractMessage) -> ProtoMessage:
    """:func:`decode` applied to an AMQP message's body and properties."""
    return decode(message.body, message.type, content_type=message.content_type)


def attempt(message: AbstractMessage) -> int:
    """The ``x-geobus-attempt`` header of ``message`` (0 when absent or malformed)."""
    value = (message.headers or {}).get(HEADER_ATTEMPT)
    return value if isinstance(value, int) and value >= 0 else 0
