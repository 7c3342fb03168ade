"""The ingress end to end: real uvicorn, RabbitMQ, GeoPackage store and process pool."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import aio_pika
import httpx
import pytest
import uvicorn

from bench import datasets
from geobus.broker.topology import declare, delete, topology
from geobus.ingress.app import create_app
from geobus.settings import Settings
from geobus.store import open_store
from geobus.v1 import feature_pb2, job_pb2, rejection_pb2

pytestmark = pytest.mark.integration

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


@dataclass
class Collected:
    """Messages seen on a temporary queue bound to feature.# and job.#."""

    features: list[int] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    sealed: job_pb2.JobSealed | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


@contextlib.asynccontextmanager
async def collector(
    prefix: str, job_keys: tuple[str, ...] = ("job.#",)
) -> AsyncIterator[Collected]:
    """Declare the topology of ``prefix``, collect its feature.# and ``job_keys`` messages."""
    connection = await aio_pika.connect(AMQP_URL)
    collected = Collected()
    try:
        channel = await connection.channel()
        names = topology(prefix)
        await declare(channel, names)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(names.features_exchange, "feature.#")
        for key in job_keys:
            await queue.bind(names.jobs_exchange, key)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with message.process():
                key = message.routing_key or ""
                collected.keys.append(key)
                if key == "feature.ingested":
                    batch = feature_pb2.FeatureBatch.FromString(message.body)
                    collected.features.extend(f.index for f in batch.features)
                elif key == "feature.rejected":
                    rejections = rejection_pb2.RejectionBatch.FromString(message.body)
                    collected.rejected.extend(r.feature_index for r in rejections.rejections)
                elif key == "job.sealed":
                    collected.sealed = job_pb2.JobSealed.FromString(message.body)
                    collected.done.set()

        await queue.consume(on_message)
        yield collected
    finally:
        await delete(await connection.channel(), topology(prefix))
        await connection.close()


@contextlib.asynccontextmanager
async def live_server(settings: Settings) -> AsyncIterator[str]:
    """The ingress served by uvicorn on a random port of this loop; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(settings), http="h11", lifespan="on", access_log=False, log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


class LagMeter:
    """Measures event-loop lag: how late a 5 ms sleep wakes up."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.005)
            self.samples.append(time.perf_counter() - start - 0.005)

    def start(self) -> None:
        self.samples.clear()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> tuple[float, float, float]:
        """(median, p99, max) lag in milliseconds."""
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        ordered = sorted(self.samples)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return statistics.median(ordered) * 1e3, p99 * 1e3, ordered[-1] * 1e3


def _chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with path.open("rb") as stream:
        while chunk := stream.read(size):
            yield chunk


def _settings(tmp_path: Path) -> Settings:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    return replace(
        Settings(),
        amqp_url=AMQP_URL,
        prefix=prefix,
        database_url=str(tmp_path / "store.gpkg"),
        spool_dir=tmp_path / "spool",
    )


async def _post(url: str, path: Path) -> tuple[httpx.Response, float]:
    """Stream ``path`` to the ingress from a thread (its own socket); (response, seconds)."""

    def post() -> tuple[httpx.Response, float]:
        start = time.perf_counter()
        response = httpx.post(
            f"{url}/v1/features",
            content=_chunks(path),
            headers={"Content-Type": "application/geo+json"},
            timeout=120,
        )
        return response, time.perf_counter() - start

    return await asyncio.to_thread(post)


async def test_map_is_converted_and_sealed(tmp_path: Path) -> None:
    """The 220 countries of map.geo.json arrive as batches or rejections, then job.sealed."""
    settings = _settings(tmp_path)
    # Nothing binds job.accepted here, as in a plain deployment: it must not stop the job.
    async with (
        collector(settings.prefix, ("job.sealed",)) as collected,
        live_server(settings) as url,
    ):
        response, seconds = await _post(url, datasets.path("countries-land-10km"))
        assert response.status_code == 202, response.text
        assert seconds < 2.0
        job_id = response.json()["jobID"]
        await asyncio.wait_for(collected.done.wait(), 60)
        assert collected.sealed is not None
        assert collected.sealed.job_id == job_id
        assert collected.sealed.features_total == 220
        assert sorted(collected.features + collected.rejected) == list(range(220))
        assert collected.sealed.rejected_total == len(collected.rejected)
        assert collected.keys[-1] == "job.sealed"
        # The spool is removed once the job's messages are all confirmed.
        for _ in range(100):
            if not list(settings.spool_dir.iterdir()):
                break
            await asyncio.sleep(0.05)
        assert list(settings.spool_dir.iterdir()) == []
        async with httpx.AsyncClient(base_url=url) as client:
            job = (await client.get(f"/v1/jobs/{job_id}")).json()
            assert job["status"] == "running"
            assert (await client.get("/readyz")).status_code == 200
    store = open_store(settings)
    try:
        record = store.get_job(job_id)
        assert record is not None
        assert record.started is not None
    finally:
        store.close()


async def test_unreadable_document_fails_the_job(tmp_path: Path) -> None:
    """A body that is not JSON is accepted, then the job is failed with the reason."""
    settings = _settings(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"type": "FeatureCollection", "features": [ oops')
    async with collector(settings.prefix) as collected, live_server(settings) as url:
        response, _ = await _post(url, bad)
        assert response.status_code == 202
        job_url = response.headers["location"]
        async with httpx.AsyncClient(base_url=url) as client:
            for _ in range(200):
                job = (await client.get(job_url)).json()
                if job["status"] == "failed":
                    break
                await asyncio.sleep(0.05)
        assert job["status"] == "failed", job
        assert job["message"]
        assert "job.failed" in collected.keys
        assert collected.sealed is None


@pytest.mark.slow
async def test_large_document_latency_and_loop_lag(tmp_path: Path) -> None:
    """38 MB: the 202 comes in well under a second and conversion does not stall the loop."""
    settings = _settings(tmp_path)
    meter = LagMeter()
    async with collector(settings.prefix) as collected, live_server(settings) as url:
        meter.start()
        response, seconds = await _post(url, datasets.path("countries-maritime-10m"))
        receive_lag = await meter.stop()
        assert response.status_code == 202, response.text
        meter.start()
        started = time.perf_counter()
        await asyncio.wait_for(collected.done.wait(), 300)
        converted = time.perf_counter() - started
        conversion_lag = await meter.stop()
    assert collected.sealed is not None
    total = collected.sealed.features_total
    assert sorted(collected.features + collected.rejected) == list(range(total))
    print(
        f"\n38 MB: 202 after {seconds * 1e3:.0f} ms (loop lag median/p99/max"
        f" {receive_lag[0]:.2f}/{receive_lag[1]:.2f}/{receive_lag[2]:.2f} ms);"
        f" sealed {converted:.2f} s later, {total} features; loop lag during conversion"
        f" median/p99/max {conversion_lag[0]:.2f}/{conversion_lag[1]:.2f}/"
        f"{conversion_lag[2]:.2f} ms"
    )
    assert seconds < 3.0
    assert conversion_lag[2] < 100
