"""The validator service: ``feature.ingested`` → validate → ``feature.validated``."""

from __future__ import annotations

import asyncio
import functools

from geobus.broker import routing
from geobus.runtime import run_transform_stage
from geobus.settings import Settings
from geobus.validator.transform import STAGE, ValidationPolicy, validate


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Consume the validator queue until stopped."""
    policy = ValidationPolicy.from_settings(settings)
    # A picklable factory (each worker process calls it once): it returns
    # validate() bound to the policy.
    factory = functools.partial(functools.partial, validate, policy=policy)
    await run_transform_stage(
        settings, STAGE, factory, output_key=routing.FEATURE_VALIDATED, stop=stop
    )
