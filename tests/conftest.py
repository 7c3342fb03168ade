"""Fixtures shared by the test suites: the real RabbitMQ and a throw-away topology on it.

Integration tests FAIL, never skip, when RabbitMQ is away: a green run means
the broker paths were exercised. ``GEOBUS_TEST_AMQP_URL`` points them at
another broker.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel

from geobus.broker.topology import Topology, declare, delete, topology

AMQP_URL = os.environ.get("GEOBUS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """The URL of the test broker."""
    return AMQP_URL


@pytest.fixture
async def amqp_channel(amqp_url: str) -> AsyncIterator[AbstractChannel]:
    """A plain channel for the test's own declarations and inspection."""
    try:
        connection = await aio_pika.connect(amqp_url)
    except (OSError, aio_pika.exceptions.AMQPError) as exc:
        pytest.fail(f"RabbitMQ is not reachable at {amqp_url}: {exc}")
    async with connection:
        yield await connection.channel()


@pytest.fixture
async def broker_topology(amqp_url: str) -> AsyncIterator[Topology]:
    """The geobus topology under a random prefix, declared, and deleted after the test."""
    spec = topology(f"t{uuid.uuid4().hex[:8]}", delivery_limit=3)
    try:
        connection = await aio_pika.connect(amqp_url)
    except (OSError, aio_pika.exceptions.AMQPError) as exc:
        pytest.fail(f"RabbitMQ is not reachable at {amqp_url}: {exc}")
    async with connection:
        await declare(await connection.channel(), spec)
        try:
            yield spec
        finally:
            # A fresh channel: the test may have closed the first one.
            await delete(await connection.channel(), spec)
