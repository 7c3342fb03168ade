"""TLS to RabbitMQ (``amqps://``) with certificate verification, without touching the broker.

A throw-away CA and a server certificate for ``localhost`` are made with the
openssl CLI; a small TLS-terminating TCP proxy in the test forwards to the
real RabbitMQ on 127.0.0.1:5672. geobus's own publisher and consumer loop
connect through ``amqps://…@localhost:<port>/?cafile=…`` (aiormq reads
``cafile``, ``capath``, ``cadata``, ``certfile``, ``keyfile`` and
``no_verify_ssl`` from the URL's query).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import aio_pika
import pytest
import shapely
from aio_pika.abc import AbstractIncomingMessage
from google.protobuf.message import Message as ProtoMessage

from geobus.broker import routing, wire
from geobus.broker.consumer import run_consumer
from geobus.broker.publisher import Publisher
from geobus.broker.topology import declare_from_settings, delete, topology
from geobus.errors import TransientError
from geobus.settings import Settings
from geobus.v1 import feature_pb2

pytestmark = pytest.mark.integration

BROKER = ("127.0.0.1", 5672)


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


def _ca(directory: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN=geobus test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip


@dataclass(frozen=True)
class Certificates:
    """A CA, a server certificate for DNS:localhost signed by it, and an unrelated CA."""

    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """Throw-away certificates in a temporary directory."""
    d = tmp_path_factory.mktemp("tls")
    _ca(d, "ca")
    _ca(d, "other-ca")
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost", cwd=d,
    )  # fmt: skip
    (d / "server.ext").write_text(
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "1", "-out", "server.pem", "-extfile", "server.ext", cwd=d,
    )  # fmt: skip
    return Certificates(d / "ca.pem", d / "other-ca.pem", d / "server.pem", d / "server.key")


@dataclass
class TlsProxy:
    """TLS on ``port``, plain TCP to the broker; counts completed TLS handshakes."""

    port: int = 0
    handshakes: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


@pytest.fixture
async def tls_proxy(certificates: Certificates) -> AsyncIterator[TlsProxy]:
    """A TLS-terminating proxy to 127.0.0.1:5672 on a free local port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates.server_cert, certificates.server_key)
    proxy = TlsProxy()

    async def serve(client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        # The handler runs only after the TLS handshake succeeded.
        proxy.handshakes += 1
        broker_reader, broker = await asyncio.open_connection(*BROKER)
        both = asyncio.gather(_pipe(client_reader, broker), _pipe(broker_reader, client))
        await both

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    proxy.port = server.sockets[0].getsockname()[1]
    async with server:
        yield proxy
        server.close()


def _url(proxy: TlsProxy, host: str, cafile: Path) -> str:
    return f"amqps://guest:guest@{host}:{proxy.port}/?cafile={quote(str(cafile))}"


def _batch(job_id: str) -> feature_pb2.FeatureBatch:
    return feature_pb2.FeatureBatch(
        job_id=job_id,
        crs="OGC:CRS84",
        features=[feature_pb2.Feature(index=0, geometry=shapely.to_wkb(shapely.Point(1, 2)))],
    )


async def test_publisher_and_consumer_work_over_verified_tls(
    tls_proxy: TlsProxy, certificates: Certificates
) -> None:
    """With the right CA and host name, geobus declares, publishes and consumes over amqps://."""
    url = _url(tls_proxy, "localhost", certificates.ca)
    settings = Settings.from_env(
        {"GEOBUS_AMQP_URL": url, "GEOBUS_PREFIX": f"t{uuid.uuid4().hex[:8]}"}
    )
    spec = await declare_from_settings(settings)
    received: list[ProtoMessage] = []
    stop = asyncio.Event()

    async def handle(payload: ProtoMessage, _message: AbstractIncomingMessage) -> None:
        received.append(payload)
        stop.set()

    try:
        async with await Publisher.connect(url, spec, declare_topology=False) as publisher:
            await publisher.publish(
                spec.features_exchange,
                routing.FEATURE_INGESTED,
                _batch("job-tls"),
                message_id=wire.message_id("job-tls", routing.FEATURE_INGESTED, 0),
                correlation_id="job-tls",
                stage="ingress",
            )
        await asyncio.wait_for(
            run_consumer(
                url, spec.stage_queue("validator"), handle, prefetch=1, stop=stop, stage="validator"
            ),
            30,
        )
    finally:
        # Deleted through the proxy too: plain 5672 is not needed at all.
        with contextlib.suppress(Exception):
            connection = await aio_pika.connect(url)
            async with connection:
                await delete(await connection.channel(), spec)
    assert [type(p).__name__ for p in received] == ["FeatureBatch"]
    assert received[0].job_id == "job-tls"  # type: ignore[attr-defined]
    # declare, publisher, consumer (and the cleanup): every one came through TLS.
    assert tls_proxy.handshakes >= 3


@pytest.mark.parametrize(
    ("host", "which_ca", "reason"),
    [
        ("localhost", "other_ca", "certificate verify failed: unable to get local issuer"),
        ("127.0.0.1", "ca", "IP address mismatch"),
    ],
)
async def test_tls_is_refused_with_an_unknown_ca_or_a_wrong_host_name(
    tls_proxy: TlsProxy, certificates: Certificates, host: str, which_ca: str, reason: str
) -> None:
    """An unknown CA, or a host name the certificate does not name: no connection, no handshake."""
    url = _url(tls_proxy, host, getattr(certificates, which_ca))
    with pytest.raises(TransientError, match=reason) as caught:
        await Publisher.connect(url, topology("never"), declare_topology=False)
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
    assert tls_proxy.handshakes == 0
    # The message names the failure, not the password.
    assert "guest:guest" not in str(caught.value)
