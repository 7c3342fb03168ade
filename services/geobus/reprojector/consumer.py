"""The reprojector service: ``feature.validated`` → reproject → ``feature.reprojected``."""

from __future__ import annotations

import asyncio
import threading

from geobus.broker import routing
from geobus.broker.publisher import Publisher
from geobus.broker.topology import Topology
from geobus.reprojector.transform import STAGE, Reprojector
from geobus.runtime import Handler, run_stage, transform_handler
from geobus.settings import Settings
from geobus.stage import StageResult
from geobus.v1 import feature_pb2


class _PerThread(threading.local):
    """One Reprojector per worker thread: PROJ transformers are not thread-safe."""

    def __init__(self, target_crs: str) -> None:
        self.reprojector = Reprojector(target_crs)


async def run(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Consume the reprojector queue until stopped."""
    # Built once here so that a bad target CRS fails at start-up.
    Reprojector(settings.target_crs)
    local = _PerThread(settings.target_crs)

    def transform(batch: feature_pb2.FeatureBatch) -> StageResult:
        return local.reprojector(batch)

    def make_handler(publisher: Publisher, topology: Topology) -> Handler:
        return transform_handler(
            transform, publisher, topology, stage=STAGE, output_key=routing.FEATURE_REPROJECTED
        )

    await run_stage(settings, STAGE, make_handler, stop)
