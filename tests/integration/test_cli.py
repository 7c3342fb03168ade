"""What a user types: ``geobus up``, ``send --wait``, ``jobs``, and the example consumer."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from bench import datasets
from geobus.signing import Verifier, parse_headers, parse_secret
from tests.integration.conftest import GEOBUS, Pipeline, free_port
from tests.integration.test_pipeline import post, wait_final

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec_" + base64.b64encode(b"geobus-test-callback-secret-0123").decode()


@pytest.fixture
def up(pipeline_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """``geobus up`` running, ready to take POSTs; SIGINT-ed after the test."""
    process = subprocess.Popen(
        [GEOBUS, "up"],
        env=pipeline_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{pipeline_env['GEOBUS_HTTP_PORT']}/readyz"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        process.kill()
        pytest.fail(f"geobus up did not become ready: {process.communicate()[0]}")
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
        from tests.integration.conftest import _delete_topology

        _delete_topology(pipeline_env["GEOBUS_AMQP_URL"], pipeline_env["GEOBUS_PREFIX"])


def test_up_and_send_wait(up: subprocess.Popen[str], pipeline_env: dict[str, str]) -> None:
    """send --wait follows the job to the end; up prints one line per job and stops cleanly."""
    sent = subprocess.run(
        [
            GEOBUS,
            "send",
            str(datasets.path("countries-land-10km")),
            "--collection",
            "land",
            "--wait",
        ],
        env=pipeline_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert sent.returncode == 0, sent.stderr
    assert "202 Accepted in" in sent.stdout
    assert "successful" in sent.stdout
    assert "220 received" in sent.stdout
    job_id = sent.stdout.split("job ", 1)[1].split()[0].rstrip(":")

    shown = subprocess.run(
        [GEOBUS, "jobs", "show", job_id, "--json"],
        env=pipeline_env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    document = json.loads(shown.stdout)
    assert document["status"] == "successful"
    assert document["counts"]["stored"] + document["counts"]["rejected"] == 220

    listed = subprocess.run(
        [GEOBUS, "jobs", "ls", "--json"],
        env=pipeline_env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert [j["jobID"] for j in json.loads(listed.stdout)] == [job_id]

    up.send_signal(signal.SIGINT)
    output, _ = up.communicate(timeout=60)
    assert up.returncode == 0, output
    assert f"job {job_id} successful: 220 received" in output
    assert "Traceback" not in output


def test_send_of_a_bad_file_exits_nonzero(
    up: subprocess.Popen[str], pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    """A document that is not GeoJSON ends as a failed job and a non-zero exit code."""
    bad = tmp_path / "bad.geojson"
    bad.write_text('{"type": "Topology", "objects": {}}')
    sent = subprocess.run(
        [GEOBUS, "send", str(bad), "--wait"],
        env=pipeline_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert sent.returncode == 1, sent.stdout + sent.stderr
    assert "failed" in sent.stdout
    assert "document_not_geojson" in sent.stdout or "not a GeoJSON" in sent.stdout


def _geobus(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GEOBUS, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_send_wait_json_and_exit_codes(
    up: subprocess.Popen[str], pipeline_env: dict[str, str]
) -> None:
    """send --wait --json prints only the final job document; the documented exit codes hold
    for an unknown job (4), an unreachable ingress (3) and an unknown dead letter (4)."""
    sent = _geobus(
        pipeline_env, "send", str(datasets.path("countries-land-10km")), "--wait", "--json"
    )
    assert sent.returncode == 0, sent.stderr
    document = json.loads(sent.stdout)  # one JSON document and nothing else
    assert document["status"] == "successful"
    assert document["progress"] == 100
    assert document["counts"]["stored"] + document["counts"]["rejected"] == 220
    assert sent.stderr == ""  # not a terminal: no progress bar; no per-request log lines

    unknown = _geobus(pipeline_env, "jobs", "show", "00000000-0000-4000-8000-000000000000")
    assert unknown.returncode == 4, unknown.stderr
    assert "HTTP 404" in unknown.stderr

    away = _geobus(
        pipeline_env, "jobs", "show", document["jobID"], "--url", f"http://127.0.0.1:{free_port()}"
    )
    assert away.returncode == 3, away.stderr

    listed = _geobus(pipeline_env, "dlq", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    assert set(json.loads(listed.stdout)) == {"validator", "reprojector", "writer"}
    missing = _geobus(pipeline_env, "dlq", "show", "no-such-message", "--json")
    assert missing.returncode == 4, missing.stderr
    assert missing.stdout == ""


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        verifier = Verifier(
            [parse_secret(SECRET)],
            parse_headers(
                self.headers["webhook-id"],
                self.headers["webhook-timestamp"],
                self.headers["webhook-signature"],
            ),
        )
        verifier.update(body)
        verifier.verify(now=time.time())  # raises on a bad signature: nothing is recorded
        _Receiver.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


def test_rejects_and_callback(pipeline: Pipeline) -> None:
    """us-counties: the rejected feature is listed with reason and location; the callback
    receives the final job document, signed."""
    server = HTTPServer(("127.0.0.1", free_port()), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        # Loopback is refused to callbacks unless allow-listed (SSRF guard).
        pipeline.env["GEOBUS_CALLBACK_ALLOW"] = "127.0.0.1/32"
        pipeline.env["GEOBUS_CALLBACK_SECRET"] = SECRET
        pipeline.start_all()
        callback = f"http://127.0.0.1:{server.server_port}/hook"
        accepted = post(pipeline, datasets.path("us-counties"), callback_url=callback)
        job = wait_final(pipeline, accepted["jobID"])
        assert job["status"] == "successful"
        assert job["counts"]["stored"] + job["counts"]["rejected"] == 3231
        assert job["counts"]["rejected"] >= 1
        rejects = httpx.get(
            f"{pipeline.base_url}/v1/jobs/{job['jobID']}/rejects", timeout=10
        ).json()
        listed = rejects["rejects"]
        assert len(listed) == job["counts"]["rejected"]
        first = listed[0]
        assert first["stage"] == "validator"
        assert first["reason"] == "invalid_topology"
        assert first["message"]
        assert len(first["location"]["coordinate"]) == 2
        deadline = time.monotonic() + 30
        while not _Receiver.received and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _Receiver.received, "no callback arrived"
        delivered = _Receiver.received[-1]
        assert delivered["jobID"] == job["jobID"]
        assert delivered["status"] == "successful"
        assert delivered["counts"] == job["counts"]
    finally:
        server.shutdown()
        server.server_close()


def test_example_consumer_decodes_stored_features(pipeline: Pipeline) -> None:
    """examples/consume_stored.py decodes feature.stored messages with the generated classes."""
    pipeline.start_all()
    consumer = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "examples" / "consume_stored.py"),
            "--prefix",
            pipeline.env["GEOBUS_PREFIX"],
            "--batches",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert consumer.stdout is not None
        assert consumer.stdout.readline().strip() == "listening"
        job = wait_final(pipeline, post(pipeline, datasets.path("countries-land-10km"))["jobID"])
        output, _ = consumer.communicate(timeout=60)
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait()
    assert consumer.returncode == 0, output
    assert f"job {job['jobID']} batch 0: 220 features" in output
    assert "#0 MultiPolygon" in output or "#0 Polygon" in output
