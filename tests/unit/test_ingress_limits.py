"""Body limits enforced while streaming: body bytes, inflated gzip bytes, corrupt gzip."""

from __future__ import annotations

import gzip
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from geobus.errors import ConfigurationError
from geobus.ingress.limits import INFLATE_STEP, BodyMeter, BodyRefusedError
from geobus.settings import Settings
from tests.unit.test_ingress_http import DOCUMENT, Harness, make_harness

MIB = 1024 * 1024
CHUNK = 64 * 1024


def _feed(meter: BodyMeter, body: bytes, chunk: int = CHUNK) -> None:
    for i in range(0, len(body), chunk):
        piece = body[i : i + chunk]
        meter.count(piece)
        if meter.gzip:
            meter.inflate(piece)
    meter.finish()


def _refusal(meter: BodyMeter, body: bytes) -> BodyRefusedError:
    with pytest.raises(BodyRefusedError) as info:
        _feed(meter, body)
    return info.value


def test_body_limit_is_exact() -> None:
    """A body of exactly the limit passes; one byte more is 413 body-too-large."""
    meter = BodyMeter("identity", 1000, 10_000)
    _feed(meter, b"x" * 1000, chunk=7)
    assert meter.document_bytes == 1000
    refusal = _refusal(BodyMeter("identity", 1000, 10_000), b"x" * 1001)
    assert (refusal.status, refusal.code) == (413, "body-too-large")


def test_declared_length_is_judged_before_reading() -> None:
    """A Content-Length over the limit is refused; at the limit or absent it is not."""
    meter = BodyMeter("identity", 1000, 10_000)
    meter.check_declared(1000)
    meter.check_declared(None)
    with pytest.raises(BodyRefusedError, match="Content-Length is 1001"):
        meter.check_declared(1001)


def test_identity_document_limit() -> None:
    """Without an encoding the document is the body: the document limit applies to it too."""
    refusal = _refusal(BodyMeter("identity", 10_000, 100), b"x" * 101)
    assert (refusal.status, refusal.code) == (413, "document-too-large")


def test_gzip_counts_the_inflated_size() -> None:
    """A gzip body's document size is its inflated size, also over several members."""
    body = gzip.compress(DOCUMENT) + gzip.compress(DOCUMENT)
    meter = BodyMeter("gzip", MIB, MIB)
    _feed(meter, body, chunk=5)
    assert meter.body_bytes == len(body)
    assert meter.document_bytes == 2 * len(DOCUMENT)


def test_gzip_bomb_is_cut_off_early_in_bounded_memory() -> None:
    """10 MB of zeros in ~10 KB of gzip, limit 1 MB: refused after ~1 MB inflated, memory flat."""
    bomb = gzip.compress(bytes(10 * MIB), 9)
    assert len(bomb) < 20_000
    meter = BodyMeter("gzip", MIB, MIB)
    tracemalloc.start()
    try:
        refusal = _refusal(meter, bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (refusal.status, refusal.code) == (413, "document-too-large")
    assert MIB < meter.document_bytes <= MIB + INFLATE_STEP
    # zlib's output buffer per step, not the 10 MB the bomb holds.
    assert peak < 4 * INFLATE_STEP


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"not gzip at all", "not gzip"),
        (gzip.compress(DOCUMENT)[:-9], "cut off inside the member"),
        (gzip.compress(DOCUMENT) + b"garbage", "garbage after the member"),
        (gzip.compress(DOCUMENT)[:10] + b"\xff" * 20 + gzip.compress(DOCUMENT)[30:], "bad data"),
    ],
)
def test_corrupt_gzip_is_400(body: bytes, why: str) -> None:
    """A body that is not a complete gzip stream is 400 corrupt-gzip."""
    refusal = _refusal(BodyMeter("gzip", MIB, MIB), body)
    assert (refusal.status, refusal.code) == (400, "corrupt-gzip"), why


def test_pending_output_is_drained_without_more_input() -> None:
    """Output zlib holds back after a full step is still counted (no input left)."""
    document = bytes(3 * INFLATE_STEP + 17)
    body = gzip.compress(document)
    meter = BodyMeter("gzip", MIB, 10 * MIB)
    _feed(meter, body, chunk=len(body))
    assert meter.document_bytes == len(document)


# -- over HTTP -------------------------------------------------------------------


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[Harness]:
    """An app taking bodies up to 16 KiB and documents up to 64 KiB."""
    settings = replace(
        Settings(), spool_dir=tmp_path / "spool", max_body_bytes=16384, max_document_bytes=65536
    )
    yield from make_harness(settings)


def _problem_code(response: object, status: int) -> str:
    assert getattr(response, "status_code", None) == status
    code: str = response.json()["type"].rsplit(":", 1)[1]  # type: ignore[attr-defined]
    return code


def test_content_length_over_the_limit_is_413(limited: Harness) -> None:
    """A declared body over GEOBUS_MAX_BODY_BYTES is 413 and nothing is spooled."""
    response = limited.client.post(
        "/v1/features", content=b" " * 16385, headers={"Content-Type": "application/geo+json"}
    )
    assert _problem_code(response, 413) == "body-too-large"
    assert list(limited.spool_dir.iterdir()) == []
    assert limited.store.jobs == {}


def test_chunked_body_over_the_limit_is_413(limited: Harness) -> None:
    """A body without Content-Length is cut off with 413 once it passes the limit."""

    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b" " * 1000

    response = limited.client.post(
        "/v1/features", content=chunks(), headers={"Content-Type": "application/geo+json"}
    )
    assert _problem_code(response, 413) == "body-too-large"
    assert list(limited.spool_dir.iterdir()) == []


def test_gzip_bomb_over_http_is_413(limited: Harness) -> None:
    """A gzip body inflating past GEOBUS_MAX_DOCUMENT_BYTES is 413; the spool is emptied."""
    bomb = gzip.compress(bytes(10 * MIB), 9)
    response = limited.client.post(
        "/v1/features",
        content=bomb,
        headers={"Content-Type": "application/geo+json", "Content-Encoding": "gzip"},
    )
    assert _problem_code(response, 413) == "document-too-large"
    assert list(limited.spool_dir.iterdir()) == []
    assert limited.store.jobs == {}


def test_corrupt_gzip_over_http_is_400(limited: Harness) -> None:
    """A gzip body that does not inflate is 400 corrupt-gzip; nothing is kept."""
    response = limited.client.post(
        "/v1/features",
        content=gzip.compress(DOCUMENT)[:-9],
        headers={"Content-Type": "application/geo+json", "Content-Encoding": "gzip"},
    )
    assert _problem_code(response, 400) == "corrupt-gzip"
    assert list(limited.spool_dir.iterdir()) == []


def test_byte_count_settings() -> None:
    """Byte limits take plain numbers or KiB/MiB/GiB; zero and junk fail at start-up."""
    settings = Settings.from_env(
        {"GEOBUS_MAX_BODY_BYTES": "1MiB", "GEOBUS_MAX_DOCUMENT_BYTES": "123"}
    )
    assert (settings.max_body_bytes, settings.max_document_bytes) == (MIB, 123)
    for bad in ("0", "1 MB", "-5"):
        with pytest.raises(ConfigurationError, match="GEOBUS_MAX_BODY_BYTES"):
            Settings.from_env({"GEOBUS_MAX_BODY_BYTES": bad})
