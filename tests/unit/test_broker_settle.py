"""settle(): what the broker is told, and in which order, with a fake message and publisher."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import pytest

from geobus.broker.consumer import Redelivery, settle
from geobus.broker.redelivery import Disposition
from geobus.broker.topology import topology
from geobus.errors import PermanentError, TransientError
from tests.unit.test_broker_redelivery import incoming

SPEC = topology("acme", retry_delays=(1.0, 5.0))


class FakePublisher:
    """Records publishes; fails them with ``error`` when set."""

    def __init__(self, log: list[Any], error: Exception | None = None) -> None:
        self.log = log
        self.error = error

    async def publish_message(
        self, exchange_name: str, routing_key: str, message: aio_pika.Message
    ) -> None:
        """Record, or fail like a broker that is away."""
        if self.error is not None:
            self.log.append(("publish failed", routing_key))
            raise self.error
        self.log.append(("published", exchange_name, routing_key, dict(message.headers)))


class FakeMessage:
    """The settling half of an incoming message, recording what it was told."""

    def __init__(self, log: list[Any], headers: dict[str, Any] | None = None) -> None:
        self._real = incoming(headers)
        self.log = log

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    async def ack(self) -> None:
        """Record the ack."""
        self.log.append(("ack",))

    async def reject(self, requeue: bool = False) -> None:
        """Record the reject."""
        self.log.append(("reject", requeue))

    async def nack(self, requeue: bool = True) -> None:
        """Record the nack."""
        self.log.append(("nack", requeue))


async def _settle(
    error: Exception | None, publisher: FakePublisher | None, log: list[Any], **headers: Any
) -> Disposition:
    message: Any = FakeMessage(log, headers or None)
    redelivery = Redelivery(publisher, SPEC, max_attempts=3) if publisher else None
    stop = asyncio.Event()
    stop.set()  # fallbacks requeue at once instead of backing off
    return await settle(message, error, stage="writer", stop=stop, redelivery=redelivery)


async def test_dead_letter_is_acked_only_after_the_copy_is_confirmed() -> None:
    """Permanent error: publish to DLX first, then ack; never reject."""
    log: list[Any] = []
    decision = await _settle(PermanentError("bad"), FakePublisher(log), log)
    assert decision is Disposition.DEAD_LETTER
    assert [entry[0] for entry in log] == ["published", "ack"]
    assert log[0][1:3] == ("acme.dlx", "dlq.writer")
    assert log[0][3]["x-exception"] == "PermanentError: bad"


async def test_failed_dead_letter_publish_falls_back_to_reject() -> None:
    """When the DLX copy cannot be published the original is rejected into the queue's DLX."""
    log: list[Any] = []
    await _settle(PermanentError("bad"), FakePublisher(log, TransientError("blocked")), log)
    assert log == [("publish failed", "dlq.writer"), ("reject", False)]


async def test_retry_goes_to_the_delay_queue_then_acks() -> None:
    """Transient error on attempt 2 of 3: copy to retry.writer.2, then ack."""
    log: list[Any] = []
    decision = await _settle(
        TransientError("db away"), FakePublisher(log), log, **{"x-geobus-attempt": 1}
    )
    assert decision is Disposition.RETRY
    assert [entry[0] for entry in log] == ["published", "ack"]
    assert log[0][1:3] == ("acme.retry.writer", "acme.retry.writer.2")
    assert log[0][3]["x-geobus-attempt"] == 2


async def test_last_attempt_dead_letters_as_retries_exhausted() -> None:
    """Transient error on the last attempt: DLQ with reason retries_exhausted."""
    log: list[Any] = []
    decision = await _settle(
        TransientError("db away"), FakePublisher(log), log, **{"x-geobus-attempt": 2}
    )
    assert decision is Disposition.DEAD_LETTER
    assert log[0][3]["x-geobus-reason"] == "retries_exhausted"
    assert log[1] == ("ack",)


@pytest.mark.parametrize("publisher_down", [True, False])
async def test_retry_without_a_publisher_requeues(publisher_down: bool) -> None:
    """No publisher, or one that fails: the message is nacked back to its queue."""
    log: list[Any] = []
    publisher = FakePublisher(log, TransientError("blocked")) if publisher_down else None
    await _settle(TransientError("db away"), publisher, log)
    assert log[-1] == ("nack", True)
    assert ("ack",) not in log


async def test_success_acks_without_publishing() -> None:
    """Success: one ack, nothing published."""
    log: list[Any] = []
    assert await _settle(None, FakePublisher(log), log) is Disposition.ACK
    assert log == [("ack",)]
