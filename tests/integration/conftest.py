"""Fixtures for integration tests: fresh PostGIS databases and a running pipeline.

The pipeline fixture starts the very commands the containers of compose.yaml
run (``geobus ingress``, ``geobus worker <stage>``) as native processes,
against the real RabbitMQ and a real store, under a unique prefix.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import aio_pika
import httpx
import psycopg
import pytest

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
GEOBUS = str(Path(sys.executable).parent / "geobus")
STAGES = ("validator", "reprojector", "writer")


def _create_database() -> tuple[str, str]:
    name = f"geobus_test_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {ADMIN_URL}: {exc}")
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    return name, url


def _drop_database(name: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh database with PostGIS for the session, dropped after."""
    name, url = _create_database()
    try:
        yield url
    finally:
        _drop_database(name)


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """A fresh database with PostGIS for one test, dropped after."""
    name, url = _create_database()
    try:
        yield url
    finally:
        _drop_database(name)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Pipeline:
    """geobus processes started for one test; ``stop()`` ends them with SIGTERM."""

    env: dict[str, str]
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    service_env: dict[str, dict[str, str]] = field(default_factory=dict)
    """Variables one service's processes get on top of ``env`` (e.g. its own GEOBUS_AMQP_URL)."""
    _log_files: list[BinaryIO] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        """The ingress URL."""
        return f"http://127.0.0.1:{self.env['GEOBUS_HTTP_PORT']}"

    def start(self, name: str, *args: str, service: str | None = None) -> None:
        """Start ``geobus ARGS`` as process ``name`` (with ``service_env[service or name]``)."""
        log = (self.logs / f"{name}.log").open("ab")
        self._log_files.append(log)
        env = {**self.env, **self.service_env.get(service or name, {})}
        self.processes[name] = subprocess.Popen(
            [GEOBUS, *args], env=env, stdout=log, stderr=subprocess.STDOUT
        )

    def start_all(self, replicas: int = 1) -> None:
        """The ingress and ``replicas`` of each stage; returns when /readyz answers 200."""
        for stage in STAGES:
            for n in range(replicas):
                self.start(f"{stage}-{n + 1}", "worker", stage, service=stage)
        self.start("ingress", "ingress")
        self.wait_ready()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the ingress says it is ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    pytest.fail(f"{name} exited with {process.returncode}:\n{self.log(name)}")
            try:
                if httpx.get(self.base_url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail("the ingress did not become ready:\n" + self.log("ingress"))

    def log(self, name: str) -> str:
        """What process ``name`` printed so far."""
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, name: str | None = None) -> dict[str, int]:
        """SIGTERM the named process (or all), wait, and return exit codes."""
        names = [name] if name else list(self.processes)
        for n in names:
            if self.processes[n].poll() is None:
                self.processes[n].send_signal(signal.SIGTERM)
        codes = {}
        for n in names:
            try:
                codes[n] = self.processes[n].wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.processes[n].kill()
                codes[n] = self.processes[n].wait()
        if name is None:
            for log in self._log_files:
                log.close()
            self._log_files.clear()
        return codes


@pytest.fixture
def pipeline_env(tmp_path: Path, amqp_url: str) -> dict[str, str]:
    """GEOBUS_* variables for one test's pipeline (unique prefix, port, spool, GeoPackage)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOBUS_")}
    env.update(
        GEOBUS_AMQP_URL=amqp_url,
        GEOBUS_PREFIX=f"t{uuid.uuid4().hex[:8]}",
        GEOBUS_HTTP_PORT=str(free_port()),
        GEOBUS_SPOOL_DIR=str(tmp_path / "spool"),
        GEOBUS_DATABASE_URL=str(tmp_path / "store.gpkg"),
    )
    return env


@pytest.fixture
def pipeline(pipeline_env: dict[str, str], tmp_path: Path) -> Iterator[Pipeline]:
    """A pipeline (not yet started), stopped and its topology deleted after the test."""
    logs = tmp_path / "logs"
    logs.mkdir()
    running = Pipeline(env=pipeline_env, logs=logs)
    try:
        yield running
    finally:
        running.stop()
        _delete_topology(pipeline_env["GEOBUS_AMQP_URL"], pipeline_env["GEOBUS_PREFIX"])


def publish(pipeline: Pipeline, routing_key: str, message: aio_pika.Message) -> None:
    """Publish ``message`` (with confirms) to the features exchange of the pipeline's prefix."""
    import asyncio

    from geobus.broker.topology import topology

    names = topology(pipeline.env["GEOBUS_PREFIX"])

    async def run() -> None:
        connection = await aio_pika.connect(pipeline.env["GEOBUS_AMQP_URL"])
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(names.features_exchange)
            await exchange.publish(message, routing_key, mandatory=True)

    asyncio.run(run())


def _delete_topology(amqp_url: str, prefix: str) -> None:
    import asyncio

    from geobus.broker.topology import delete, topology

    async def run() -> None:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            await delete(await connection.channel(), topology(prefix))

    asyncio.run(run())
