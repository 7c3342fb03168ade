"""The ack / retry / dead-letter decision and the copies it publishes, without a broker."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from aio_pika import DeliveryMode, IncomingMessage, Message
from aiormq.abc import DeliveredMessage
from pamqp import commands, header
from pamqp.common import FieldTable

from geobus.broker import wire
from geobus.broker.redelivery import (
    MAX_EXCEPTION_BYTES,
    REASON_ERROR,
    Disposition,
    dead_letter_copy,
    disposition,
    exception_text,
    original_destination,
    replay_copy,
    retry_copy,
)
from geobus.broker.topology import topology
from geobus.errors import ConfigurationError, MessageError, PermanentError, TransientError
from geobus.settings import Settings

SPEC = topology("acme", retry_delays=(1.0, 5.0, 30.0))


def incoming(
    headers: dict[str, Any] | None = None,
    *,
    exchange: str = "acme.features",
    routing_key: str = "feature.ingested",
    expiration: str | None = None,
) -> IncomingMessage:
    """A delivered message as aio-pika hands it to a consumer."""
    properties = commands.Basic.Properties(
        content_type=wire.CONTENT_TYPE,
        headers=FieldTable(headers or {}),
        delivery_mode=2,
        correlation_id="job-1",
        message_id="job-1:feature.ingested:3",
        timestamp=datetime(2026, 1, 2, tzinfo=UTC),
        message_type="geobus.v1.FeatureBatch",
        expiration=expiration,
        user_id="guest",
    )
    delivered = DeliveredMessage(
        delivery=commands.Basic.Deliver(
            consumer_tag="c", delivery_tag=1, exchange=exchange, routing_key=routing_key
        ),
        header=header.ContentHeader(body_size=4, properties=properties),
        body=b"body",
        channel=None,  # type: ignore[arg-type]
    )
    return IncomingMessage(delivered)


def test_disposition_per_outcome() -> None:
    """Success acks; permanent and unexpected errors dead-letter; transient ones retry."""
    assert disposition(None) is Disposition.ACK
    assert disposition(MessageError("x")) is Disposition.DEAD_LETTER
    assert disposition(PermanentError("x")) is Disposition.DEAD_LETTER
    assert disposition(KeyError("bug")) is Disposition.DEAD_LETTER
    assert disposition(TransientError("db away")) is Disposition.RETRY


def test_transient_error_dead_letters_on_the_last_attempt() -> None:
    """With max_attempts 3, attempts 1 and 2 retry and the 3rd failure dead-letters."""
    error = TransientError("db away")
    assert disposition(error, attempt=0, max_attempts=3) is Disposition.RETRY
    assert disposition(error, attempt=1, max_attempts=3) is Disposition.RETRY
    assert disposition(error, attempt=2, max_attempts=3) is Disposition.DEAD_LETTER
    assert disposition(error, attempt=0, max_attempts=1) is Disposition.DEAD_LETTER


def test_retry_copy_goes_to_the_next_level_with_jitter() -> None:
    """Attempt n+1 goes to retry.<stage>.<n+1>, expiring within (1 - jitter) .. 1 of its delay."""
    first = retry_copy(
        incoming(), TransientError("db away"), stage="writer", topology=SPEC, uniform=lambda: 1.0
    )
    exchange, key, copy = first
    assert (exchange, key) == ("acme.retry.writer", "acme.retry.writer.1")
    assert copy.expiration == pytest.approx(0.8)
    assert copy.headers[wire.HEADER_ATTEMPT] == 1
    assert copy.headers[wire.HEADER_EXCEPTION] == "TransientError: db away"
    # Where it first came from survives: the retry arrives via the default exchange.
    assert copy.headers[wire.HEADER_ORIGINAL_EXCHANGE] == "acme.features"
    assert copy.headers[wire.HEADER_ORIGINAL_ROUTING_KEY] == "feature.ingested"
    assert copy.body == b"body"
    assert copy.message_id == "job-1:feature.ingested:3"
    assert copy.correlation_id == "job-1"
    assert copy.type == "geobus.v1.FeatureBatch"
    assert copy.delivery_mode is DeliveryMode.PERSISTENT
    assert copy.user_id is None

    again = incoming(
        {
            wire.HEADER_ATTEMPT: 4,
            wire.HEADER_ORIGINAL_EXCHANGE: "acme.features",
            wire.HEADER_ORIGINAL_ROUTING_KEY: "feature.ingested",
            "x-delivery-count": 2,
        },
        exchange="",
        routing_key="acme.writer",
    )
    _, key, copy = retry_copy(
        again, TransientError("x"), stage="writer", topology=SPEC, uniform=lambda: 0.0
    )
    # Past the last level, the last level repeats; no jitter drawn → the full delay.
    assert key == "acme.retry.writer.3"
    assert copy.expiration == pytest.approx(30.0)
    assert copy.headers[wire.HEADER_ATTEMPT] == 5
    assert copy.headers[wire.HEADER_ORIGINAL_EXCHANGE] == "acme.features"
    assert "x-delivery-count" not in copy.headers


def test_dead_letter_copy_carries_the_error_and_never_expires() -> None:
    """The DLQ copy: DLX + dlq.<stage>, x-exception, reason, attempts made, no expiration."""
    message = incoming({wire.HEADER_STAGE: "ingress", wire.HEADER_ATTEMPT: 2}, expiration="500")
    exchange, key, copy = dead_letter_copy(
        message,
        MessageError("unknown message type 'x'"),
        stage="validator",
        topology=SPEC,
        reason=REASON_ERROR,
    )
    assert (exchange, key) == ("acme.dlx", "dlq.validator")
    assert copy.headers[wire.HEADER_EXCEPTION] == "MessageError: unknown message type 'x'"
    assert copy.headers["x-geobus-reason"] == "error"
    assert copy.headers[wire.HEADER_ATTEMPT] == 3
    assert copy.headers[wire.HEADER_STAGE] == "ingress"
    assert copy.headers[wire.HEADER_ORIGINAL_ROUTING_KEY] == "feature.ingested"
    assert copy.expiration is None
    assert copy.timestamp == message.timestamp


def test_foreign_message_gets_the_stage_it_died_in() -> None:
    """A message without x-geobus-stage is labelled with the stage that dead-lettered it."""
    _, _, copy = dead_letter_copy(
        incoming(), ValueError("bug"), stage="writer", topology=SPEC, reason=REASON_ERROR
    )
    assert copy.headers[wire.HEADER_STAGE] == "writer"
    assert copy.headers[wire.HEADER_EXCEPTION] == "ValueError: bug"


def test_exception_text_fits_in_a_frame() -> None:
    """A huge error message is cut below MAX_EXCEPTION_BYTES of UTF-8, and says so."""
    text = exception_text(PermanentError("é" * 100_000))
    assert len(text.encode()) <= MAX_EXCEPTION_BYTES
    assert text.startswith("PermanentError: éé")
    assert text.endswith("(truncated)")


def test_replay_copy_returns_to_the_original_and_counts_replays() -> None:
    """Replay: original exchange/key, attempt 0, replays + 1, error dropped, x-death kept."""
    dead = incoming(
        {
            wire.HEADER_ORIGINAL_EXCHANGE: "acme.features",
            wire.HEADER_ORIGINAL_ROUTING_KEY: "feature.ingested",
            wire.HEADER_EXCEPTION: "MessageError: x",
            wire.HEADER_ATTEMPT: 3,
            wire.HEADER_REPLAYS: 1,
            "x-geobus-reason": "error",
            "x-death": [{"queue": "acme.validator", "reason": "rejected"}],
        },
        exchange="acme.dlx",
        routing_key="dlq.validator",
    )
    exchange, key, copy = replay_copy(dead)
    assert (exchange, key) == ("acme.features", "feature.ingested")
    assert copy.headers[wire.HEADER_ATTEMPT] == 0
    assert copy.headers[wire.HEADER_REPLAYS] == 2
    assert wire.HEADER_EXCEPTION not in copy.headers
    assert "x-geobus-reason" not in copy.headers
    assert copy.headers["x-death"] == [{"queue": "acme.validator", "reason": "rejected"}]
    assert copy.message_id == dead.message_id


def test_broker_dead_letter_is_replayed_from_its_oldest_death() -> None:
    """Without x-original-* headers, the oldest x-death entry names exchange and key."""
    deaths = [
        {"queue": "acme.validator", "reason": "delivery_limit", "exchange": "", "routing-keys": []},
        {
            "queue": "acme.validator",
            "reason": "rejected",
            "exchange": b"acme.features",
            "routing-keys": [b"feature.ingested"],
        },
    ]
    message = incoming({"x-death": deaths}, exchange="acme.dlx", routing_key="dlq.validator")
    # An outgoing copy (not a delivery) is what `dlq replay` inspects.
    assert original_destination(replay_copy(message)[2]) == ("acme.features", "feature.ingested")
    with pytest.raises(MessageError, match="neither"):
        original_destination(Message(b"", message_id="m"))


def test_retry_settings_are_checked() -> None:
    """GEOBUS_RETRY_DELAYS and GEOBUS_MAX_ATTEMPTS refuse nonsense at start-up."""
    settings = Settings.from_env({"GEOBUS_RETRY_DELAYS": "0.5, 2", "GEOBUS_MAX_ATTEMPTS": "3"})
    assert settings.retry_delays == (0.5, 2.0)
    assert settings.max_attempts == 3
    assert Settings.from_env({}).delivery_limit == 10
    for bad in ("0", "1,x", "-1", "1,,2", "100000"):
        with pytest.raises(ConfigurationError, match="GEOBUS_RETRY_DELAYS"):
            Settings.from_env({"GEOBUS_RETRY_DELAYS": bad})
    with pytest.raises(ConfigurationError, match="GEOBUS_MAX_ATTEMPTS"):
        Settings.from_env({"GEOBUS_MAX_ATTEMPTS": "0"})
