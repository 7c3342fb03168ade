"""Admission decisions of the ingress (draining, broker pressure, per client, spool budget)."""

from __future__ import annotations

from dataclasses import replace

from geobus.ingress.admission import STALE_AFTER, Admission, BrokerPressure, Drain
from geobus.ingress.spool import SpoolMeta
from geobus.settings import Settings

SETTINGS = replace(
    Settings(), max_queue_depth=100, max_jobs_per_client=2, spool_max_bytes=1000, retry_after=7
)


def _meta(job_id: str, client: str, body_bytes: int = 100) -> SpoolMeta:
    return SpoolMeta(
        job_id=job_id,
        collection="features",
        media_type="application/geo+json",
        content_encoding="identity",
        source_crs=None,
        callback_url=None,
        created="2026-01-01T00:00:00Z",
        body_bytes=body_bytes,
        document_bytes=body_bytes,
        client=client,
    )


def _admission(pending: list[SpoolMeta] | None = None, settings: Settings = SETTINGS) -> Admission:
    jobs = pending if pending is not None else []
    return Admission(settings, lambda: jobs, BrokerPressure(), Drain())


def test_an_idle_ingress_admits() -> None:
    """Nothing pending, broker fine: no refusal."""
    assert _admission().refusal("a", 10) is None


def test_draining_refuses_with_503_and_retry_after() -> None:
    """After SIGTERM every new document is 503 shutting-down with Retry-After."""
    admission = _admission()
    admission.drain.start()
    refusal = admission.refusal("a", 10)
    assert refusal is not None
    assert (refusal.status, refusal.code, refusal.retry_after) == (503, "shutting-down", 7)


def test_blocked_broker_refuses_with_503() -> None:
    """A blocked broker (memory alarm) is 503 broker-blocked; unblocked admits again."""
    admission = _admission()
    admission.broker.blocked = "publishes are not confirmed within 3 s"
    refusal = admission.refusal("a", 10)
    assert refusal is not None
    assert (refusal.status, refusal.code) == (503, "broker-blocked")
    assert "not confirmed" in refusal.detail
    admission.broker.blocked = None
    assert admission.refusal("a", 10) is None


def test_a_deep_stage_queue_refuses_until_it_drains() -> None:
    """Any stage queue over GEOBUS_MAX_QUEUE_DEPTH is 503 queues-full naming the queue."""
    admission = _admission()
    admission.broker.set_depths({"p.validator": 5, "p.writer": 101})
    refusal = admission.refusal("a", 10)
    assert refusal is not None
    assert (refusal.status, refusal.code) == (503, "queues-full")
    assert "p.writer" in refusal.detail
    admission.broker.set_depths({"p.validator": 5, "p.writer": 100})
    assert admission.refusal("a", 10) is None


def test_stale_depths_do_not_refuse() -> None:
    """Depths not refreshed for STALE_AFTER seconds stop counting (the monitor lost the broker)."""
    pressure = BrokerPressure()
    pressure.set_depths({"p.validator": 10_000}, at=0.0)
    assert pressure.deepest(now=1.0) == ("p.validator", 10_000)
    assert pressure.deepest(now=STALE_AFTER + 1) is None


def test_a_body_larger_than_the_whole_spool_is_413() -> None:
    """A Content-Length over GEOBUS_SPOOL_MAX_BYTES would never fit: 413, no Retry-After."""
    refusal = _admission().refusal("a", 1001)
    assert refusal is not None
    assert (refusal.status, refusal.code, refusal.retry_after) == (413, "body-too-large", None)


def test_a_body_over_the_free_spool_budget_is_503() -> None:
    """Spooled jobs hold their bytes: a declared body larger than what is left is 503."""
    admission = _admission([_meta("j1", "x", 600)])
    assert admission.spool_free() == 400
    refusal = admission.refusal("a", 401)
    assert refusal is not None
    assert (refusal.status, refusal.code) == (503, "spool-full")
    assert admission.refusal("a", 400) is None


def test_one_client_over_its_jobs_is_429_others_go_on() -> None:
    """A client with GEOBUS_MAX_JOBS_PER_CLIENT jobs pending gets 429; another client does not."""
    admission = _admission([_meta("j1", "a"), _meta("j2", "a")])
    refusal = admission.refusal("a", 10)
    assert refusal is not None
    assert (refusal.status, refusal.code, refusal.retry_after) == (429, "too-many-jobs", 7)
    assert admission.refusal("b", 10) is None


def test_uploads_in_progress_count_per_client_and_against_the_budget() -> None:
    """An upload being received holds its declared bytes and a job slot until it ends."""
    admission = _admission([_meta("j1", "a")])
    upload = admission.begin("a", 800)
    assert admission.spool_free() == 100
    refusal = admission.refusal("a", 10)
    assert refusal is not None
    assert refusal.status == 429
    upload.close()
    assert admission.spool_free() == 900
    assert admission.refusal("a", 10) is None


def test_a_chunked_upload_that_crosses_the_budget_is_stopped() -> None:
    """Without Content-Length the upload grows chunk by chunk until the budget is spent."""
    admission = _admission([_meta("j1", "x", 500)])
    upload = admission.begin("a", None)
    assert upload.grow(300)
    assert upload.grow(500)
    assert not upload.grow(501)
    other = admission.begin("b", None)
    assert not other.grow(1)


def test_the_client_is_the_configured_headers_last_value_or_the_remote_address() -> None:
    """GEOBUS_CLIENT_HEADER names the client (last comma-separated value); else the address."""
    plain = _admission()
    assert plain.client_of("10.0.0.1", {"x-forwarded-for": "1.1.1.1"}) == "10.0.0.1"
    behind_proxy = _admission(settings=replace(SETTINGS, client_header="x-forwarded-for"))
    assert behind_proxy.client_of("10.0.0.1", {"x-forwarded-for": "6.6.6.6, 2.2.2.2"}) == "2.2.2.2"
    assert behind_proxy.client_of("10.0.0.1", {}) == "10.0.0.1"
    assert behind_proxy.client_of(None, {}) == "unknown"
