"""``POST /v1/features`` under backpressure and shutdown, over in-memory fakes.

The broker's blocked signal is faked by setting the app's BrokerPressure, as
the monitor does when the canary publish is not confirmed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from geobus.settings import Settings
from tests.unit.fakes import FakeStore
from tests.unit.test_ingress_http import DOCUMENT, Harness, make_harness

GEOJSON = {"Content-Type": "application/geo+json"}


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Harness]:
    """An app over fakes with a 10 kB spool, 2 jobs per client, Retry-After 9."""
    settings = replace(
        Settings(),
        spool_dir=tmp_path / "spool",
        spool_max_bytes=10_000,
        max_jobs_per_client=2,
        retry_after=9,
        max_queue_depth=50,
    )
    yield from make_harness(settings)


def _refused(response: Any, status: int, code: str, harness: Harness) -> dict[str, Any]:
    """A problem document with Retry-After; nothing spooled, recorded or submitted."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["Retry-After"] == "9"
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:geobus:problem:{code}"
    assert body["status"] == status
    assert list(harness.spool_dir.iterdir()) == []
    assert isinstance(harness.store, FakeStore)
    return body


def test_blocked_broker_answers_503_then_accepts_once_unblocked(small: Harness) -> None:
    """While the broker blocks publishers POST is 503 + Retry-After; afterwards 202."""
    small.pressure.blocked = "publishes are not confirmed within 3 s"
    response = small.client.post("/v1/features", content=DOCUMENT, headers=GEOJSON)
    _refused(response, 503, "broker-blocked", small)
    assert small.store.jobs == {}
    assert small.runner.submitted == []
    small.pressure.blocked = None
    accepted = small.client.post("/v1/features", content=DOCUMENT, headers=GEOJSON)
    assert accepted.status_code == 202
    assert len(small.runner.submitted) == 1


def test_deep_queue_answers_503(small: Harness) -> None:
    """A stage queue deeper than GEOBUS_MAX_QUEUE_DEPTH turns POSTs away with 503."""
    small.pressure.set_depths({"geobus.validator": 51})
    response = small.client.post("/v1/features", content=DOCUMENT, headers=GEOJSON)
    body = _refused(response, 503, "queues-full", small)
    assert "geobus.validator" in body["detail"]


def test_third_job_of_one_client_is_429(small: Harness) -> None:
    """Two jobs of this client still converting: the third is 429 with Retry-After."""
    for _ in range(2):
        response = small.client.post("/v1/features", content=DOCUMENT, headers=GEOJSON)
        assert response.status_code == 202
    third = small.client.post("/v1/features", content=DOCUMENT, headers=GEOJSON)
    assert third.status_code == 429
    assert third.headers["Retry-After"] == "9"
    assert third.json()["type"] == "urn:geobus:problem:too-many-jobs"
    small.runner.finished.add(small.runner.submitted[0].job_id)
    again = small.client.post("/v1/features", content=DOCUMENT, headers=GEOJSON)
    assert again.status_code == 202


def test_spooled_metadata_records_client_and_batch_limits(small: Harness) -> None:
    """The metadata keeps the batch limits (a resume cuts the same batches) and the client."""
    response = small.client.post("/v1/features", content=DOCUMENT, headers=GEOJSON)
    assert response.status_code == 202
    meta = small.runner.submitted[0]
    settings = Settings()
    assert meta.batch_max_features == settings.batch_max_features
    assert meta.batch_max_bytes == settings.batch_max_bytes
    assert meta.max_message_bytes == settings.max_message_bytes
    assert meta.client == "testclient"


def test_declared_body_over_the_free_spool_is_503(small: Harness) -> None:
    """A Content-Length larger than the free spool budget is refused before the body is read."""
    response = small.client.post(
        "/v1/features", content=b" " * 6_000, headers=GEOJSON
    )  # 6 kB of 10 kB: accepted, and it stays spooled (the fake runner never finishes)
    assert response.status_code == 202
    refused = small.client.post("/v1/features", content=b" " * 5_000, headers=GEOJSON)
    assert refused.status_code == 503
    assert refused.json()["type"] == "urn:geobus:problem:spool-full"
    assert refused.headers["Retry-After"] == "9"
    assert len(list(small.spool_dir.iterdir())) == 2  # the first job's body and metadata


def test_declared_body_over_the_whole_spool_is_413(small: Harness) -> None:
    """A body that could never fit the spool is 413, not an invitation to retry."""
    response = small.client.post("/v1/features", content=b" " * 10_001, headers=GEOJSON)
    assert response.status_code == 413
    assert response.json()["type"] == "urn:geobus:problem:body-too-large"
    assert "Retry-After" not in response.headers


def test_chunked_body_crossing_the_budget_is_cut_off_and_deleted(small: Harness) -> None:
    """A chunked upload that crosses the spool budget ends in 503 and leaves no spool file."""

    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b" " * 1_000

    response = small.client.post("/v1/features", content=chunks(), headers=GEOJSON)
    _refused(response, 503, "spool-full", small)
    assert small.store.jobs == {}
    accepted = small.client.post("/v1/features", content=DOCUMENT, headers=GEOJSON)
    assert accepted.status_code == 202


def test_draining_refuses_posts_and_reports_not_ready(small: Harness) -> None:
    """After SIGTERM: POST is 503 shutting-down, /readyz 503, job reads still served."""
    accepted = small.client.post("/v1/features", content=DOCUMENT, headers=GEOJSON)
    small.drain.start()
    response = small.client.post("/v1/features", content=DOCUMENT, headers=GEOJSON)
    assert response.status_code == 503
    assert response.json()["type"] == "urn:geobus:problem:shutting-down"
    assert response.headers["Retry-After"] == "9"
    assert small.client.get("/readyz").status_code == 503
    assert small.client.get(accepted.headers["Location"]).status_code == 200
