"""Processes, databases and HTTP timing for the benchmark suite.

Everything here starts real processes the way production does (``geobus
ingress``, ``geobus worker <stage>``, uvicorn for the baselines) and reads
what the kernel knows about them: peak RSS (``VmHWM``, per process, fresh at
exec) and CPU seconds (``utime + stime``) from ``/proc``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import psycopg

REPO_ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
BIN = Path(sys.executable).parent
GEOBUS = str(BIN / "geobus")
STAGES = ("validator", "reprojector", "writer")
FINAL = frozenset({"successful", "failed", "dismissed"})
CHUNK = 1 << 20
POLL = 0.05  # job polling interval (s): the resolution of every end-to-end time
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- PostgreSQL ----------------------------------------------------------------


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A new database with PostGIS for this run; dropped afterwards."""
    name = f"geobus_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        yield url
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def count_rows(url: str, table: str) -> int:
    """Rows in ``table`` (0 when it does not exist)."""
    with psycopg.connect(url) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
        if not exists or exists[0] is None:
            return 0
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
        return int(row[0]) if row else 0


# -- /proc -----------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (pool workers, forkservers)."""
    out = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                out.extend(descendants(int(child)))
    return out


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size of one process (VmHWM) in MB, 0 if it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process and of its children already reaped.

    Reaped children count because they are gone from /proc: PostgreSQL
    backends that closed, pool workers that were replaced.
    """
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(f) for f in fields[11:15]) / CLK_TCK
    return 0.0


def system_cpu_seconds(comm: str) -> float:
    """CPU seconds of every process named ``comm`` on this machine (postgres, beam.smp)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "comm").read_text().strip() == comm:
                total += cpu_seconds(int(entry.name))
    return total


def postgres_cpu_seconds() -> float:
    """CPU seconds of PostgreSQL (the store's share of the work)."""
    return system_cpu_seconds("postgres")


def rabbitmq_cpu_seconds() -> float:
    """CPU seconds of RabbitMQ's Erlang VM (the broker's share)."""
    return system_cpu_seconds("beam.smp")


def _identity(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat): tells a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, identity: str | None) -> bool:
    """Whether the very process ``pid`` (same start time) still runs and is no zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and fields[19] == identity


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- processes -------------------------------------------------------------------


@dataclass
class Group:
    """Named processes started for one measurement; stopped with SIGTERM."""

    env: dict[str, str]
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _files: list[BinaryIO] = field(default_factory=list)

    def start(self, name: str, *argv: str) -> None:
        """Start ``argv`` as process ``name``, output to ``logs/name.log``."""
        log = (self.logs / f"{name}.log").open("ab")
        self._files.append(log)
        self.processes[name] = subprocess.Popen(
            list(argv), env=self.env, stdout=log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, url: str, timeout: float = 60.0) -> None:
        """Wait until ``url`` answers 200; fail if a process exits meanwhile."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    msg = f"{name} exited with {process.returncode}:\n{self.log(name)[-3000:]}"
                    raise RuntimeError(msg)
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{url} not ready after {timeout} s")

    def log(self, name: str) -> str:
        """What process ``name`` printed so far."""
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def peak_rss(self) -> dict[str, float]:
        """VmHWM (MB) of every process and its descendants, keyed ``name`` / ``name/child``."""
        out: dict[str, float] = {}
        for name, process in self.processes.items():
            for i, pid in enumerate(descendants(process.pid)):
                out[name if i == 0 else f"{name}/child{i}"] = peak_rss_mb(pid)
        return out

    def cpu(self) -> dict[str, float]:
        """CPU seconds of every process, its descendants' added in."""
        return {
            name: sum(cpu_seconds(pid) for pid in descendants(process.pid))
            for name, process in self.processes.items()
        }

    def stop(self) -> None:
        """SIGTERM everything, wait, kill what does not stop in 30 s.

        Descendants still alive after their parent ended are killed too: the
        reference service's pool workers inherit uvicorn's SIGTERM handler,
        ignore the signal and would live on as orphans.
        """
        children = [
            (pid, _identity(pid))
            for process in self.processes.values()
            for pid in descendants(process.pid)[1:]
        ]
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        deadline = time.monotonic() + 5
        for pid, identity in children:
            while _alive(pid, identity) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid, identity):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for f in self._files:
            f.close()
        self._files.clear()


INGRESS_RT_PRIORITY = "1"
"""GEOBUS_INGRESS_RT_PRIORITY of the pipelines, unless --env says otherwise."""


def geobus_env(pg_url: str, spool: Path) -> dict[str, str]:
    """GEOBUS_* for one pipeline: unique prefix and port, PostGIS, EPSG:3857."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOBUS_")}
    env.update(
        GEOBUS_AMQP_URL=AMQP_URL,
        GEOBUS_PREFIX=f"bench{uuid.uuid4().hex[:8]}",
        GEOBUS_HTTP_PORT=str(free_port()),
        GEOBUS_SPOOL_DIR=str(spool),
        GEOBUS_DATABASE_URL=pg_url,
        GEOBUS_TARGET_CRS="EPSG:3857",
        # The bench is one client that sends the probe's 20 small jobs a
        # second during a big job: measure their 202, not the 429 of the
        # per-client limit (a fair-use guard, not a cost).
        GEOBUS_MAX_JOBS_PER_CLIENT="1000000",
        # As compose.yaml deploys the ingress (with CAP_SYS_NICE): its event
        # loop in real time. The suite also probes once without it
        # (ORDINARY_PRIORITY), so that both are on the record.
        GEOBUS_INGRESS_RT_PRIORITY=INGRESS_RT_PRIORITY,
    )
    return env


# GEOBUS_* settings every pipeline of this run gets on top of the bench's own
# (``python -m bench --env GEOBUS_BATCH_MAX_FEATURES=10000``: try a setting).
EXTRA_ENV: dict[str, str] = {}
# The setting of the suite's second probe run: the ingress at the priority of
# any other process, as `geobus up` runs it by default.
ORDINARY_PRIORITY = {"GEOBUS_INGRESS_RT_PRIORITY": "0"}


@contextlib.contextmanager
def pipeline(pg_url: str, workdir: Path, replicas: int = 1) -> Iterator[tuple[Group, str]]:
    """A running geobus pipeline (ingress + ``replicas`` of each stage) and its URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = geobus_env(pg_url, workdir / "spool") | EXTRA_ENV
    group = Group(env=env, logs=workdir)
    base = f"http://127.0.0.1:{env['GEOBUS_HTTP_PORT']}"
    try:
        for stage in STAGES:
            for n in range(replicas):
                group.start(f"{stage}-{n + 1}", GEOBUS, "worker", stage)
        group.start("ingress", GEOBUS, "ingress")
        group.wait_ready(base + "/readyz")
        yield group, base
    finally:
        group.stop()
        _delete_topology(env["GEOBUS_PREFIX"])


def _delete_topology(prefix: str) -> None:
    import aio_pika

    from geobus.broker.topology import delete, topology

    async def run() -> None:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            await delete(await connection.channel(), topology(prefix))

    for attempt in range(3):
        try:
            asyncio.run(run())
        except Exception as exc:  # a leftover topology must not end the run
            if attempt == 2:
                print(
                    f"warning: could not delete the topology of prefix {prefix}: {exc!r}",
                    file=sys.stderr,
                )
            time.sleep(1)
        else:
            return


@contextlib.contextmanager
def python_service(
    module: str, workdir: Path, extra_env: dict[str, str] | None = None
) -> Iterator[tuple[Group, str]]:
    """``python -m MODULE --port P`` (a baseline server) and its URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **(extra_env or {}))
    env["PYTHONPATH"] = str(REPO_ROOT)
    port = free_port()
    group = Group(env=env, logs=workdir)
    base = f"http://127.0.0.1:{port}"
    try:
        group.start(module.rsplit(".", 1)[-1], sys.executable, "-m", module, "--port", str(port))
        group.wait_ready(base + "/readyz")
        yield group, base
    finally:
        group.stop()


# -- HTTP ------------------------------------------------------------------------


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            yield block


def timed_post(
    client: httpx.Client, url: str, path: Path, params: dict[str, str] | None = None
) -> tuple[float, float, dict[str, Any]]:
    """POST a file streamed in 1 MiB chunks on a warm connection.

    Returns ``(t0, seconds from the first byte to the response, response JSON)``.
    """
    headers = {
        "Content-Type": "application/geo+json",
        "Content-Length": str(path.stat().st_size),
    }
    # Read the first chunk before starting the clock: the clock starts as the
    # first byte goes out, not while the disk is read.
    chunks = _chunks(path)
    first = next(chunks, b"")

    def body() -> Iterator[bytes]:
        yield first
        yield from chunks

    t0 = time.perf_counter()
    response = client.post(url, content=body(), headers=headers, params=params)
    took = time.perf_counter() - t0
    if response.status_code != 202:
        raise RuntimeError(f"POST {url}: {response.status_code} {response.text[:500]}")
    document: dict[str, Any] = response.json()
    return t0, took, document


def wait_job(
    client: httpx.Client, url: str, timeout: float = 1800.0
) -> tuple[float, dict[str, Any]]:
    """Poll ``url`` every POLL seconds until the job is final; return (when, document)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        document: dict[str, Any] = client.get(url).json()
        if document.get("status") in FINAL:
            return time.perf_counter(), document
        time.sleep(POLL)
    raise RuntimeError(f"{url}: not final after {timeout} s")


def warm(client: httpx.Client, base: str) -> None:
    """Open the client's connection before the clock starts."""
    client.get(base + "/readyz")


def warm_job(
    client: httpx.Client,
    post_url: str,
    job_url: Callable[[dict[str, Any]], str],
    path: Path,
    params: dict[str, str],
) -> None:
    """Run one small job through a service before the clock starts.

    A service's worker processes start in the background once it is up
    (the ingress's conversion worker, the stages' GEOS workers, the reference
    service's process pool): a first measured job would pay their imports
    while it races them for the two cores. Every contender is measured warm.
    """
    _t0, _took, document = timed_post(client, post_url, path, params=params)
    wait_job(client, job_url(document))
