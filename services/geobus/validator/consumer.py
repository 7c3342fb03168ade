"""The validator service: ``feature.ingested`` → validate → ``feature.validated``."""

from __future__ import annotations

import asyncio
import functools

from geobus.broker import routing
from geobus.broker.publisher import Publisher
from geobus.broker.topology import Topology
from geobus.runtime import Handler, run_stage, transform_handler
from geobus.settings import Settings
from geobus.validator.transform import STAGE, ValidationPolicy, validate


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Consume the validator queue until stopped."""
    transform = functools.partial(validate, policy=ValidationPolicy.from_settings(settings))

    def make_handler(publisher: Publisher, topology: Topology) -> Handler:
        return transform_handler(
            transform, publisher, topology, stage=STAGE, output_key=routing.FEATURE_VALIDATED
        )

    await run_stage(settings, STAGE, make_handler, stop)
