"""Callbacks cannot reach internal addresses (SSRF), however the URL disguises them."""

from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest

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
        _Hits.hits.append((self.server.server_address[0], dict(self.headers), body))  # type: ignore[index]
        if _Hits.redirect_to and self.server.server_address[0] == "127.0.0.2":
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
    try:
        port = servers[0].server_address[1]
        assert await sender.deliver(f"http://127.0.0.2:{port}/hook", {"jobID": "j1"})
    finally:
        await sender.close()
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


async def test_loopback_is_refused_and_redirects_are_not_followed(
    servers: tuple[HTTPServer, HTTPServer],
) -> None:
    """Loopback is never called; a redirect from an allowed host to loopback is not followed."""
    allowed, loopback = servers
    sender = CallbackSender(
        allow=(ipaddress.ip_network("127.0.0.2/32"),), attempts=2, first_delay_s=0.01
    )
    try:
        assert not await sender.deliver(
            f"http://127.0.0.1:{loopback.server_address[1]}/", {"jobID": "j"}
        )
        assert _Hits.hits == []
        _Hits.redirect_to = f"http://127.0.0.1:{loopback.server_address[1]}/"
        assert not await sender.deliver(
            f"http://127.0.0.2:{allowed.server_address[1]}/", {"jobID": "j"}
        )
    finally:
        _Hits.redirect_to = ""
        await sender.close()
    assert {hit[0] for hit in _Hits.hits} == {"127.0.0.2"}
