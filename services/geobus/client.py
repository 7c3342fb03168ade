"""The HTTP client side of the CLI: ``geobus send`` and ``geobus jobs show``."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from geobus.codec.convert import framing_for_path

FINAL = frozenset({"successful", "failed", "dismissed"})
_MEDIA = {
    "json": "application/geo+json",
    "seq": "application/geo+json-seq",
    "ndjson": "application/x-ndjson",
}
CHUNK = 1 << 20


class Progress:
    """A one-line progress display on stderr when it is a terminal, silent otherwise."""

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = max(total, 1)
        self.enabled = sys.stderr.isatty()

    def show(self, done: float) -> None:
        """Redraw the line at ``done`` out of ``total``."""
        if not self.enabled:
            return
        share = min(done / self.total, 1.0)
        bar = "#" * int(share * 30)
        sys.stderr.write(f"\r{self.label} [{bar:<30}] {share:6.1%}")
        sys.stderr.flush()

    def close(self) -> None:
        """End the line."""
        if self.enabled:
            sys.stderr.write("\n")


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
) -> tuple[dict[str, Any], float]:
    """POST ``path``; return the job document and the seconds until the 202."""
    query = dict(params or {})
    if collection:
        query["collection"] = collection
    headers = {
        "Content-Type": media_type or media_type_for(path),
        "Content-Length": str(path.stat().st_size),
    }
    progress = Progress(f"upload {path.name}", path.stat().st_size)
    started = time.perf_counter()
    with httpx.Client(base_url=base_url, timeout=httpx.Timeout(60.0, read=300.0)) as client:
        response = client.post(
            "/v1/features", content=_chunks(path, progress), headers=headers, params=query
        )
    elapsed = time.perf_counter() - started
    if response.status_code != httpx.codes.ACCEPTED:
        raise RequestFailedError(response)
    document: dict[str, Any] = response.json()
    return document, elapsed


def job(base_url: str, job_id: str) -> dict[str, Any]:
    """The job document of ``job_id``."""
    with httpx.Client(base_url=base_url, timeout=30.0) as client:
        response = client.get(f"/v1/jobs/{job_id}")
    if response.status_code != httpx.codes.OK:
        raise RequestFailedError(response)
    document: dict[str, Any] = response.json()
    return document


def wait(
    base_url: str, job_id: str, *, poll_s: float = 0.25, timeout_s: float = 3600
) -> dict[str, Any]:
    """Follow the job until it is final; show its progress; return the last document."""
    progress = Progress(f"job {job_id[:8]}", 100)
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=base_url, timeout=30.0) as client:
        while True:
            response = client.get(f"/v1/jobs/{job_id}")
            if response.status_code != httpx.codes.OK:
                progress.close()
                raise RequestFailedError(response)
            document: dict[str, Any] = response.json()
            progress.show(document.get("progress") or 0)
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
        try:
            self.problem: dict[str, Any] = response.json()
        except ValueError:
            self.problem = {"status": response.status_code, "detail": response.text[:500]}
        title = self.problem.get("title", "")
        detail = self.problem.get("detail", "")
        super().__init__(f"HTTP {response.status_code} {title}: {detail}".strip())
