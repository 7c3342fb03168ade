"""The admin endpoints and their bearer token, over in-memory fakes (no broker, no database)."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from geobus import dlq
from geobus.errors import ConfigurationError, TransientError
from geobus.ingress import auth
from geobus.ingress.admin import BrokerDeadLetters
from geobus.ingress.app import create_app
from geobus.ingress.ports import JobRecord, JobStore, Publisher
from geobus.ingress.runner import ConversionRunner
from geobus.settings import Settings
from tests.unit.fakes import FakeRunner, FakeStore, RecordingPublisher

TOKEN = "t0ken-" + "a" * 40
OTHER = "t0ken-" + "b" * 40
BEARER = {"Authorization": f"Bearer {TOKEN}"}
ADMIN_GETS = ("/v1/jobs", "/v1/deadletters", "/v1/deadletters/m-1")
ADMIN_POSTS = ("/v1/deadletters/m-1/replay",)
T0 = datetime(2026, 11, 1, tzinfo=UTC)


@dataclass
class FakeDeadLetters:
    """Dead letters by message id; ``away`` makes every call fail like a broker that is away."""

    letters: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    failing: set[str] = field(default_factory=set)
    away: bool = False
    calls: list[tuple[str, str | None, str | None]] = field(default_factory=list)

    def _check(self) -> None:
        if self.away:
            raise TransientError("cannot connect to RabbitMQ: connection refused")

    async def listing(self, stage: str | None) -> dict[str, Any]:
        self.calls.append(("listing", None, stage))
        self._check()
        count = sum(len(v) for v in self.letters.values())
        groups = [{"reason": "error", "error_class": "MessageError", "count": count}]
        return {"validator": {"count": count, "groups": groups}}

    async def show(self, message_id: str, stage: str | None) -> list[dict[str, Any]]:
        self.calls.append(("show", message_id, stage))
        self._check()
        return list(self.letters.get(message_id, []))

    async def replay(self, message_id: str, stage: str | None) -> dict[str, Any]:
        self.calls.append(("replay", message_id, stage))
        self._check()
        if message_id in self.failing:
            return {"replayed": [], "failed": [[message_id, "UnroutableError: no route"]]}
        found = self.letters.pop(message_id, [])
        return {"replayed": [message_id] * len(found), "failed": []}


@dataclass
class Harness:
    client: TestClient
    store: FakeStore
    deadletters: FakeDeadLetters


def _harness(settings: Settings) -> Iterator[Harness]:
    store, deadletters = FakeStore(), FakeDeadLetters()

    def runner_factory(s: Settings, st: JobStore, p: Publisher) -> ConversionRunner:
        return FakeRunner()

    app = create_app(
        settings,
        store=store,
        publisher=RecordingPublisher(),
        runner_factory=runner_factory,
        deadletters=deadletters,
    )
    with TestClient(app) as client:
        yield Harness(client, store, deadletters)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    """An app over fakes with the admin token TOKEN."""
    yield from _harness(Settings(spool_dir=tmp_path / "spool", admin_token=TOKEN))


@pytest.fixture
def disabled(tmp_path: Path) -> Iterator[Harness]:
    """An app over fakes without an admin token."""
    yield from _harness(Settings(spool_dir=tmp_path / "spool"))


def _problem(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert set(body) >= {"type", "title", "status", "detail", "instance"}
    if code is not None:
        assert body["type"] == f"urn:geobus:problem:{code}"
    return body


def _job(n: int, status: str = "running") -> JobRecord:
    return JobRecord(job_id=str(uuid.uuid4()), status=status, created=T0 + timedelta(minutes=n))


# -- the token check itself ------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER   abc  ", "abc"),
        ("Basic YWxhZGRpbjpvcGVuc2VzYW1l", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token_is_read_from_the_bearer_scheme_only(
    header: str | None, token: str | None
) -> None:
    """Only ``Bearer <token>`` (scheme case-insensitive) yields a token."""
    assert auth.bearer_token(header) == token


def test_verdict_tells_disabled_missing_wrong_and_granted_apart() -> None:
    """No configured token disables; no/other-scheme header is missing; else compared."""
    assert auth.verdict(f"Bearer {TOKEN}", "") is auth.Verdict.DISABLED
    assert auth.verdict(None, TOKEN) is auth.Verdict.MISSING
    assert auth.verdict(f"Basic {TOKEN}", TOKEN) is auth.Verdict.MISSING
    assert auth.verdict(f"Bearer {OTHER}", TOKEN) is auth.Verdict.WRONG
    assert auth.verdict(f"Bearer {TOKEN[:-1]}", TOKEN) is auth.Verdict.WRONG
    assert auth.verdict(f"Bearer {TOKEN}x", TOKEN) is auth.Verdict.WRONG
    assert auth.verdict(f"Bearer {TOKEN.upper()}", TOKEN) is auth.Verdict.WRONG
    assert auth.verdict(f"Bearer {TOKEN}", TOKEN) is auth.Verdict.GRANTED


def test_tokens_are_compared_with_compare_digest_on_equal_length_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every comparison goes through hmac.compare_digest, on two 32-byte digests."""
    seen: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert auth.same_token(TOKEN, TOKEN)
    assert not auth.same_token("short", TOKEN)
    assert not auth.same_token(TOKEN + "longer", TOKEN)
    assert len(seen) == 3
    for a, b in seen:
        assert isinstance(a, bytes)
        assert isinstance(b, bytes)
        assert len(a) == len(b) == 32


def test_admin_token_setting_is_secret_and_checked_without_echo() -> None:
    """GEOBUS_ADMIN_TOKEN stays out of repr; a bad one fails start-up without printing it."""
    settings = Settings.from_env({"GEOBUS_ADMIN_TOKEN": TOKEN})
    assert settings.admin_token == TOKEN
    assert TOKEN not in repr(settings)
    weak = "hunter2-hunter2"
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env({"GEOBUS_ADMIN_TOKEN": weak})
    assert "GEOBUS_ADMIN_TOKEN" in str(raised.value)
    assert weak not in str(raised.value)
    spaced = "x" * 20 + " " + "y" * 20
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env({"GEOBUS_ADMIN_TOKEN": spaced})
    assert spaced not in str(raised.value)


# -- over HTTP ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"), [("GET", p) for p in ADMIN_GETS] + [("POST", p) for p in ADMIN_POSTS]
)
def test_admin_endpoints_without_token_are_401_with_bearer_challenge(
    harness: Harness, method: str, path: str
) -> None:
    """No Authorization header: 401 problem with WWW-Authenticate: Bearer; nothing is read."""
    response = harness.client.request(method, path)
    _problem(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"] == 'Bearer realm="geobus-admin"'
    response = harness.client.request(method, path, headers={"Authorization": f"Basic {TOKEN}"})
    _problem(response, 401, "unauthenticated")
    assert harness.deadletters.calls == []


@pytest.mark.parametrize(
    ("method", "path"), [("GET", p) for p in ADMIN_GETS] + [("POST", p) for p in ADMIN_POSTS]
)
def test_admin_endpoints_with_wrong_token_are_401_invalid_token(
    harness: Harness, method: str, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong token: 401 invalid_token; neither token appears in the answer or the log."""
    caplog.set_level(logging.DEBUG)
    response = harness.client.request(method, path, headers={"Authorization": f"Bearer {OTHER}"})
    _problem(response, 401, "invalid-token")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    for secret in (TOKEN, OTHER):
        assert secret not in response.text
        assert secret not in caplog.text
    assert "refused" in caplog.text
    assert harness.deadletters.calls == []


@pytest.mark.parametrize(
    ("method", "path"), [("GET", p) for p in ADMIN_GETS] + [("POST", p) for p in ADMIN_POSTS]
)
def test_admin_endpoints_without_configured_token_are_403_disabled(
    disabled: Harness, method: str, path: str
) -> None:
    """GEOBUS_ADMIN_TOKEN unset: 403 admin-disabled whatever the request carries."""
    for headers in ({}, BEARER, {"Authorization": "Bearer "}):
        response = disabled.client.request(method, path, headers=headers)
        body = _problem(response, 403, "admin-disabled")
        assert "GEOBUS_ADMIN_TOKEN" in body["detail"]
        assert "www-authenticate" not in response.headers
    assert disabled.deadletters.calls == []


def test_job_status_stays_readable_by_its_id_without_token(harness: Harness) -> None:
    """GET /v1/jobs/{id} and its rejects need no token: the uuid4 id is the capability."""
    response = harness.client.post(
        "/v1/features",
        content=json.dumps({"type": "FeatureCollection", "features": []}).encode(),
        headers={"Content-Type": "application/geo+json"},
    )
    assert response.status_code == 202
    job_id = response.json()["jobID"]
    assert uuid.UUID(job_id).version == 4
    assert harness.client.get(f"/v1/jobs/{job_id}").status_code == 200
    assert harness.client.get(f"/v1/jobs/{job_id}/rejects").status_code == 200
    _problem(harness.client.get("/v1/jobs"), 401)


def test_job_list_is_newest_first_and_paged_with_next_link(harness: Harness) -> None:
    """GET /v1/jobs: newest first, limit/offset pages, next link only while more exist."""
    jobs = [_job(n) for n in range(5)]
    for job in jobs:
        harness.store.create_job(job)
    newest_first = [j.job_id for j in reversed(jobs)]
    page = harness.client.get("/v1/jobs?limit=2", headers=BEARER)
    assert page.status_code == 200
    body = page.json()
    assert [j["jobID"] for j in body["jobs"]] == newest_first[:2]
    assert body["jobs"][0]["status"] == "running"
    assert {link["rel"]: link["href"] for link in body["links"]} == {
        "self": "/v1/jobs?limit=2&offset=0",
        "next": "/v1/jobs?limit=2&offset=2",
    }
    last = harness.client.get("/v1/jobs?limit=2&offset=4", headers=BEARER).json()
    assert [j["jobID"] for j in last["jobs"]] == newest_first[4:]
    assert [link["rel"] for link in last["links"]] == ["self"]
    everything = harness.client.get("/v1/jobs", headers=BEARER).json()
    assert [j["jobID"] for j in everything["jobs"]] == newest_first


def test_job_list_filters_by_status_and_refuses_bad_parameters(harness: Harness) -> None:
    """status= keeps one status (and stays in the links); bad status/limit/offset are 422."""
    failed = _job(1, "failed")
    for job in (_job(0), failed, _job(2)):
        harness.store.create_job(job)
    body = harness.client.get("/v1/jobs?status=failed&limit=1", headers=BEARER).json()
    assert [j["jobID"] for j in body["jobs"]] == [failed.job_id]
    assert body["links"] == [
        {
            "href": "/v1/jobs?limit=1&offset=0&status=failed",
            "rel": "self",
            "type": "application/json",
        }
    ]
    for query, parameter in (
        ("status=done", "status"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=x", "limit"),
        ("offset=-1", "offset"),
    ):
        body = _problem(harness.client.get(f"/v1/jobs?{query}", headers=BEARER), 422)
        assert body["parameter"] == parameter


def test_dead_letter_listing_is_passed_through_with_stage(harness: Harness) -> None:
    """GET /v1/deadletters answers the CLI's ls --json document; stage= is checked and passed."""
    harness.deadletters.letters["m-1"] = [{"message_id": "m-1"}]
    response = harness.client.get("/v1/deadletters", headers=BEARER)
    assert response.status_code == 200
    assert response.json() == {
        "validator": {
            "count": 1,
            "groups": [{"reason": "error", "error_class": "MessageError", "count": 1}],
        }
    }
    assert harness.client.get("/v1/deadletters?stage=writer", headers=BEARER).status_code == 200
    assert harness.deadletters.calls[-1] == ("listing", None, "writer")
    body = _problem(harness.client.get("/v1/deadletters?stage=nope", headers=BEARER), 422)
    assert body["parameter"] == "stage"


def test_dead_letter_show_answers_one_document_many_as_array_unknown_404(
    harness: Harness,
) -> None:
    """show: the document; two copies: an array; unknown id: 404 unknown-dead-letter."""
    harness.deadletters.letters["job:feature.ingested:3"] = [{"message_id": "x", "stage": "writer"}]
    harness.deadletters.letters["twice"] = [{"stage": "validator"}, {"stage": "writer"}]
    one = harness.client.get("/v1/deadletters/job:feature.ingested:3", headers=BEARER)
    assert one.json() == {"message_id": "x", "stage": "writer"}
    two = harness.client.get("/v1/deadletters/twice?stage=validator", headers=BEARER)
    assert two.json() == [{"stage": "validator"}, {"stage": "writer"}]
    assert harness.deadletters.calls[-1] == ("show", "twice", "validator")
    body = _problem(harness.client.get("/v1/deadletters/nope", headers=BEARER), 404)
    assert body["type"] == "urn:geobus:problem:unknown-dead-letter"


def test_dead_letter_ids_with_a_slash_are_addressable(harness: Harness) -> None:
    """A message id holding '/' (sent as %2F) reaches show and replay intact."""
    harness.deadletters.letters["a/b"] = [{"stage": "writer"}]
    assert harness.client.get("/v1/deadletters/a%2Fb", headers=BEARER).status_code == 200
    response = harness.client.post("/v1/deadletters/a%2Fb/replay", headers=BEARER)
    assert response.json() == {"replayed": ["a/b"], "failed": []}


def test_replay_answers_report_502_when_refused_404_when_unknown(harness: Harness) -> None:
    """replay: 200 with the report; 502 replay-failed when not taken; 404 when unknown."""
    harness.deadletters.letters["m-1"] = [{"stage": "validator"}]
    harness.deadletters.letters["m-2"] = [{"stage": "validator"}]
    harness.deadletters.failing.add("m-2")
    response = harness.client.post("/v1/deadletters/m-1/replay?stage=validator", headers=BEARER)
    assert response.status_code == 200
    assert response.json() == {"replayed": ["m-1"], "failed": []}
    assert harness.deadletters.calls[-1] == ("replay", "m-1", "validator")
    body = _problem(harness.client.post("/v1/deadletters/m-2/replay", headers=BEARER), 502)
    assert body["type"] == "urn:geobus:problem:replay-failed"
    assert body["failed"] == [["m-2", "UnroutableError: no route"]]
    assert body["replayed"] == []
    _problem(harness.client.post("/v1/deadletters/m-1/replay", headers=BEARER), 404)
    _problem(harness.client.get("/v1/deadletters/m-1/replay", headers=BEARER), 404)


def test_broker_away_is_503_with_retry_after(harness: Harness) -> None:
    """Every dead-letter endpoint answers 503 broker-unavailable + Retry-After when it fails."""
    harness.deadletters.away = True
    for method, path in [("GET", p) for p in ADMIN_GETS[1:]] + [("POST", ADMIN_POSTS[0])]:
        response = harness.client.request(method, path, headers=BEARER)
        _problem(response, 503, "broker-unavailable")
        assert response.headers["retry-after"] == "5"


# -- the real dead-letter access, without a broker ---------------------------------


def test_unreachable_broker_is_503_through_the_real_dlq_code(tmp_path: Path) -> None:
    """With nobody on the AMQP port, the real BrokerDeadLetters answers 503 quickly, no password."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(
        spool_dir=tmp_path / "spool",
        admin_token=TOKEN,
        amqp_url=f"amqp://guest:s3cret-pw@127.0.0.1:{port}/",
    )
    store = FakeStore()

    def runner_factory(s: Settings, st: JobStore, p: Publisher) -> ConversionRunner:
        return FakeRunner()

    app = create_app(
        settings, store=store, publisher=RecordingPublisher(), runner_factory=runner_factory
    )
    with TestClient(app) as client:
        for method, path in [("GET", p) for p in ADMIN_GETS[1:]] + [("POST", ADMIN_POSTS[0])]:
            response = client.request(method, path, headers=BEARER)
            _problem(response, 503, "broker-unavailable")
            assert "s3cret-pw" not in response.text


async def test_dead_letter_operations_are_bounded_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An operation that outlasts GEOBUS_ADMIN_TIMEOUT raises TransientError when it runs out."""

    async def hang(settings: Settings, stage: str | None = None) -> dict[str, Any]:
        await asyncio.sleep(60)
        return {}

    monkeypatch.setattr(dlq, "list_dead_letters", hang)
    access = BrokerDeadLetters(replace(Settings(), admin_timeout=0.2))
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(TransientError, match="GEOBUS_ADMIN_TIMEOUT"):
        await access.listing(None)
    assert loop.time() - start < 2


async def test_dead_letter_operations_run_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two listings at once do not overlap: each would hold part of the queue from the other."""
    running = 0
    most = 0

    async def count(settings: Settings, stage: str | None = None) -> dict[str, Any]:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.05)
        running -= 1
        return {"validator": {"count": 0, "groups": []}}

    monkeypatch.setattr(dlq, "list_dead_letters", count)
    access = BrokerDeadLetters(Settings())
    results = await asyncio.gather(*(access.listing(None) for _ in range(3)))
    assert len(results) == 3
    assert most == 1
