"""The admin HTTP API against the real ingress process, RabbitMQ, PostGIS and a validator."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import jsonschema
import pytest

from geobus.broker import routing, wire
from geobus.broker.topology import topology
from geobus.ingress.openapi import document as openapi_document
from geobus.settings import Settings
from geobus.store import open_store
from geobus.store.base import FeatureStore, JobRecord
from tests.integration.conftest import Pipeline, publish

pytestmark = pytest.mark.integration

TOKEN = uuid.uuid4().hex + uuid.uuid4().hex
BEARER = {"Authorization": f"Bearer {TOKEN}"}
DOCUMENT = json.dumps(
    {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}},
        ],
    }
).encode()


@pytest.fixture
def admin_pipeline(fresh_pg_url: str, pipeline: Pipeline) -> Pipeline:
    """A pipeline (not started) on a fresh PostGIS database, with the admin token set."""
    pipeline.env["GEOBUS_DATABASE_URL"] = fresh_pg_url
    pipeline.env["GEOBUS_ADMIN_TOKEN"] = TOKEN
    return pipeline


def _timed(method: str, url: str, **kwargs: Any) -> httpx.Response:
    start = time.perf_counter()
    response = httpx.request(method, url, timeout=60, **kwargs)
    print(f"{method} {url.split('/', 3)[-1]} -> {response.status_code} in", end=" ")
    print(f"{(time.perf_counter() - start) * 1000:.0f} ms")
    return response


def _stage_queue_depth(pipeline: Pipeline, stage: str) -> int:
    names = topology(pipeline.env["GEOBUS_PREFIX"])

    async def run() -> int:
        connection = await aio_pika.connect(pipeline.env["GEOBUS_AMQP_URL"])
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(names.stage_queue(stage), passive=True)
            return queue.declaration_result.message_count or 0

    return asyncio.run(run())


def _conforms(instance: Any, schema_name: str) -> None:
    """``instance`` is valid against the OpenAPI document's component schema."""
    root = {**openapi_document(), "$ref": f"#/components/schemas/{schema_name}"}
    jsonschema.Draft202012Validator(root).validate(instance)


def _wait_listing(pipeline: Pipeline, count: int, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(f"{pipeline.base_url}/v1/deadletters", headers=BEARER, timeout=60)
        assert response.status_code == 200, response.text
        listing: dict[str, Any] = response.json()
        if listing["validator"]["count"] == count:
            return listing
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {n}\n{pipeline.log(n)[-3000:]}" for n in pipeline.processes)
            pytest.fail(
                f"validator DLQ holds {listing['validator']['count']}, not {count}:\n{logs}"
            )
        time.sleep(0.3)


@pytest.fixture(params=["postgis", "geopackage"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FeatureStore]:
    """A fresh store of each kind, its schema ensured."""
    if request.param == "postgis":
        url = request.getfixturevalue("fresh_pg_url")
    else:
        url = str(tmp_path / "store.gpkg")
    opened = open_store(Settings(database_url=url))
    opened.ensure_schema()
    try:
        yield opened
    finally:
        opened.close()


def test_stores_list_jobs_of_one_status_newest_first(store: FeatureStore) -> None:
    """list_jobs(status=...) keeps only that status, still newest first and paged."""
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    ids = [str(uuid.uuid4()) for _ in range(4)]
    for n, job_id in enumerate(ids):
        store.create_job(JobRecord(job_id=job_id, created=t0 + timedelta(minutes=n)))
    for job_id in ids[1:]:
        store.mark_running(job_id, t0 + timedelta(hours=1))
    store.mark_failed(ids[2], "document_not_json", "not JSON", t0 + timedelta(hours=2))
    assert [j.job_id for j in store.list_jobs(10, 0)] == ids[::-1]
    assert [j.job_id for j in store.list_jobs(10, 0, "running")] == [ids[3], ids[1]]
    assert [j.job_id for j in store.list_jobs(1, 1, "running")] == [ids[1]]
    assert [j.job_id for j in store.list_jobs(10, 0, "failed")] == [ids[2]]
    assert [j.job_id for j in store.list_jobs(10, 0, "accepted")] == [ids[0]]
    assert store.list_jobs(10, 0, "dismissed") == []


def test_job_listing_needs_the_token_and_pages_newest_first(admin_pipeline: Pipeline) -> None:
    """GET /v1/jobs: 401 without token; with it the uuid4 jobs newest first, paged, filtered."""
    admin_pipeline.start("ingress", "ingress")
    admin_pipeline.wait_ready()
    base = admin_pipeline.base_url
    posted = []
    for _ in range(3):
        response = httpx.post(
            f"{base}/v1/features",
            content=DOCUMENT,
            headers={"Content-Type": "application/geo+json"},
            timeout=30,
        )
        assert response.status_code == 202, response.text
        posted.append(response.json()["jobID"])
    assert all(uuid.UUID(job_id).version == 4 for job_id in posted)

    refused = _timed("GET", f"{base}/v1/jobs")
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["www-authenticate"] == 'Bearer realm="geobus-admin"'
    wrong = _timed("GET", f"{base}/v1/jobs", headers={"Authorization": "Bearer " + "0" * 64})
    assert wrong.status_code == 401
    assert TOKEN not in wrong.text

    listing = _timed("GET", f"{base}/v1/jobs", headers=BEARER)
    assert listing.status_code == 200
    assert [job["jobID"] for job in listing.json()["jobs"]] == posted[::-1]
    _conforms(listing.json(), "JobList")
    first = _timed("GET", f"{base}/v1/jobs?limit=2", headers=BEARER).json()
    assert [job["jobID"] for job in first["jobs"]] == posted[:0:-1]
    (next_link,) = [link["href"] for link in first["links"] if link["rel"] == "next"]
    second = _timed("GET", base + next_link, headers=BEARER).json()
    assert [job["jobID"] for job in second["jobs"]] == posted[:1]
    assert [link["rel"] for link in second["links"]] == ["self"]
    dismissed = _timed("GET", f"{base}/v1/jobs?status=dismissed", headers=BEARER)
    assert dismissed.json()["jobs"] == []
    status = listing.json()["jobs"][0]["status"]
    same = _timed("GET", f"{base}/v1/jobs?status={status}", headers=BEARER).json()
    assert posted[-1] in [job["jobID"] for job in same["jobs"]]

    # The job's own id stays enough to read it.
    assert httpx.get(f"{base}/v1/jobs/{posted[0]}", timeout=10).status_code == 200
    assert httpx.get(f"{base}/v1/jobs/{posted[0]}/rejects", timeout=10).status_code == 200
    assert TOKEN not in admin_pipeline.log("ingress")


def test_poison_message_is_listed_shown_and_replayed_over_http(admin_pipeline: Pipeline) -> None:
    """A poison message: listed and shown without loss, 404 when unknown, replay empties the DLQ."""
    admin_pipeline.start("validator-1", "worker", "validator")
    admin_pipeline.start("ingress", "ingress")
    admin_pipeline.wait_ready()
    base = admin_pipeline.base_url
    message_id = f"poison:{uuid.uuid4().hex}"
    publish(
        admin_pipeline,
        routing.FEATURE_INGESTED,
        aio_pika.Message(
            random.Random(7).randbytes(512),
            content_type=wire.CONTENT_TYPE,
            type="geobus.v1.FeatureBatch",
            message_id=message_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        ),
    )
    listing = _wait_listing(admin_pipeline, 1)
    print("GET /v1/deadletters:", json.dumps(listing))
    assert listing["validator"]["groups"] == [
        {"reason": "error", "error_class": "MessageError", "count": 1}
    ]
    assert listing["writer"] == {"count": 0, "groups": []}
    _conforms(listing, "DeadLetterListing")
    assert _timed("GET", f"{base}/v1/deadletters").status_code == 401
    assert _timed("POST", f"{base}/v1/deadletters/{message_id}/replay").status_code == 401

    shown = _timed("GET", f"{base}/v1/deadletters/{message_id}", headers=BEARER)
    assert shown.status_code == 200
    document = shown.json()
    print("shown:", document["error"])
    assert document["message_id"] == message_id
    assert document["stage"] == "validator"
    assert document["error"].startswith("MessageError: the body (512 bytes) is not a valid")
    assert document["payload"] is None
    assert document["replays"] == 0
    assert document["envelope"]["original_routing_key"] == routing.FEATURE_INGESTED
    _conforms(document, "DeadLetter")
    # Reading took nothing away.
    for _ in range(3):
        again = _timed("GET", f"{base}/v1/deadletters?stage=validator", headers=BEARER)
        assert again.json() == {"validator": listing["validator"]}

    for method, path in (("GET", "nope"), ("POST", "nope/replay")):
        unknown = _timed(method, f"{base}/v1/deadletters/{path}", headers=BEARER)
        assert unknown.status_code == 404
        assert unknown.json()["type"] == "urn:geobus:problem:unknown-dead-letter"
    assert _timed("GET", f"{base}/v1/deadletters?stage=x", headers=BEARER).status_code == 422

    # With the validator stopped, the replayed copy waits in the stage queue.
    admin_pipeline.stop("validator-1")
    replayed = _timed("POST", f"{base}/v1/deadletters/{message_id}/replay", headers=BEARER)
    assert replayed.status_code == 200, replayed.text
    assert replayed.json() == {"replayed": [message_id], "failed": []}
    _conforms(replayed.json(), "ReplayReport")
    assert _wait_listing(admin_pipeline, 0)["validator"] == {"count": 0, "groups": []}
    gone = _timed("GET", f"{base}/v1/deadletters/{message_id}", headers=BEARER)
    assert gone.status_code == 404
    assert _stage_queue_depth(admin_pipeline, "validator") == 1

    # Still poison: it dies again and comes back flagged as a replay.
    admin_pipeline.start("validator-2", "worker", "validator")
    _wait_listing(admin_pipeline, 1)
    flagged = _timed("GET", f"{base}/v1/deadletters/{message_id}", headers=BEARER).json()
    print("dead again after replay:", flagged["replays"], flagged["error"])
    assert flagged["replays"] == 1
    assert TOKEN not in admin_pipeline.log("ingress")
