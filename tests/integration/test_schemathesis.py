"""Schemathesis against the running ingress, with signing and the admin token configured.

``st run`` reads ``/openapi.json`` from a real ``geobus ingress`` (RabbitMQ,
PostGIS) and sends generated requests to every operation — each POST of a
document signed by ``tests/integration/schemathesis_hooks.py`` — checking
that no answer is a server error and that every status, content type and
body is the one the document describes. The run is bounded (examples per
operation, one worker) to stay well under two minutes; its summary is
printed (``pytest -s`` shows it).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from geobus.signing import parse_secret, sign
from tests.integration.conftest import Pipeline

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ST = str(Path(sys.executable).parent / "st")
SECRET = "whsec_" + base64.b64encode(b"geobus-schemathesis-secret-0123").decode()
TOKEN = "schemathesis-admin-token-0123456789abcdef"  # noqa: S105 (the test's own)
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    # Also held, and cheap: 405 with Allow for undocumented methods, documented headers.
    "response_headers_conformance",
    "unsupported_method",
    "allow_header_conformance",
)
MAX_EXAMPLES = int(os.environ.get("GEOBUS_SCHEMATHESIS_EXAMPLES", "25"))
SEED = os.environ.get("GEOBUS_SCHEMATHESIS_SEED", "20261127")


@pytest.fixture
def signed_ingress(pipeline: Pipeline, fresh_pg_url: str) -> Pipeline:
    """The ingress alone (no stages needed to answer), requiring signatures and the token."""
    pipeline.env.update(
        GEOBUS_WEBHOOK_SECRETS=SECRET,
        GEOBUS_ADMIN_TOKEN=TOKEN,
        GEOBUS_DATABASE_URL=fresh_pg_url,
        # Generated documents are tiny: room for many before 429 (documented anyway).
        GEOBUS_MAX_JOBS_PER_CLIENT="64",
    )
    pipeline.start("ingress", "ingress")
    pipeline.wait_ready()
    return pipeline


def test_schemathesis_finds_nothing(signed_ingress: Pipeline, tmp_path: Path) -> None:
    """Every operation answers as /openapi.json says: no 5xx, documented statuses, bodies
    and content types, with signed POSTs and the admin token."""
    base = signed_ingress.base_url
    # The hooks sign; an unsigned POST must be refused, or the run proves nothing about it.
    unsigned = httpx.post(
        f"{base}/v1/features", content=b"{}", headers={"Content-Type": "application/json"}
    )
    assert unsigned.status_code == 401
    report = tmp_path / "report.json"
    env = signed_ingress.env | {
        "SCHEMATHESIS_HOOKS": "tests.integration.schemathesis_hooks",
        "PYTHONPATH": str(ROOT),
    }
    command = [
        ST,
        "run",
        f"{base}/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        SEED,
        "--workers",
        "1",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--request-timeout",
        "30",
        "--generation-database",
        "none",
        "--no-color",
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]
    # In tmp_path: schemathesis keeps a cache of failures in ./.schemathesis.
    done = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    print(done.stdout[-6000:])
    assert done.returncode == 0, (
        f"schemathesis found problems:\n{done.stdout[-20000:]}\n{done.stderr[-4000:]}"
        f"\ningress log:\n{signed_ingress.log('ingress')[-8000:]}"
    )
    summary = json.loads(report.read_text())
    assert summary, "schemathesis wrote an empty report"
    log = signed_ingress.log("ingress")
    assert "Traceback" not in log, log[-8000:]


def _signed_post(base: str, params: dict[str, str]) -> httpx.Response:
    body = b'{"type": "FeatureCollection", "features": []}'
    message_id, timestamp = str(uuid.uuid4()), int(time.time())
    headers = {
        "Content-Type": "application/geo+json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(parse_secret(SECRET), message_id, timestamp, [body]),
    }
    return httpx.post(f"{base}/v1/features", params=params, content=body, headers=headers)


def test_inputs_that_gave_server_errors(signed_ingress: Pipeline) -> None:
    """Found while fuzzing against PostGIS: a NUL in a job id, a callback_url with NUL,
    a broken IPv6 host or a port beyond 65535 are 404/422 problems, never 500."""
    base = signed_ingress.base_url
    for path in ("/v1/jobs/%00", "/v1/jobs/a%00b/rejects"):
        answer = httpx.get(base + path)
        assert answer.status_code == 404, (path, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
    for url in (
        "http://a.example/\x00",
        "http://exa\x00mple.com/",
        "http://[::1",
        "http://a:99999/",
    ):
        answer = _signed_post(base, {"callback_url": url})
        assert answer.status_code == 422, (url, answer.text)
        assert answer.json()["parameter"] == "callback_url"
    assert _signed_post(base, {}).status_code == 202
    assert "Traceback" not in signed_ingress.log("ingress")
