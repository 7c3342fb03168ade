"""The real ``geobus ingress`` process: signed requests, idempotent retries, body limits.

Each test starts the ingress alone (no stages: nothing here needs a job to
finish) against the real RabbitMQ and a GeoPackage or PostGIS store, and
talks to it over TCP — raw sockets where a client must keep sending while
the ingress answers early (413 mid-stream).
"""

from __future__ import annotations

import base64
import gzip
import socket
import sqlite3
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from geobus.signing import sign
from geobus.store.base import JobRecord
from geobus.store.geopackage import GeoPackageStore
from geobus.store.postgis import PostgisStore
from tests.integration.conftest import GEOBUS, Pipeline

pytestmark = pytest.mark.integration

KEY = b"geobus-test-webhook-secret-0123456789"
OLD_KEY = b"geobus-test-webhook-secret-older-9876"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
OLD_SECRET = "whsec_" + base64.b64encode(OLD_KEY).decode()
MIB = 1024 * 1024
DOCUMENT = (
    b'{"type":"FeatureCollection","features":[{"type":"Feature","geometry":'
    b'{"type":"Point","coordinates":[1,2]},"properties":{"n":1}}]}'
)
GEOJSON = {"Content-Type": "application/geo+json"}


def _signed(
    body: bytes, key: bytes = KEY, message_id: str | None = None, at: int | None = None
) -> dict[str, str]:
    message = message_id or f"msg_{uuid.uuid4().hex}"
    moment = int(time.time()) if at is None else at
    return {
        **GEOJSON,
        "webhook-id": message,
        "webhook-timestamp": str(moment),
        "webhook-signature": sign(key, message, moment, [body]),
    }


def _jobs_in_store(pipeline: Pipeline) -> int:
    with sqlite3.connect(pipeline.env["GEOBUS_DATABASE_URL"]) as conn:
        count: int = conn.execute("SELECT count(*) FROM geobus_jobs").fetchone()[0]
        return count


def _unconverted_bodies(pipeline: Pipeline) -> list[Path]:
    """Body files whose job is not known to the store (refused uploads left behind)."""
    with sqlite3.connect(pipeline.env["GEOBUS_DATABASE_URL"]) as conn:
        known = {row[0] for row in conn.execute("SELECT job_id FROM geobus_jobs")}
    spool = Path(pipeline.env["GEOBUS_SPOOL_DIR"])
    return [p for p in spool.glob("*.body") if p.name.removesuffix(".body") not in known]


def _start(pipeline: Pipeline, **env: str) -> None:
    pipeline.env.update(env)
    pipeline.start("ingress", "ingress")
    pipeline.wait_ready()


def _problem_type(response: httpx.Response) -> str:
    assert response.headers["content-type"] == "application/problem+json", response.text
    kind: str = response.json()["type"]
    return kind.rsplit(":", 1)[1]


def test_signed_requests_end_to_end(pipeline: Pipeline) -> None:
    """Valid and rotated signatures: 202; tampered, wrong, unsigned, stale: 401, nothing kept."""
    _start(pipeline, GEOBUS_WEBHOOK_SECRETS=f"{SECRET} {OLD_SECRET}")
    url = pipeline.base_url + "/v1/features"
    assert httpx.post(url, content=DOCUMENT, headers=_signed(DOCUMENT)).status_code == 202
    rotated = httpx.post(url, content=DOCUMENT, headers=_signed(DOCUMENT, OLD_KEY))
    assert rotated.status_code == 202
    assert _jobs_in_store(pipeline) == 2

    tampered = DOCUMENT.replace(b"[1,2]", b"[1,3]")
    refusals = {
        "tampered": httpx.post(url, content=tampered, headers=_signed(DOCUMENT)),
        "wrong secret": httpx.post(url, content=DOCUMENT, headers=_signed(DOCUMENT, b"x" * 32)),
        "unsigned": httpx.post(url, content=DOCUMENT, headers=GEOJSON),
        "301 s old": httpx.post(
            url, content=DOCUMENT, headers=_signed(DOCUMENT, at=int(time.time()) - 301)
        ),
        "future": httpx.post(
            url, content=DOCUMENT, headers=_signed(DOCUMENT, at=int(time.time()) + 400)
        ),
    }
    codes = {name: (r.status_code, _problem_type(r)) for name, r in refusals.items()}
    assert codes == {
        "tampered": (401, "signature-invalid"),
        "wrong secret": (401, "signature-invalid"),
        "unsigned": (401, "signature-missing"),
        "301 s old": (401, "signature-expired"),
        "future": (401, "signature-expired"),
    }
    assert _jobs_in_store(pipeline) == 2
    assert _unconverted_bodies(pipeline) == []
    log = pipeline.log("ingress")
    assert "signature_invalid" in log
    assert SECRET not in log
    assert refusals["tampered"].request.headers["webhook-signature"][3:] not in log


def test_replayed_webhook_id_is_one_job_across_a_restart(pipeline: Pipeline) -> None:
    """A replayed webhook-id returns the first job (200), also after the ingress restarted."""
    _start(pipeline, GEOBUS_WEBHOOK_SECRETS=SECRET)
    url = pipeline.base_url + "/v1/features"
    first = httpx.post(url, content=DOCUMENT, headers=_signed(DOCUMENT, message_id="msg_replay"))
    assert first.status_code == 202
    again = httpx.post(url, content=DOCUMENT, headers=_signed(DOCUMENT, message_id="msg_replay"))
    assert (again.status_code, again.json()["jobID"]) == (200, first.json()["jobID"])
    assert again.headers["location"] == first.headers["location"]
    assert pipeline.stop("ingress") == {"ingress": 0}
    _start(pipeline)
    later = httpx.post(url, content=DOCUMENT, headers=_signed(DOCUMENT, message_id="msg_replay"))
    assert (later.status_code, later.json()["jobID"]) == (200, first.json()["jobID"])
    assert _jobs_in_store(pipeline) == 1
    assert _unconverted_bodies(pipeline) == []


def test_concurrent_duplicates_make_one_job(pipeline: Pipeline) -> None:
    """Eight concurrent POSTs with one Idempotency-Key: one 202, seven 200 naming the same job."""
    _start(pipeline, GEOBUS_MAX_JOBS_PER_CLIENT="16")
    url = pipeline.base_url + "/v1/features"
    headers = {**GEOJSON, "Idempotency-Key": f"race-{uuid.uuid4()}"}

    def post(_: int) -> httpx.Response:
        return httpx.post(url, content=DOCUMENT, headers=headers, timeout=30)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(8)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 7 + [202]
    assert len({r.json()["jobID"] for r in responses}) == 1
    assert _jobs_in_store(pipeline) == 1
    assert _unconverted_bodies(pipeline) == []
    other = httpx.post(url, content=DOCUMENT, headers={**GEOJSON, "Idempotency-Key": "another"})
    assert other.status_code == 202


# -- limits ----------------------------------------------------------------------


def _raw_post(
    port: int, head: dict[str, str], chunks: list[bytes], *, chunked: bool
) -> tuple[int, bytes, int]:
    """POST over a raw socket, sending until the ingress answers; (status, body, bytes sent)."""
    lines = ["POST /v1/features HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in head.items()]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        sock.setblocking(False)
        answer = b""
        for chunk in chunks:
            try:
                answer += sock.recv(65536)
                break  # the ingress answered: stop sending
            except BlockingIOError:
                pass
            frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if chunked else chunk
            try:
                sock.settimeout(10)
                sock.sendall(frame)
                sock.setblocking(False)
            except OSError:
                break  # the ingress closed the connection after answering
            sent += len(chunk)
        sock.settimeout(30)
        while b"\r\n\r\n" not in answer or not _complete(answer):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    head_part, _, body = answer.partition(b"\r\n\r\n")
    status = int(head_part.split(b" ", 2)[1])
    return status, body, sent


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_body_and_document_limits(pipeline: Pipeline) -> None:
    """413 by Content-Length unread, 413 mid-stream for chunked bodies, gzip bombs cut off early."""
    _start(pipeline, GEOBUS_MAX_BODY_BYTES="1MiB", GEOBUS_MAX_DOCUMENT_BYTES="1MiB")
    port = int(pipeline.env["GEOBUS_HTTP_PORT"])
    block = b" " * 65536

    # Content-Length one byte over: refused before a byte of the body is sent.
    status, body, _ = _raw_post(
        port, {**GEOJSON, "Content-Length": str(MIB + 1)}, [], chunked=False
    )
    assert (status, b"body-too-large" in body) == (413, True)

    # Exactly at the limit is fine (a document of spaces: the conversion fails it later).
    at_limit = httpx.post(pipeline.base_url + "/v1/features", content=b" " * MIB, headers=GEOJSON)
    assert at_limit.status_code == 202

    # Chunked, no length: cut off once it passes 1 MiB, long before the 64 MiB it would send.
    started = time.perf_counter()
    status, body, sent = _raw_post(port, GEOJSON, [block] * 1024, chunked=True)
    assert (status, b"body-too-large" in body) == (413, True)
    assert sent < 16 * MIB
    chunked_s = time.perf_counter() - started

    # 1 GiB of zeros as 16 gzip members of 64 MiB each (~1 MB on the wire).
    member = gzip.compress(bytes(64 * MIB), 9)
    bomb = member * 16
    assert len(bomb) < MIB
    pid = pipeline.processes["ingress"].pid
    before = _peak_rss_kib(pid)
    started = time.perf_counter()
    gz = {**GEOJSON, "Content-Encoding": "gzip", "Content-Length": str(len(bomb))}
    status, body, _ = _raw_post(
        port, gz, [bomb[i : i + 65536] for i in range(0, len(bomb), 65536)], chunked=False
    )
    bomb_s = time.perf_counter() - started
    grown = _peak_rss_kib(pid) - before
    assert (status, b"document-too-large" in body) == (413, True)
    assert bomb_s < 5
    assert grown < 32 * 1024, f"peak RSS grew {grown} KiB"

    corrupt = httpx.post(
        pipeline.base_url + "/v1/features",
        content=gzip.compress(DOCUMENT)[:-9],
        headers={**GEOJSON, "Content-Encoding": "gzip"},
    )
    assert (corrupt.status_code, _problem_type(corrupt)) == (400, "corrupt-gzip")
    assert _jobs_in_store(pipeline) == 1
    assert _unconverted_bodies(pipeline) == []
    print(
        f"chunked 413 after {chunked_s:.3f} s; 1 GiB gzip bomb 413 after {bomb_s:.3f} s,"
        f" ingress peak RSS +{grown} KiB"
    )


def test_a_stalled_body_is_answered_408_and_not_kept(pipeline: Pipeline) -> None:
    """A client that sends part of its body and stops gets 408 after the idle timeout."""
    _start(pipeline, GEOBUS_BODY_IDLE_TIMEOUT="1")
    port = int(pipeline.env["GEOBUS_HTTP_PORT"])
    head = f"POST /v1/features HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    head += "Content-Type: application/geo+json\r\nContent-Length: 100000\r\n\r\n"
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode() + DOCUMENT[:40])  # then nothing more
        answer = b""
        while not _complete(answer):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    waited = time.perf_counter() - started
    status = int(answer.split(b" ", 2)[1])
    assert (status, b"body-timeout" in answer) == (408, True), answer
    assert 0.9 < waited < 10
    assert _jobs_in_store(pipeline) == 0
    assert list(Path(pipeline.env["GEOBUS_SPOOL_DIR"]).glob("*.body")) == []
    # A client that keeps sending, slowly but within the timeout, is served.
    slow = [DOCUMENT[i : i + 20] for i in range(0, len(DOCUMENT), 20)]

    def dribble() -> Any:
        for piece in slow[:3]:
            time.sleep(0.4)
            yield piece
        yield b"".join(slow[3:])

    accepted = httpx.post(
        pipeline.base_url + "/v1/features",
        content=dribble(),
        headers={**GEOJSON, "Content-Length": str(len(DOCUMENT))},
    )
    assert accepted.status_code == 202, accepted.text


def test_wrong_method_is_a_json_problem(pipeline: Pipeline) -> None:
    """GET /v1/features on the real server: 405 problem document with Allow: POST."""
    _start(pipeline)
    response = httpx.get(pipeline.base_url + "/v1/features")
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 405
    assert response.json()["instance"] == "/v1/features"
    assert response.headers["allow"] == "POST"


# -- start-up --------------------------------------------------------------------


@pytest.mark.parametrize("command", [["ingress"], ["up"]])
def test_unsigned_non_loopback_refuses_to_start(
    pipeline_env: dict[str, str], command: list[str]
) -> None:
    """No secret and GEOBUS_HTTP_HOST=0.0.0.0: exit 2 with a message naming the way out."""
    env = {**pipeline_env, "GEOBUS_HTTP_HOST": "0.0.0.0"}  # noqa: S104 -- refused, never bound
    done = subprocess.run(
        [GEOBUS, *command], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done.stderr
    assert "GEOBUS_WEBHOOK_SECRETS" in done.stderr
    assert "GEOBUS_ALLOW_UNSIGNED=1" in done.stderr


def test_loopback_without_secret_warns(pipeline: Pipeline) -> None:
    """On loopback without secrets the ingress serves and says once that requests are unsigned."""
    _start(pipeline)
    assert pipeline.log("ingress").count("NOT signed") == 1


def test_send_signs_with_the_configured_secret(pipeline: Pipeline, tmp_path: Path) -> None:
    """``geobus send`` signs with GEOBUS_WEBHOOK_SECRETS or --secret-file; unsigned is refused."""
    _start(pipeline, GEOBUS_WEBHOOK_SECRETS=SECRET)
    document = tmp_path / "one.geojson"
    document.write_bytes(DOCUMENT)
    env = {**pipeline.env}
    by_env = subprocess.run(
        [GEOBUS, "send", str(document), "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert by_env.returncode == 0, by_env.stderr
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    without = {k: v for k, v in env.items() if k != "GEOBUS_WEBHOOK_SECRETS"}
    by_file = subprocess.run(
        [GEOBUS, "send", str(document), "--secret-file", str(secret_file)],
        env=without,
        capture_output=True,
        text=True,
        check=False,
    )
    assert by_file.returncode == 0, by_file.stderr
    unsigned = subprocess.run(
        [GEOBUS, "send", str(document)], env=without, capture_output=True, text=True, check=False
    )
    assert unsigned.returncode != 0
    assert "401" in unsigned.stderr
    assert _jobs_in_store(pipeline) == 2


# -- the stores' idempotency key ------------------------------------------------


def _job(key: str | None) -> JobRecord:
    return JobRecord(job_id=str(uuid.uuid4()), idempotency_key=key)


def _check_store_keys(open_store: Any) -> None:
    first, second = open_store(), open_store()  # two replicas of the ingress
    try:
        a, b = _job("webhook:m1"), _job("webhook:m1")
        assert first.create_job(a) is True
        assert second.create_job(b) is False  # the key is taken: no second job
        assert second.get_job(b.job_id) is None
        assert first.create_job(a) is False  # the same job again: nothing inserted
        owner = second.job_for_key("webhook:m1")
        assert owner is not None
        assert owner.job_id == a.job_id
        assert first.job_for_key("webhook:other") is None
        unkeyed = [_job(None), _job(None)]
        for job in unkeyed:
            assert first.create_job(job) is True  # NULL keys never collide
        assert all(second.get_job(job.job_id) is not None for job in unkeyed)
    finally:
        first.close()
        second.close()


def test_geopackage_keeps_keys_unique_and_migrates(tmp_path: Path) -> None:
    """GeoPackage: a taken key makes no second job; an old file without the column is migrated."""
    path = tmp_path / "old.gpkg"
    store = GeoPackageStore(path, 4326)
    store.ensure_schema()
    store.close()
    with sqlite3.connect(path) as conn:  # a ledger from before the key existed
        conn.execute("DROP INDEX geobus_jobs_idempotency_key")
        conn.execute("ALTER TABLE geobus_jobs DROP COLUMN idempotency_key")

    def opened() -> GeoPackageStore:
        s = GeoPackageStore(path, 4326)
        s.ensure_schema()
        return s

    _check_store_keys(opened)


def test_postgis_keeps_keys_unique_and_migrates(fresh_pg_url: str) -> None:
    """PostGIS: a taken key makes no second job; an old jobs table without the key is migrated."""
    schema = f"t{uuid.uuid4().hex[:8]}"
    store = PostgisStore(fresh_pg_url, 4326, schema)
    store.ensure_schema()
    store.close()
    with psycopg.connect(fresh_pg_url, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {schema}.jobs DROP COLUMN idempotency_key")

    def opened() -> PostgisStore:
        s = PostgisStore(fresh_pg_url, 4326, schema)
        s.ensure_schema()
        return s

    _check_store_keys(opened)
