"""The reprojector service: ``feature.validated`` → reproject → ``feature.reprojected``."""

from __future__ import annotations

import asyncio
import functools

from geobus.broker import routing
from geobus.reprojector.transform import STAGE, Clip, Reprojector
from geobus.runtime import run_transform_stage
from geobus.settings import Settings


def reprojector_factory(settings: Settings) -> functools.partial[Reprojector]:
    """Builds the reprojector set up by ``GEOBUS_TARGET_CRS``, ``_CLIP`` and ``_PRECISION``."""
    clip: Clip = "reject" if settings.clip == "reject" else "cut"
    return functools.partial(
        Reprojector, settings.target_crs, clip=clip, precision=settings.precision
    )


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Consume the reprojector queue until stopped."""
    # Built once here so that a bad target CRS fails at start-up.
    factory = reprojector_factory(settings)
    factory()
    # Every worker (process, or thread with GEOBUS_STAGE_WORKERS=0) builds its
    # own Reprojector: PROJ transformers must not be shared between threads.
    await run_transform_stage(
        settings, STAGE, factory, output_key=routing.FEATURE_REPROJECTED, stop=stop
    )
