"""The HTTP client side of the CLI: ``geobus send`` and ``geobus jobs show``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from geobus.codec.convert import framing_for_path
from geobus.progress import Progress

FINAL = frozenset({"successful", "failed", "dismissed"})
_MEDIA = {
    "json": "application/geo+json",
    "seq": "application/geo+json-seq",
    "ndjson": "application/x-ndjson",
}
CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Sent:
    """The ingress's answer to a POST of a document."""

    document: dict[str, Any]
    """The job document."""
    seconds: float
    """From the first byte sent to the answer."""
    replayed: bool = False
    """True when the idempotency key was known: the document is the first job's."""


def media_type_for(path: Path) -> str:
    """The media type to send a file as, from its name and first bytes."""
    with path.open("rb") as f:
        head = f.read(64)
    return _MEDIA[framing_for_path(path.name, head)]


def _chunks(path: Path, progress: Progress) -> Iterator[bytes]:
    sent = 0
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            sent += len(block)
            progress.show(sent)
            yield block
    progress.close()


def send(
    base_url: str,
    path: Path,
    *,
    collection: str | None = None,
    media_type: str | None = None,
    params: dict[str, str] | None = None,
    secret: str | None = None,
    idempotency_key: str | None = None,
) -> Sent:
    """POST ``path``; return the job document and the seconds until the answer.

    With a ``secret`` (``whsec_…``) the request carries Standard Webhooks
    signature headers (the file is read once more for the signature). An
    ``idempotency_key`` makes a resend safe: it is the ``webhook-id`` of a
    signed request, the ``Idempotency-Key`` of an unsigned one, and a resend
    that the ingress already accepted gets the first job (200) back.
    """
    query = dict(params or {})
    if collection:
        query["collection"] = collection
    headers = {
        "Content-Type": media_type or media_type_for(path),
        "Content-Length": str(path.stat().st_size),
    }
    if secret:
        headers.update(signature_headers(secret, path, message_id=idempotency_key))
    elif idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    progress = Progress(f"upload {path.name}", path.stat().st_size, in_bytes=True)
    started = time.perf_counter()
    with httpx.Client(base_url=base_url, timeout=httpx.Timeout(60.0, read=300.0)) as client:
        response = client.post(
            "/v1/features", content=_chunks(path, progress), headers=headers, params=query
        )
    elapsed = time.perf_counter() - started
    # 200: a resend with a key the ingress knows, answered with the first job.
    if response.status_code not in (httpx.codes.ACCEPTED, httpx.codes.OK):
        raise RequestFailedError(response)
    document: dict[str, Any] = response.json()
    return Sent(document, elapsed, replayed=response.status_code == httpx.codes.OK)


def signature_headers(secret: str, path: Path, *, message_id: str | None = None) -> dict[str, str]:
    """Standard Webhooks headers signing the file at ``path`` with ``secret``, now."""
    from geobus.errors import ConfigurationError
    from geobus.signing import parse_secret, sign

    try:
        key = parse_secret(secret)
    except ValueError as exc:  # the message never holds the secret
        raise ConfigurationError(f"cannot sign: {exc}") from None
    message_id = message_id or f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time())
    with path.open("rb") as f:
        chunks = iter(lambda: f.read(CHUNK), b"")
        signature = sign(key, message_id, timestamp, chunks)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def job(base_url: str, job_id: str) -> dict[str, Any]:
    """The job document of ``job_id``."""
    with httpx.Client(base_url=base_url, timeout=30.0) as client:
        response = client.get(f"/v1/jobs/{job_id}")
    if response.status_code != httpx.codes.OK:
        raise RequestFailedError(response)
    document: dict[str, Any] = response.json()
    return document


def wait(
    base_url: str,
    job_id: str,
    *,
    poll_s: float = 0.25,
    timeout_s: float = 3600,
) -> dict[str, Any]:
    """Follow the job until it is final; return the last document.

    Its ``progress`` is drawn on stderr when that is a terminal; TimeoutError
    after ``timeout_s``.
    """
    progress = Progress(f"job {job_id[:8]}", 100)
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=base_url, timeout=30.0) as client:
        while True:
            response = client.get(f"/v1/jobs/{job_id}")
            if response.status_code != httpx.codes.OK:
                progress.close()
                raise RequestFailedError(response)
            document: dict[str, Any] = response.json()
            progress.show(document.get("progress") or 0, str(document.get("status", "")))
            if document.get("status") in FINAL:
                progress.close()
                return document
            if time.monotonic() > deadline:
                progress.close()
                msg = f"job {job_id} not finished after {timeout_s:.0f} s"
                raise TimeoutError(msg)
            time.sleep(poll_s)


class RequestFailedError(Exception):
    """The ingress answered with an error; carries its problem document."""

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        try:
            self.problem: dict[str, Any] = response.json()
        except ValueError:
            self.problem = {"status": response.status_code, "detail": response.text[:500]}
        title = self.problem.get("title", "")
        detail = self.problem.get("detail", "")
        super().__init__(f"HTTP {response.status_code} {title}: {detail}".strip())
