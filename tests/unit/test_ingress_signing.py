"""Signed POST /v1/features (Standard Webhooks) and idempotent retries, over in-memory fakes."""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from geobus.errors import ConfigurationError
from geobus.ingress import webhooks
from geobus.ingress.redaction import AccessLogFilter, redact_url
from geobus.settings import Settings
from geobus.signing import sign
from tests.unit.test_ingress_http import DOCUMENT, Harness, make_harness

KEY = os.urandom(32)
OLD_KEY = os.urandom(32)
SECRET = "whsec_" + base64.b64encode(KEY).decode()
OLD_SECRET = "whsec_" + base64.b64encode(OLD_KEY).decode()
CONTENT = {"Content-Type": "application/geo+json"}


def signed_headers(
    body: bytes, *, key: bytes = KEY, message_id: str = "msg_1", at: int | None = None
) -> dict[str, str]:
    """Content-Type plus the three Standard Webhooks headers for ``body``."""
    moment = int(time.time()) if at is None else at
    return {
        **CONTENT,
        "webhook-id": message_id,
        "webhook-timestamp": str(moment),
        "webhook-signature": sign(key, message_id, moment, [body]),
    }


@pytest.fixture
def signed(tmp_path: Path) -> Iterator[Harness]:
    """An app whose requests must be signed with SECRET or OLD_SECRET (rotation)."""
    settings = replace(
        Settings(), spool_dir=tmp_path / "spool", webhook_secrets=(SECRET, OLD_SECRET)
    )
    yield from make_harness(settings)


def _problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:geobus:problem:{code}"
    return body


def _nothing_kept(harness: Harness) -> None:
    assert harness.store.jobs == {}
    assert harness.runner.submitted == []
    assert list(harness.spool_dir.iterdir()) == []


def test_valid_signature_is_accepted(signed: Harness) -> None:
    """A request signed with a configured secret is accepted with 202."""
    response = signed.client.post(
        "/v1/features", content=DOCUMENT, headers=signed_headers(DOCUMENT)
    )
    assert response.status_code == 202
    assert len(signed.store.jobs) == 1


def test_rotated_secret_is_accepted(signed: Harness) -> None:
    """A request signed with the second (older) secret is accepted too."""
    headers = signed_headers(DOCUMENT, key=OLD_KEY)
    assert signed.client.post("/v1/features", content=DOCUMENT, headers=headers).status_code == 202


def test_one_of_several_signatures_may_match(signed: Harness) -> None:
    """Space-separated signatures: one matching is enough."""
    headers = signed_headers(DOCUMENT)
    wrong = signed_headers(DOCUMENT, key=os.urandom(32))["webhook-signature"]
    headers["webhook-signature"] = f"{wrong} {headers['webhook-signature']}"
    assert signed.client.post("/v1/features", content=DOCUMENT, headers=headers).status_code == 202


def test_tampered_body_is_401_and_nothing_is_kept(signed: Harness) -> None:
    """One byte changed after signing: 401, the spool file deleted, no job, nothing submitted."""
    headers = signed_headers(DOCUMENT)
    tampered = DOCUMENT.replace(b'"n": 1', b'"n": 2')
    response = signed.client.post("/v1/features", content=tampered, headers=headers)
    body = _problem(response, 401, "signature-invalid")
    assert response.headers["www-authenticate"].startswith("Webhook-Signature")
    assert headers["webhook-signature"].split(",", 1)[1] not in response.text
    assert body["instance"] == "/v1/features"
    _nothing_kept(signed)


def test_wrong_secret_is_401(signed: Harness) -> None:
    """A signature made with a secret the ingress does not hold is refused."""
    headers = signed_headers(DOCUMENT, key=os.urandom(32))
    response = signed.client.post("/v1/features", content=DOCUMENT, headers=headers)
    _problem(response, 401, "signature-invalid")
    _nothing_kept(signed)


def test_unsigned_request_is_401_when_secrets_are_configured(signed: Harness) -> None:
    """With secrets configured, a request without signature headers is refused unread."""
    response = signed.client.post("/v1/features", content=DOCUMENT, headers=CONTENT)
    _problem(response, 401, "signature-missing")
    _nothing_kept(signed)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"webhook-timestamp": "soon"}, "signature-malformed"),
        ({"webhook-timestamp": "+17"}, "signature-malformed"),
        ({"webhook-signature": "v2,abc"}, "signature-malformed"),
        ({"webhook-id": "x" * 257}, "signature-malformed"),
    ],
)
def test_malformed_headers_are_401(signed: Harness, change: dict[str, str], code: str) -> None:
    """Malformed signature headers are refused with a code naming the problem."""
    headers = {**signed_headers(DOCUMENT), **change}
    _problem(signed.client.post("/v1/features", content=DOCUMENT, headers=headers), 401, code)
    _nothing_kept(signed)


@pytest.mark.parametrize("offset", [-301, 301, -3600])
def test_timestamp_outside_tolerance_is_401(signed: Harness, offset: int) -> None:
    """A webhook-timestamp 301 s old, 301 s in the future or an hour old is refused."""
    headers = signed_headers(DOCUMENT, at=int(time.time()) + offset)
    response = signed.client.post("/v1/features", content=DOCUMENT, headers=headers)
    _problem(response, 401, "signature-expired")
    _nothing_kept(signed)


def test_replayed_webhook_id_returns_the_first_job(signed: Harness) -> None:
    """The same webhook-id again (a sender's retry): 200 with the first job, one job stored."""
    first = signed.client.post(
        "/v1/features", content=DOCUMENT, headers=signed_headers(DOCUMENT, message_id="msg_r")
    )
    assert first.status_code == 202
    # A retry is signed anew (new timestamp), possibly with the other secret.
    retry = signed_headers(DOCUMENT, message_id="msg_r", key=OLD_KEY, at=int(time.time()) - 5)
    again = signed.client.post("/v1/features", content=DOCUMENT, headers=retry)
    assert again.status_code == 200
    assert again.json()["jobID"] == first.json()["jobID"]
    assert again.headers["location"] == first.headers["location"]
    assert len(signed.store.jobs) == 1
    assert len(signed.runner.submitted) == 1
    assert len(list(signed.spool_dir.iterdir())) == 2  # the first job's body and metadata


def test_replayed_webhook_id_with_a_bad_signature_learns_nothing(signed: Harness) -> None:
    """A known webhook-id with a wrong signature is 401, not the existing job."""
    first = signed.client.post(
        "/v1/features", content=DOCUMENT, headers=signed_headers(DOCUMENT, message_id="msg_s")
    )
    forged = signed_headers(DOCUMENT, message_id="msg_s", key=os.urandom(32))
    response = signed.client.post("/v1/features", content=DOCUMENT, headers=forged)
    _problem(response, 401, "signature-invalid")
    assert first.json()["jobID"] not in response.text


def test_signature_values_are_not_logged(signed: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """Refusals log the reason and webhook-id, never a signature."""
    caplog.set_level(logging.DEBUG)
    headers = signed_headers(DOCUMENT, key=os.urandom(32))
    signed.client.post("/v1/features", content=DOCUMENT, headers=headers)
    signature = headers["webhook-signature"].split(",", 1)[1]
    assert "signature_invalid" in caplog.text
    assert signature not in caplog.text
    assert SECRET not in caplog.text


def test_idempotency_keys_are_scoped() -> None:
    """Unsigned keys are scoped per client; malformed keys are refused."""
    assert (
        webhooks.idempotency_key(None, {"idempotency-key": "k1"}, "10.0.0.1") == "key:10.0.0.1:k1"
    )
    assert webhooks.idempotency_key(None, {"webhook-id": "m"}, "c") == "key:c:m"
    assert webhooks.idempotency_key(None, {}, "c") is None
    with pytest.raises(webhooks.InvalidKeyError):
        webhooks.idempotency_key(None, {"idempotency-key": "caf\u00e9"}, "c")


@pytest.mark.parametrize(
    ("host", "allow", "refused"),
    [
        ("127.0.0.1", False, False),
        ("::1", False, False),
        ("localhost", False, False),
        ("0.0.0.0", False, True),  # noqa: S104 -- the address under test
        ("::", False, True),
        ("ingress.example.org", False, True),
        ("0.0.0.0", True, False),  # noqa: S104 -- the address under test
    ],
)
def test_unsigned_exposure_is_refused(
    host: str, allow: bool, refused: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Without secrets only loopback serves, unless GEOBUS_ALLOW_UNSIGNED; a warning says so."""
    settings = replace(Settings(), http_host=host, allow_unsigned=allow)
    if refused:
        with pytest.raises(ConfigurationError, match="GEOBUS_WEBHOOK_SECRETS"):
            webhooks.check_exposure(settings)
    else:
        with caplog.at_level(logging.WARNING):
            webhooks.check_exposure(settings)
        assert "NOT signed" in caplog.text


def test_signed_deployment_may_listen_anywhere() -> None:
    """With secrets configured, a non-loopback address is fine."""
    settings = replace(Settings(), http_host="0.0.0.0", webhook_secrets=(SECRET,))  # noqa: S104
    webhooks.check_exposure(settings)


def test_settings_parse_secret_lists_without_echoing_them() -> None:
    """GEOBUS_WEBHOOK_SECRETS takes comma/space lists; a bad one fails without printing it."""
    settings = Settings.from_env({"GEOBUS_WEBHOOK_SECRETS": f"{SECRET}, {OLD_SECRET}"})
    assert settings.webhook_secrets == (SECRET, OLD_SECRET)
    assert SECRET not in repr(settings)
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"GEOBUS_WEBHOOK_SECRETS": f"{SECRET} whsec_short"})
    assert SECRET not in str(info.value)
    assert "whsec_short" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://u:p@h.example/cb?token=t&x=1#f", "https://***@h.example/cb?token=***&x=***#***"),
        ("https://h.example/cb", "https://h.example/cb"),
        ("http://h.example/cb?s3cr3t", "http://h.example/cb?***"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    """Credentials, query values and fragments of client URLs are masked."""
    assert redact_url(url) == shown


def test_access_log_masks_query_values() -> None:
    """uvicorn's access line keeps method, path and status but no query value."""
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("1.2.3.4:5", "POST", "/v1/features?callback_url=https%3A%2F%2Fu%3Apw%40h%2F", "1.1", 202),
        None,
    )
    assert AccessLogFilter().filter(record)
    assert record.getMessage() == '1.2.3.4:5 - "POST /v1/features?callback_url=*** HTTP/1.1" 202'
