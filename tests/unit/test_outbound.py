"""Callbacks cannot reach internal addresses (SSRF), however the URL disguises them."""

from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest
from prometheus_client import REGISTRY

from geobus.outbound import ForbiddenAddressError, GuardedBackend, check_url, forbidden
from geobus.signing import Verifier, parse_headers
from geobus.writer.callbacks import CallbackSender

REFUSED = [
    "127.0.0.1",
    "::1",
    "::ffff:127.0.0.1",
    "169.254.169.254",
    "0.0.0.0",  # noqa: S104 - the address under test, not a bind
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "100.64.0.1",
    "fd00::1",
    "fe80::1",
    "224.0.0.1",
    "ff02::1",
    "::",
    "2002:7f00:1::1",  # 6to4 around 127.0.0.1
    "::ffff:10.0.0.1",
    "240.0.0.1",
]


@pytest.mark.parametrize("address", REFUSED)
def test_internal_addresses_are_refused(address: str) -> None:
    """Loopback, private, link-local, CGNAT, ULA, multicast, unspecified, mapped forms."""
    assert forbidden(ipaddress.ip_address(address)) is not None


def test_public_addresses_and_the_allow_list() -> None:
    """Public addresses pass; an allow-listed internal network passes too."""
    assert forbidden(ipaddress.ip_address("8.8.8.8")) is None
    assert forbidden(ipaddress.ip_address("2606:4700::1111")) is None
    allow = (ipaddress.ip_network("10.20.0.0/16"),)
    assert forbidden(ipaddress.ip_address("10.20.3.4"), allow) is None
    assert forbidden(ipaddress.ip_address("10.21.3.4"), allow) is not None


@pytest.mark.parametrize(
    "url", ["ftp://example.com/x", "file:///etc/passwd", "/relative", "http://u:p@example.com/"]
)
def test_only_plain_http_urls_are_taken(url: str) -> None:
    """Other schemes, relative URLs and URLs with credentials are refused at submit."""
    with pytest.raises(ValueError, match="callback URL"):
        check_url(url)


@pytest.mark.parametrize(
    ("host", "resolved"),
    [
        ("2130706433", ["127.0.0.1"]),  # the decimal form of 127.0.0.1
        ("internal.example", ["10.0.0.1"]),  # a name that resolves inside
        ("mixed.example", ["10.0.0.1", "::1"]),
    ],
)
async def test_resolution_is_checked_at_connect_time(host: str, resolved: list[str]) -> None:
    """Whatever the name, the addresses it resolves to at connect time decide."""

    async def resolver(name: str, port: int) -> list[str]:
        assert name == host
        return resolved

    backend = GuardedBackend(resolver=resolver)
    with pytest.raises(ForbiddenAddressError, match="refusing"):
        await backend.connect_tcp(host, 80)


async def test_the_system_resolver_is_used_for_numeric_tricks() -> None:
    """2130706433 and 0.0.0.0 are refused through the real resolver too."""
    backend = GuardedBackend()
    for host in ("2130706433", "0.0.0.0", "localhost"):  # noqa: S104
        with pytest.raises(ForbiddenAddressError):
            await backend.connect_tcp(host, 80)


class _Hits(BaseHTTPRequestHandler):
    hits: ClassVar[list[tuple[str, dict[str, str], bytes]]] = []
    redirect_to: ClassVar[str] = ""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        host = str(self.server.server_address[0])  # type: ignore[index]
        _Hits.hits.append((host, dict(self.headers), body))
        if _Hits.redirect_to and host == "127.0.0.2":
            self.send_response(307)
            self.send_header("Location", _Hits.redirect_to)
        else:
            self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def servers() -> Iterator[tuple[HTTPServer, HTTPServer]]:
    """Two receivers: 127.0.0.2 (allow-listed in tests) and 127.0.0.1."""
    _Hits.hits.clear()
    pair = (HTTPServer(("127.0.0.2", 0), _Hits), HTTPServer(("127.0.0.1", 0), _Hits))
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in pair]
    for t in threads:
        t.start()
    yield pair
    for s in pair:
        s.shutdown()
        s.server_close()


async def test_signed_delivery_to_an_allowed_host(servers: tuple[HTTPServer, HTTPServer]) -> None:
    """A callback to an allow-listed host arrives once, signed per Standard Webhooks."""
    key = b"k" * 32
    sender = CallbackSender(key=key, allow=(ipaddress.ip_network("127.0.0.2/32"),))
    before = REGISTRY.get_sample_value("geobus_callbacks_total", {"outcome": "delivered"}) or 0
    try:
        port = servers[0].server_address[1]
        assert await sender.deliver(f"http://127.0.0.2:{port}/hook", {"jobID": "j1"})
    finally:
        await sender.close()
    after = REGISTRY.get_sample_value("geobus_callbacks_total", {"outcome": "delivered"})
    assert after == before + 1
    ((_, headers, body),) = _Hits.hits
    assert json.loads(body) == {"jobID": "j1"}
    verifier = Verifier(
        [key],
        parse_headers(
            headers["webhook-id"], headers["webhook-timestamp"], headers["webhook-signature"]
        ),
    )
    verifier.update(body)
    verifier.verify(now=int(headers["webhook-timestamp"]))


def _callbacks(outcome: str) -> float:
    return REGISTRY.get_sample_value("geobus_callbacks_total", {"outcome": outcome}) or 0.0


async def test_loopback_is_refused_and_redirects_are_not_followed(
    servers: tuple[HTTPServer, HTTPServer], caplog: pytest.LogCaptureFixture
) -> None:
    """Loopback is never called; a redirect from an allowed host to loopback is not followed;
    each is one final refusal (no retry), logged once without the URL's secrets, and counted."""
    allowed, loopback = servers
    sender = CallbackSender(
        allow=(ipaddress.ip_network("127.0.0.2/32"),), attempts=3, first_delay_s=0.01
    )
    before = _callbacks("refused")
    try:
        with caplog.at_level("WARNING", logger="geobus.writer.callbacks"):
            assert not await sender.deliver(
                f"http://127.0.0.1:{loopback.server_address[1]}/?token=s3cret", {"jobID": "j1"}
            )
            assert _Hits.hits == []
            _Hits.redirect_to = f"http://127.0.0.1:{loopback.server_address[1]}/"
            assert not await sender.deliver(
                f"http://127.0.0.2:{allowed.server_address[1]}/?token=s3cret", {"jobID": "j2"}
            )
    finally:
        _Hits.redirect_to = ""
        await sender.close()
    # One request to the redirector, none to loopback: the 307 was neither followed nor retried.
    assert [hit[0] for hit in _Hits.hits] == ["127.0.0.2"]
    assert _callbacks("refused") - before == 2
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "callback for job j1 refused: 127.0.0.1 is a loopback address",
        "callback for job j2 refused: the receiver answered 307 (a redirect, which geobus"
        " does not follow)",
    ]
    assert all(r.levelname == "WARNING" for r in caplog.records)
    assert not any("s3cret" in line for line in lines)


async def test_a_name_that_does_not_resolve_is_retried_not_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A resolver error is a transient connect failure: retried, then counted as failed."""

    async def resolver(name: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    sender = CallbackSender(resolver=resolver, attempts=2, first_delay_s=0.01)
    before = _callbacks("failed")
    try:
        with caplog.at_level("WARNING", logger="geobus.writer.callbacks"):
            assert not await sender.deliver("http://nowhere.example/", {"jobID": "j3"})
    finally:
        await sender.close()
    assert _callbacks("failed") - before == 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert all("failed (attempt" in line and "cannot resolve" in line for line in lines)


async def test_a_name_resolving_inside_is_refused_with_its_address() -> None:
    """The refusal names the host and the address it resolved to."""

    async def resolver(name: str, port: int) -> list[str]:
        return ["10.0.0.1"]

    backend = GuardedBackend(resolver=resolver)
    with pytest.raises(ForbiddenAddressError) as caught:
        await backend.connect_tcp("inside.example", 80)
    assert caught.value.why == "inside.example: 10.0.0.1 is a private address"


async def test_an_unexpected_error_is_counted_as_failed_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug below deliver() ends in one logged, counted failure, never in a dead task."""

    async def resolver(name: str, port: int) -> list[str]:
        raise RuntimeError("bug")

    sender = CallbackSender(resolver=resolver, attempts=3, first_delay_s=0.01)
    before = _callbacks("failed")
    try:
        with caplog.at_level("WARNING", logger="geobus.writer.callbacks"):
            assert not await sender.deliver("http://example.com/", {"jobID": "j4"})
    finally:
        await sender.close()
    assert _callbacks("failed") - before == 1
    assert [r.getMessage() for r in caplog.records] == [
        "callback for job j4 failed: unexpected error"
    ]
