"""Outgoing HTTP that cannot be turned against the network geobus runs in (SSRF).

Callback URLs come from clients. A URL is checked when it is submitted
(:func:`check_url`: http or https only) and, what matters, again when the
connection is made: :class:`GuardedBackend` resolves the host itself, refuses
every address that is not globally routable — loopback, RFC 1918, link-local
(169.254.169.254, the cloud metadata service), CGNAT 100.64/10, unique-local,
multicast, unspecified, reserved, and IPv4-mapped, 6to4 or Teredo forms of
those — and connects to the address it checked, so a DNS answer that changes
between check and connect (rebinding) gains nothing. Redirects are never
followed. An allow-list of networks opens the door for deployments whose
callbacks are internal.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpcore

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]


class ForbiddenAddressError(httpcore.ConnectError):
    """The callback's host resolves only to addresses geobus must not call.

    Final: calling again cannot change the answer (a name that resolves
    elsewhere later is checked again on that call). ``why`` says which
    address and what it is, without the URL (which may carry credentials).
    """

    def __init__(self, host: str, reasons: Sequence[str]) -> None:
        self.host = host
        self.reasons = tuple(reasons)
        super().__init__(f"refusing to connect to {host}: {self.why}")

    @property
    def why(self) -> str:
        """``"127.0.0.1 is a loopback address"``; a name first: ``"h.example: 10.0.0.1 is …"``."""
        joined = "; ".join(self.reasons)
        return joined if self.host.strip("[]") in joined else f"{self.host}: {joined}"


def check_url(url: str) -> str:
    """The URL if it is an absolute http(s) URL with a host; ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        msg = "a callback URL must be an absolute http:// or https:// URL"
        raise ValueError(msg)
    if parts.username or parts.password:
        msg = "a callback URL must not carry credentials"
        raise ValueError(msg)
    return url


def forbidden(address: IPAddress, allow: Sequence[IPNetwork] = ()) -> str | None:
    """Why ``address`` must not be called, or None when it may be."""
    if any(address in network for network in allow):
        return None
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv6 form that carries an IPv4 address is judged by that address.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is not None:
            reason = forbidden(embedded, allow)
            return None if reason is None else f"{reason} (inside {address})"
    for flag, reason in (
        ("is_unspecified", "an unspecified"),
        ("is_loopback", "a loopback"),
        ("is_link_local", "a link-local"),
        ("is_multicast", "a multicast"),
        ("is_private", "a private"),
        ("is_reserved", "a reserved"),
    ):
        if getattr(address, flag):
            return f"{address} is {reason} address"
    if not address.is_global:  # CGNAT 100.64/10 and other special ranges
        return f"{address} is not a globally routable address"
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses of ``host`` from the system resolver."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that only connects to allowed addresses."""

    def __init__(
        self,
        allow: Iterable[IPNetwork] = (),
        resolver: Resolver = system_resolver,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._allow = tuple(allow)
        self._resolve = resolver
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Resolve, check every address, connect to the first allowed one."""
        try:
            resolved = await self._resolve(host, port)
        except OSError as exc:
            # Not a refusal: a name that does not resolve now may later (retried).
            msg = f"cannot resolve {host}: {exc}"
            raise httpcore.ConnectError(msg) from exc
        if not resolved:
            msg = f"cannot resolve {host}: no addresses"
            raise httpcore.ConnectError(msg)
        reasons = []
        for text in resolved:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            reason = forbidden(address, self._allow)
            if reason is None:
                return await self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            reasons.append(reason)
        raise ForbiddenAddressError(host, reasons)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Never: callbacks go over TCP."""
        raise ForbiddenAddressError(path, ["unix sockets are not callback targets"])

    async def sleep(self, seconds: float) -> None:
        """Delegate to the inner backend."""
        await self._inner.sleep(seconds)


def guarded_pool(
    allow: Iterable[IPNetwork] = (), resolver: Resolver = system_resolver
) -> httpcore.AsyncConnectionPool:
    """A connection pool whose every connection passes :class:`GuardedBackend`."""
    return httpcore.AsyncConnectionPool(
        network_backend=GuardedBackend(allow, resolver), max_connections=16, retries=0
    )


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """``"10.1.0.0/16, fd00::/8"`` → networks; ValueError on a bad one."""
    return tuple(ipaddress.ip_network(part.strip()) for part in text.split(",") if part.strip())
