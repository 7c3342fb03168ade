"""Fault injection against the real pipeline: poison messages, killed stages, broker and DB away.

Every test runs real ``geobus`` processes (the ``pipeline`` fixture) on the
real RabbitMQ and, where the store matters, a fresh PostGIS database, and
prints the counts it asserts (``pytest -s`` shows them). The promise under
test: what was accepted ends up stored exactly once or rejected with a
reason, and what cannot be processed waits in a DLQ where ``geobus dlq``
shows, exports and replays it.

The RabbitMQ-restart and PostgreSQL-stop tests disturb every user of those
servers; they restore the service in a ``finally``.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import psycopg
import pytest
import shapely
from psycopg import sql

from bench import datasets
from geobus.broker import routing, wire
from geobus.broker.topology import topology
from geobus.v1 import feature_pb2
from tests.integration.conftest import GEOBUS, Pipeline, publish

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

COUNTIES = "us-counties"
COUNTIES_FEATURES = 3231
LAND = "countries-land-10km"
LAND_FEATURES = 220


# -- helpers --------------------------------------------------------------------------------


def post(pipeline: Pipeline, name: str, **params: str) -> str:
    """POST dataset ``name``; the job id of the 202."""
    response = httpx.post(
        pipeline.base_url + "/v1/features",
        content=datasets.path(name).read_bytes(),
        headers={"Content-Type": "application/geo+json"},
        params=params,
        timeout=120,
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["jobID"]
    return job_id


def job(pipeline: Pipeline, job_id: str) -> dict[str, Any] | None:
    """The job document, or None while the ingress cannot answer (its store may be away)."""
    try:
        response = httpx.get(f"{pipeline.base_url}/v1/jobs/{job_id}", timeout=10)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    document: dict[str, Any] = response.json()
    return document


def wait_until(
    pipeline: Pipeline, job_id: str, done: Any, timeout: float, what: str
) -> dict[str, Any]:
    """Poll the job until ``done(document)``; fail with the logs after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    document: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        document = job(pipeline, job_id)
        if document is not None and done(document):
            return document
        time.sleep(0.1)
    logs = "\n".join(f"--- {n}\n{pipeline.log(n)[-4000:]}" for n in pipeline.processes)
    pytest.fail(f"job {job_id}: {what} not reached in {timeout} s: {document}\n{logs}")


def final(pipeline: Pipeline, job_id: str, timeout: float = 240) -> dict[str, Any]:
    """The job document once the job is final."""
    return wait_until(
        pipeline,
        job_id,
        lambda d: d["status"] in ("successful", "failed", "dismissed"),
        timeout,
        "a final status",
    )


def store_counts(pg_url: str, job_id: str, collection: str = "features") -> tuple[int, int]:
    """(rows, distinct (job, feature index)) of ``job_id`` in the PostGIS store."""
    query = sql.SQL(
        "SELECT count(*), count(DISTINCT (job_id, feature_index)) FROM geobus.{} WHERE job_id = %s"
    ).format(sql.Identifier(collection))
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(query, (job_id,)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def dlq(pipeline: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``geobus dlq ARGS`` with the pipeline's settings."""
    return subprocess.run(
        [GEOBUS, "dlq", *args],
        env=pipeline.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def dlq_json(pipeline: Pipeline, *args: str) -> Any:
    """``geobus dlq ARGS --json``, parsed; fails the test on a non-zero exit."""
    done = dlq(pipeline, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def wait_dead_letters(pipeline: Pipeline, stage: str, count: int, timeout: float = 60) -> Any:
    """``dlq ls`` once ``stage`` holds ``count`` dead letters."""
    deadline = time.monotonic() + timeout
    while True:
        listing = dlq_json(pipeline, "ls")
        if listing[stage]["count"] >= count:
            return listing
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {n}\n{pipeline.log(n)[-4000:]}" for n in pipeline.processes)
            pytest.fail(f"{stage} DLQ holds {listing[stage]['count']}, not {count}:\n{logs}")
        time.sleep(0.5)


def queue_depths(pipeline: Pipeline) -> dict[str, int]:
    """Messages ready in each stage queue of the pipeline."""
    names = topology(pipeline.env["GEOBUS_PREFIX"])

    async def run() -> dict[str, int]:
        connection = await aio_pika.connect(pipeline.env["GEOBUS_AMQP_URL"])
        async with connection:
            channel = await connection.channel()
            depths = {}
            for stage in ("validator", "reprojector", "writer"):
                queue = await channel.declare_queue(names.stage_queue(stage), passive=True)
                depths[stage] = queue.declaration_result.message_count or 0
            return depths

    return asyncio.run(run())


# -- poison messages ----------------------------------------------------------------------


def test_poison_messages_land_in_their_dlq_and_the_stage_goes_on(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """Random bytes, an unknown type, an unusable batch: validator DLQ, readable reasons."""
    pipeline.start_all()
    publish(
        pipeline,
        routing.FEATURE_INGESTED,
        aio_pika.Message(
            # Seeded: the same 512 random bytes every run (they do not parse).
            random.Random(4).randbytes(512),
            content_type=wire.CONTENT_TYPE,
            type="geobus.v1.FeatureBatch",
            message_id="poison:random-bytes",
        ),
    )
    publish(
        pipeline,
        routing.FEATURE_INGESTED,
        aio_pika.Message(
            b"\x0a\x03abc",
            content_type=wire.CONTENT_TYPE,
            type="geobus.v9.Mystery",
            message_id="poison:unknown-type",
        ),
    )
    unusable = feature_pb2.FeatureBatch(
        job_id="poison-job",
        sequence=0,
        crs="OGC:CRS84",
        collection="features",
        # No geometry encoding: no stage can read the geometries.
        geometry_encoding=feature_pb2.GEOMETRY_ENCODING_UNSPECIFIED,
        features=[
            feature_pb2.Feature(
                index=i,
                id=feature_pb2.FeatureId(integer_id=i),
                geometry=shapely.to_wkb(shapely.Point(i, 45.5)),
                properties=b'{"n": %d}' % i,
            )
            for i in range(3)
        ],
    )
    publish(
        pipeline,
        routing.FEATURE_INGESTED,
        aio_pika.Message(
            unusable.SerializeToString(),
            content_type=wire.CONTENT_TYPE,
            type="geobus.v1.FeatureBatch",
            message_id="poison:unusable-batch",
            correlation_id="poison-job",
        ),
    )
    listing = wait_dead_letters(pipeline, "validator", 3)
    print("dlq ls:", json.dumps(listing))
    assert listing["validator"]["count"] == 3
    assert {(g["reason"], g["error_class"]) for g in listing["validator"]["groups"]} == {
        ("error", "MessageError")
    }

    # The stage keeps going: a real job completes.
    document = final(pipeline, post(pipeline, LAND))
    print("after the poison:", document["status"], document["counts"])
    assert document["status"] == "successful"
    assert document["counts"]["stored"] + document["counts"]["rejected"] == LAND_FEATURES

    shown = dlq_json(pipeline, "show", "poison:random-bytes")
    print("random bytes:", shown["error"])
    assert shown["error"].startswith("MessageError: the body (512 bytes) is not a valid")
    assert shown["payload"] is None
    mystery = dlq_json(pipeline, "show", "poison:unknown-type")
    print("unknown type:", mystery["error"])
    assert "unknown message type 'geobus.v9.Mystery'" in mystery["error"]
    batch = dlq_json(pipeline, "show", "poison:unusable-batch")
    print("unusable batch:", batch["error"])
    assert "encoding" in batch["error"]
    assert batch["job_id"] == "poison-job"
    assert batch["envelope"]["original_routing_key"] == routing.FEATURE_INGESTED
    assert [f["geometry"]["bbox"] for f in batch["features"]] == [
        [float(i), 45.5, float(i), 45.5] for i in range(3)
    ]
    text = dlq(pipeline, "show", "poison:unusable-batch")
    assert "Point, 1 vertices" in text.stdout, text.stdout

    exported = tmp_path / "dead.geojson"
    done = dlq(pipeline, "export", "--stage", "validator", "--geojson", str(exported))
    print(done.stdout.strip())
    assert done.returncode == 0, done.stderr
    collection = json.loads(exported.read_text())
    assert [f["properties"]["n"] for f in collection["features"]] == [0, 1, 2]
    assert all("encoding" in f["properties"]["geobus_error"] for f in collection["features"])
    # Listing, showing and exporting took nothing away.
    assert dlq_json(pipeline, "ls")["validator"]["count"] == 3

    # A replay of what is still poison dies again and comes back flagged.
    replayed = dlq_json(pipeline, "replay", "poison:unknown-type")
    assert replayed == {"replayed": ["poison:unknown-type"], "failed": []}
    deadline = time.monotonic() + 30
    while (again := dlq(pipeline, "show", "poison:unknown-type", "--json")).returncode != 0:
        assert time.monotonic() < deadline, again.stderr
        time.sleep(0.5)
    flagged = json.loads(again.stdout)
    print("replayed and dead again:", flagged["replays"], flagged["error"])
    assert flagged["replays"] == 1
    assert flagged["envelope"]["replays"] == 1
    assert dlq_json(pipeline, "ls")["validator"]["count"] == 3
    assert "Traceback" not in pipeline.log("validator-1")
    assert pipeline.processes["validator-1"].poll() is None


def test_a_batch_the_store_refuses_is_replayed_once_fixed(
    pipeline: Pipeline, fresh_pg_url: str
) -> None:
    """Batches the database refuses wait in the writer DLQ; fixed and replayed, the job ends."""
    pipeline.env["GEOBUS_DATABASE_URL"] = fresh_pg_url
    pipeline.env["GEOBUS_BATCH_MAX_FEATURES"] = "50"
    pipeline.start_all()
    first = final(pipeline, post(pipeline, LAND, collection="land"))
    assert first["status"] == "successful"
    with psycopg.connect(fresh_pg_url, autocommit=True) as conn:
        conn.execute(
            "ALTER TABLE geobus.land"
            " ADD CONSTRAINT test_block CHECK (feature_index < 100) NOT VALID"
        )
    job_id = post(pipeline, LAND, collection="land")
    listing = wait_dead_letters(pipeline, "writer", 3)
    print("writer DLQ:", json.dumps(listing["writer"]))
    stuck = job(pipeline, job_id)
    assert stuck is not None
    print("stuck job:", stuck["status"], stuck["counts"])
    assert stuck["status"] == "running"
    assert listing["writer"]["groups"][0]["error_class"] == "PermanentError"
    dead = listing["writer"]["count"]
    # Batches of 50: indices 100-149, 150-199, 200-219, minus any rejected upstream.
    assert dead == 3

    with psycopg.connect(fresh_pg_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE geobus.land DROP CONSTRAINT test_block")
    replayed = dlq_json(pipeline, "replay", "--all", "--stage", "writer")
    print("replayed:", replayed)
    assert len(replayed["replayed"]) == 3
    assert replayed["failed"] == []
    document = final(pipeline, job_id)
    counts = document["counts"]
    rows, distinct = store_counts(fresh_pg_url, job_id, "land")
    print("after replay:", document["status"], counts, "rows", rows, "distinct", distinct)
    assert document["status"] == "successful"
    assert counts["stored"] + counts["rejected"] == LAND_FEATURES
    assert rows == distinct == counts["stored"]
    assert dlq_json(pipeline, "ls")["writer"]["count"] == 0


# -- killed stages ------------------------------------------------------------------------

# Batches waiting for the stage before it starts (us-counties in batches of 5: 647).
BACKLOG = 100
DOWNSTREAM = {"validator": ("reprojector", "writer"), "reprojector": ("writer",), "writer": ()}


@pytest.mark.parametrize("stage", ["writer", "validator", "reprojector"])
def test_kill_9_mid_job_then_restart_loses_and_duplicates_nothing(
    pipeline: Pipeline, fresh_pg_url: str, stage: str
) -> None:
    """SIGKILL a stage while it holds work, restart it: stored + rejected = input, no duplicate."""
    pipeline.env["GEOBUS_DATABASE_URL"] = fresh_pg_url
    # Small batches and a backlog built up before the stage starts: the stage
    # is then certainly mid-job when it is killed, however fast the machine.
    pipeline.env["GEOBUS_BATCH_MAX_FEATURES"] = "5"
    name = f"{stage}-1"
    for other in ("validator", "reprojector", "writer"):
        if other != stage:
            pipeline.start(f"{other}-1", "worker", other)
    pipeline.start("ingress", "ingress")
    pipeline.wait_ready()
    job_id = post(pipeline, COUNTIES)
    deadline = time.monotonic() + 120
    while queue_depths(pipeline)[stage] < BACKLOG:
        assert time.monotonic() < deadline, f"no backlog for the {stage}: {queue_depths(pipeline)}"
        time.sleep(0.05)
    pipeline.start(name, "worker", stage)
    while True:
        depths = queue_depths(pipeline)
        document = job(pipeline, job_id) or {"counts": {"stored": 0}}
        started = document["counts"]["stored"] > 0 or any(depths[d] for d in DOWNSTREAM[stage])
        if stage == "writer":
            started = document["counts"]["stored"] > 0
        if started and depths[stage] > 0:
            break
        assert time.monotonic() < deadline, f"{stage} never seen mid-job: {depths} {document}"
        time.sleep(0.02)
    pipeline.processes[name].send_signal(signal.SIGKILL)
    pipeline.processes[name].wait(timeout=10)
    print(f"killed {name} with {depths[stage]} batches waiting; stored so far", document["counts"])
    time.sleep(1)
    pipeline.start(name, "worker", stage)
    document = final(pipeline, job_id)
    counts = document["counts"]
    rows, distinct = store_counts(fresh_pg_url, job_id)
    print(
        f"{stage} killed and restarted:",
        document["status"],
        counts,
        "rows",
        rows,
        "distinct",
        distinct,
    )
    assert document["status"] == "successful"
    assert counts["received"] == COUNTIES_FEATURES
    assert counts["stored"] + counts["rejected"] == COUNTIES_FEATURES
    assert rows == distinct == counts["stored"]
    assert dlq_json(pipeline, "ls")[stage]["count"] == 0


# -- servers away (run only in the agreed window: they disturb every user) ----------------


def mid_job(pipeline: Pipeline, job_id: str) -> dict[str, Any]:
    """The job document once the ingress published the whole job and the writer is under way.

    The ingress's own resilience (resume after a crash) is tested elsewhere;
    here the stages must ride out the outage.
    """
    published = f"job {job_id}: {COUNTIES_FEATURES} features in"
    return wait_until(
        pipeline,
        job_id,
        lambda d: (
            published in pipeline.log("ingress") and 0 < d["counts"]["stored"] < COUNTIES_FEATURES
        ),
        120,
        "the job published and partly stored",
    )


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


@pytest.mark.disruptive
def test_rabbitmq_restart_mid_job(pipeline: Pipeline, fresh_pg_url: str) -> None:
    """stop_app / start_app mid-job: consumers come back by themselves; the job completes."""
    pipeline.env["GEOBUS_DATABASE_URL"] = fresh_pg_url
    pipeline.env["GEOBUS_BATCH_MAX_FEATURES"] = "5"  # 647 batches: a wide mid-job window
    pipeline.start_all()
    job_id = post(pipeline, COUNTIES)
    before = mid_job(pipeline, job_id)
    print("stopping RabbitMQ at", before["counts"])
    try:
        _rabbitmqctl("stop_app")
        time.sleep(5)
    finally:
        _rabbitmqctl("start_app")
    _rabbitmqctl("await_startup")
    document = final(pipeline, job_id, timeout=300)
    counts = document["counts"]
    rows, distinct = store_counts(fresh_pg_url, job_id)
    print("after the restart:", document["status"], counts, "rows", rows, "distinct", distinct)
    assert document["status"] == "successful"
    assert counts["stored"] + counts["rejected"] == COUNTIES_FEATURES
    assert rows == distinct == counts["stored"]
    for name, process in pipeline.processes.items():
        assert process.poll() is None, f"{name} exited:\n{pipeline.log(name)[-3000:]}"


@pytest.mark.disruptive
def test_postgresql_away_for_30_s_mid_job(pipeline: Pipeline, fresh_pg_url: str) -> None:
    """PostgreSQL stopped 30 s mid-job: writes wait in the retry queues, the job completes after."""
    pipeline.env["GEOBUS_DATABASE_URL"] = fresh_pg_url
    pipeline.env["GEOBUS_BATCH_MAX_FEATURES"] = "5"  # 647 batches: a wide mid-job window
    # Shorter than the defaults (1, 5, 30, 120, 600 s) so that the test takes
    # a minute, long enough that no batch runs out of its 6 attempts in 30 s.
    pipeline.env["GEOBUS_RETRY_DELAYS"] = "1,5,15,30,60"
    pipeline.start_all()
    job_id = post(pipeline, COUNTIES)
    before = mid_job(pipeline, job_id)
    print("stopping PostgreSQL at", before["counts"])
    cluster = ["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main"]
    try:
        subprocess.run([*cluster, "stop"], check=True, timeout=120)
        time.sleep(30)
    finally:
        subprocess.run([*cluster, "start"], check=True, timeout=120)
    retries = pipeline.log("writer-1").count("failed transiently")
    document = final(pipeline, job_id, timeout=300)
    counts = document["counts"]
    rows, distinct = store_counts(fresh_pg_url, job_id)
    print(
        f"after PostgreSQL came back: {document['status']} {counts}; rows {rows}, "
        f"distinct {distinct}; {retries} writer retries logged while it was away"
    )
    assert retries > 0
    assert document["status"] == "successful"
    assert counts["stored"] + counts["rejected"] == COUNTIES_FEATURES
    assert rows == distinct == counts["stored"]
    assert dlq_json(pipeline, "ls")["writer"]["count"] == 0
