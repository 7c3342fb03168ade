"""The ingress's HTTP surface with in-memory fakes for the store, broker and runner."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from geobus.ingress import spool
from geobus.ingress.admission import BrokerPressure, Drain
from geobus.ingress.app import create_app
from geobus.ingress.ports import JobRecord, JobStore, Publisher, RejectionRecord
from geobus.ingress.runner import ConversionRunner
from geobus.settings import Settings
from geobus.store.base import JobCounts
from tests.unit.fakes import FakeRunner, FakeStore, RecordingPublisher

DOCUMENT = json.dumps(
    {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [1, 2]},
                "properties": {"n": 1},
            },
        ],
    }
).encode()


@dataclass
class Harness:
    client: TestClient
    store: FakeStore
    publisher: RecordingPublisher
    runner: FakeRunner
    spool_dir: Path
    pressure: BrokerPressure
    drain: Drain


def make_harness(settings: Settings) -> Iterator[Harness]:
    """An app over fakes; the broker pressure and the drain flag are the test's to set."""
    store, publisher, runner = FakeStore(), RecordingPublisher(), FakeRunner()
    pressure, drain = BrokerPressure(), Drain()

    def runner_factory(s: Settings, st: JobStore, p: Publisher) -> ConversionRunner:
        return runner

    app = create_app(
        settings,
        store=store,
        publisher=publisher,
        runner_factory=runner_factory,
        pressure=pressure,
        drain=drain,
    )
    with TestClient(app) as client:
        yield Harness(client, store, publisher, runner, settings.spool_dir, pressure, drain)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    """An app over fakes whose spool is tmp_path/spool."""
    yield from make_harness(replace(Settings(), spool_dir=tmp_path / "spool"))


def _is_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert set(body) >= {"type", "title", "status", "detail", "instance"}
    return body


def test_post_answers_202_with_location_and_job_document(harness: Harness) -> None:
    """A GeoJSON POST is accepted: 202, Location of the job, an accepted statusInfo."""
    response = harness.client.post(
        "/v1/features?collection=roads",
        content=DOCUMENT,
        headers={"Content-Type": "application/geo+json"},
    )
    assert response.status_code == 202
    body = response.json()
    job_id = body["jobID"]
    assert response.headers["location"] == f"/v1/jobs/{job_id}"
    assert body["status"] == "accepted"
    assert body["type"] == "process"
    assert body["processID"] == "ingest"
    assert body["progress"] == 0
    assert body["collection"] == "roads"
    assert body["counts"] == {
        "received": 0,
        "valid": 0,
        "repaired": 0,
        "rejected": 0,
        "stored": 0,
        "adjusted": {},
    }
    assert body["created"].endswith("Z")
    assert {link["rel"] for link in body["links"]} == {"self", "rejects"}
    assert harness.store.jobs[job_id].document_bytes == len(DOCUMENT)
    assert [m.job_id for m in harness.runner.submitted] == [job_id]


def test_spool_holds_exactly_the_bytes_sent_and_resumable_metadata(harness: Harness) -> None:
    """The body file is byte-identical to the request; the metadata names everything to resume."""
    response = harness.client.post(
        "/v1/features?source_crs=EPSG:3857&callback_url=https://example.org/hook",
        content=DOCUMENT,
        headers={"Content-Type": "application/x-ndjson; charset=utf-8"},
    )
    job_id = response.json()["jobID"]
    assert spool.body_path(harness.spool_dir, job_id).read_bytes() == DOCUMENT
    meta = spool.read_meta(harness.spool_dir, job_id)
    assert meta == harness.runner.submitted[0]
    assert meta.media_type == "application/x-ndjson"
    assert meta.content_encoding == "identity"
    assert meta.source_crs == "EPSG:3857"
    assert meta.callback_url == "https://example.org/hook"
    assert meta.collection == "features"
    assert meta.body_bytes == meta.document_bytes == len(DOCUMENT)
    assert datetime.fromisoformat(meta.created) <= datetime.now(UTC)


def test_gzip_body_is_spooled_as_sent(harness: Harness) -> None:
    """A gzip body stays compressed in the spool; the document size is the uncompressed one."""
    packed = gzip.compress(DOCUMENT)
    response = harness.client.post(
        "/v1/features",
        content=packed,
        headers={"Content-Type": "application/geo+json", "Content-Encoding": "gzip"},
    )
    assert response.status_code == 202
    job_id = response.json()["jobID"]
    assert spool.body_path(harness.spool_dir, job_id).read_bytes() == packed
    meta = spool.read_meta(harness.spool_dir, job_id)
    assert meta.content_encoding == "gzip"
    assert (meta.body_bytes, meta.document_bytes) == (len(packed), len(DOCUMENT))


def test_unsupported_media_type_is_415(harness: Harness) -> None:
    """A body that is not GeoJSON by its Content-Type is refused before it is read."""
    response = harness.client.post(
        "/v1/features", content=b"a,b\n1,2\n", headers={"Content-Type": "text/csv"}
    )
    body = _is_problem(response, 415)
    assert "application/geo+json" in response.headers["accept-post"]
    assert "text/csv" in body["detail"]
    assert not list(harness.spool_dir.iterdir())
    assert harness.runner.submitted == []


def test_unsupported_content_encoding_is_415(harness: Harness) -> None:
    """Only gzip and identity content codings are accepted."""
    response = harness.client.post(
        "/v1/features",
        content=DOCUMENT,
        headers={"Content-Type": "application/geo+json", "Content-Encoding": "br"},
    )
    _is_problem(response, 415)


@pytest.mark.parametrize("collection", ["Roads", "1roads", "a-b", "x" * 64, "drop table"])
def test_bad_collection_is_422(harness: Harness, collection: str) -> None:
    """A collection name that is not a safe identifier is a 422 problem naming the parameter."""
    response = harness.client.post(
        "/v1/features",
        params={"collection": collection},
        content=DOCUMENT,
        headers={"Content-Type": "application/geo+json"},
    )
    body = _is_problem(response, 422)
    assert body["parameter"] == "collection"
    assert body["type"] == "urn:geobus:problem:invalid-collection"
    assert harness.store.jobs == {}


def test_bad_source_crs_and_callback_url_are_422(harness: Harness) -> None:
    """An unknown CRS or a non-http(s) callback URL is refused with 422."""
    headers = {"Content-Type": "application/geo+json"}
    crs = harness.client.post(
        "/v1/features?source_crs=EPSG:999999", content=DOCUMENT, headers=headers
    )
    assert _is_problem(crs, 422)["parameter"] == "source_crs"
    url = harness.client.post(
        "/v1/features?callback_url=file:///etc/passwd", content=DOCUMENT, headers=headers
    )
    assert _is_problem(url, 422)["parameter"] == "callback_url"


def test_empty_body_is_400(harness: Harness) -> None:
    """An empty body is a 400 problem and leaves no spool file."""
    response = harness.client.post(
        "/v1/features", content=b"", headers={"Content-Type": "application/geo+json"}
    )
    _is_problem(response, 400)
    assert not list(harness.spool_dir.iterdir())


def test_get_job_returns_status_info(harness: Harness) -> None:
    """GET /v1/jobs/{id} shows the ledger's status, counts and progress."""
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    harness.store.jobs["j1"] = JobRecord(
        job_id="j1",
        status="running",
        collection="c",
        created=created,
        started=created,
        updated=created,
        features_total=10,
        counts=JobCounts(received=10, stored=4, rejected=1),
    )
    body = harness.client.get("/v1/jobs/j1").json()
    assert body["status"] == "running"
    assert body["progress"] == 50
    assert body["started"] == "2026-01-02T03:04:05Z"
    assert body["finished"] is None
    assert body["counts"]["stored"] == 4
    assert body["links"][0] == {
        "href": "/v1/jobs/j1",
        "rel": "self",
        "type": "application/json",
        "title": "this job",
    }


def test_unknown_job_is_404_problem(harness: Harness) -> None:
    """An unknown job id is a 404 problem naming the path as instance."""
    body = _is_problem(harness.client.get("/v1/jobs/nope"), 404)
    assert body["instance"] == "/v1/jobs/nope"
    _is_problem(harness.client.get("/v1/jobs/nope/rejects"), 404)
    _is_problem(harness.client.get("/no/such/route"), 404)


def test_wrong_method_is_405_problem_with_allow(harness: Harness) -> None:
    """A method a route does not serve is a 405 problem with the Allow header."""
    response = harness.client.get("/v1/features")
    _is_problem(response, 405)
    assert response.headers["allow"] == "POST"


def test_rejects_are_paged_with_next_link(harness: Harness) -> None:
    """GET rejects returns the page asked for and links the next one while more exist."""
    harness.store.jobs["j1"] = JobRecord(job_id="j1")
    harness.store.rejections["j1"] = [
        RejectionRecord(i, f"f{i}", "ingress", "ring_not_closed", "ring open", "/geometry", [1, 2])
        for i in range(5)
    ]
    first = harness.client.get("/v1/jobs/j1/rejects?limit=2").json()
    assert [r["index"] for r in first["rejects"]] == [0, 1]
    assert first["rejects"][0]["location"] == {"pointer": "/geometry", "coordinate": [1, 2]}
    assert first["rejects"][0]["id"] == "f0"
    (next_link,) = [link for link in first["links"] if link["rel"] == "next"]
    last = harness.client.get(next_link["href"].replace("offset=2", "offset=4")).json()
    assert [r["index"] for r in last["rejects"]] == [4]
    assert not [link for link in last["links"] if link["rel"] == "next"]
    assert next_link["href"] == "/v1/jobs/j1/rejects?limit=2&offset=2"
    _is_problem(harness.client.get("/v1/jobs/j1/rejects?limit=0"), 422)


def test_probes_follow_the_dependencies(harness: Harness) -> None:
    """/healthz is always 200; /readyz is 503 when the broker or the store is away."""
    assert harness.client.get("/readyz").status_code == 200
    harness.store.healthy = False
    _is_problem(harness.client.get("/readyz"), 503)
    harness.store.healthy = True
    harness.publisher.is_open = False
    _is_problem(harness.client.get("/readyz"), 503)
    assert harness.client.get("/healthz").status_code == 200


def test_store_failure_is_a_problem_and_leaves_no_spool(tmp_path: Path) -> None:
    """When the job cannot be recorded the client gets a problem and the spool is removed."""

    class BrokenStore(FakeStore):
        def create_job(self, job: JobRecord) -> None:
            raise RuntimeError("disk full")

    settings = replace(Settings(), spool_dir=tmp_path)
    runner = FakeRunner()
    app = create_app(
        settings,
        store=BrokenStore(),
        publisher=RecordingPublisher(),
        runner_factory=lambda s, st, p: runner,
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post(
            "/v1/features", content=DOCUMENT, headers={"Content-Type": "application/geo+json"}
        )
    _is_problem(response, 500)
    assert list(tmp_path.iterdir()) == []
    assert runner.submitted == []
    assert runner.closed


def test_idempotency_key_returns_the_first_job(harness: Harness) -> None:
    """A retry with the same Idempotency-Key gets 200 with the first job; one job, one spool."""
    headers = {"Content-Type": "application/geo+json", "Idempotency-Key": '"retry-1"'}
    first = harness.client.post("/v1/features", content=DOCUMENT, headers=headers)
    assert first.status_code == 202
    again = harness.client.post("/v1/features", content=DOCUMENT, headers=headers)
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["jobID"] == first.json()["jobID"]
    assert again.headers["location"] == first.headers["location"]
    assert len(harness.store.jobs) == 1
    assert len(harness.runner.submitted) == 1
    assert sorted(p.name for p in harness.spool_dir.iterdir()) == sorted(
        p.name
        for p in (
            spool.body_path(harness.spool_dir, first.json()["jobID"]),
            spool.meta_path(harness.spool_dir, first.json()["jobID"]),
        )
    )
    other = harness.client.post(
        "/v1/features", content=DOCUMENT, headers={**headers, "Idempotency-Key": "retry-2"}
    )
    assert other.status_code == 202
    assert len(harness.store.jobs) == 2


def test_bad_idempotency_key_is_400(harness: Harness) -> None:
    """An Idempotency-Key that is empty or too long is a 400 problem, nothing is spooled."""
    for key in ('""', "k" * 257):
        response = harness.client.post(
            "/v1/features",
            content=DOCUMENT,
            headers={"Content-Type": "application/geo+json", "Idempotency-Key": key},
        )
        body = _is_problem(response, 400)
        assert body["type"].endswith("invalid-idempotency-key")
    assert harness.store.jobs == {}


def test_callback_credentials_never_reach_the_problem_document(harness: Harness) -> None:
    """A refused callback_url is echoed with its user, password and query values redacted."""
    response = harness.client.post(
        "/v1/features",
        params={"callback_url": "ftp://alice:hunter2@example.org/x?token=s3cr3t"},
        content=DOCUMENT,
        headers={"Content-Type": "application/geo+json"},
    )
    body = _is_problem(response, 422)
    assert "hunter2" not in response.text
    assert "s3cr3t" not in response.text
    assert "alice" not in response.text
    assert "example.org" in body["detail"]
