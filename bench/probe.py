"""Small requests at a steady rate while a big job runs, timed from outside.

Open loop: each request is sent at its scheduled moment on its own task, so a
slow answer does not delay the next request (no coordinated omission). Two
streams: 1 KB ``POST /v1/features`` (what a webhook sender sees) and
``GET /healthz`` (the ingress's event loop seen from outside: a request that
does no work waits only for the loop). The event-loop lag itself comes from
the ingress's own probe (a task that sleeps 50 ms and records how late it
woke): :func:`loop_lag` reads its histogram ``geobus_event_loop_lag_seconds``
from ``GET /metrics`` before and after the job and keeps the difference.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

POST_RATE = 20.0  # 1 KB POSTs per second
HEALTH_RATE = 50.0  # GET /healthz per second
# Histograms of the ingress's GET /metrics read around the probed job.
HISTOGRAMS = {
    "loop_lag": "geobus_event_loop_lag_seconds",
    # POST /v1/features inside the ingress: arrival to 202.
    "accept": "geobus_ingress_accept_seconds",
}


def histograms(client: httpx.Client, base: str) -> dict[str, dict[float, float]]:
    """The ingress's cumulative :data:`HISTOGRAMS` (upper bound → count); {} without /metrics."""
    response = client.get(base + "/metrics")
    if response.status_code != 200:
        return {}
    out = {}
    for key, metric in HISTOGRAMS.items():
        pattern = re.escape(metric) + r'_bucket\{le="([^"]+)"\} ([0-9.e+]+)'
        buckets = {float(le): float(n) for le, n in re.findall(pattern, response.text)}
        if buckets:
            out[key] = buckets
    return out


def histogram_delta(
    before: dict[str, dict[float, float]], after: dict[str, dict[float, float]]
) -> dict[str, dict[str, float]]:
    """:func:`quantiles` of each histogram read both times."""
    return {k: quantiles(before[k], after[k]) for k in after if k in before}


def quantiles(before: dict[float, float], after: dict[float, float]) -> dict[str, float]:
    """Samples, p50, p99 and max (ms) of what a histogram gained between two readings.

    Quantiles are interpolated inside their bucket as Prometheus's
    ``histogram_quantile`` does; the max is the upper bound of the highest
    bucket that gained a sample (the histogram keeps nothing finer).
    """
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]  # cumulative
    total = counts[-1] if counts else 0.0
    out: dict[str, float] = {"samples": total}
    if total <= 0:
        return out
    for name, q in (("p50_ms", 0.5), ("p99_ms", 0.99)):
        rank = q * total
        i = next(i for i, c in enumerate(counts) if c >= rank)
        low = bounds[i - 1] if i else 0.0
        high = bounds[i]
        below = counts[i - 1] if i else 0.0
        inside = counts[i] - below
        if math.isinf(high):
            value = low
        else:
            value = low + (high - low) * ((rank - below) / inside if inside else 1.0)
        out[name] = value * 1000
    gained = [b for i, b in enumerate(bounds) if counts[i] > (counts[i - 1] if i else 0.0)]
    top = gained[-1]
    out["max_ms"] = (bounds[-2] if math.isinf(top) and len(bounds) > 1 else top) * 1000
    out["max_above_ms"] = float(math.isinf(top))
    return out


class Probe:
    """Runs :class:`Sampler` in its own process, so the bench client's GIL is not measured."""

    def __init__(self, base: str, small_doc: Path, floor: tuple[Path, str] | None = None) -> None:
        self.argv = [sys.executable, "-m", "bench.probe", base, str(small_doc)]
        if floor is not None:
            self.argv += [str(floor[0]), floor[1]]
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        """Begin sending (returns once the sampler process is up and sending)."""
        self._process = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self._process.stdout is not None
        self._process.stdout.readline()  # "started"

    def stop(self) -> dict[str, Any]:
        """Stop sending and return the samples."""
        assert self._process is not None
        out, _ = self._process.communicate("stop\n", timeout=180)
        result: dict[str, Any] = json.loads(out)
        return result


class Sampler:
    """Start before the big POST, stop when its job is final; ``stop()`` returns samples."""

    def __init__(self, base: str, small_doc: Path, floor: tuple[Path, str] | None = None) -> None:
        self.base = base
        self.body = small_doc.read_bytes()
        self._stop = threading.Event()
        self._samples: dict[str, list[tuple[float, float, int]]] = {"post": [], "healthz": []}
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._floor = None if floor is None else DurabilityFloor(*floor, self._stop)
        self._t0 = 0.0
        self._realtime = False

    def start(self) -> None:
        """Begin sending."""
        self._t0 = time.perf_counter()
        self._thread.start()
        if self._floor is not None:
            self._floor.start(self._t0)

    def stop(self) -> dict[str, Any]:
        """Stop sending, wait for answers; samples are (seconds since start, latency, status)."""
        self._stop.set()
        self._thread.join(timeout=120)
        if self._floor is not None:
            self._samples.update(self._floor.join())
        return {
            "t0": self._t0,
            "rates": {"post": POST_RATE, "healthz": HEALTH_RATE},
            "client_realtime": self._realtime,
            **self._samples,
        }

    def _main(self) -> None:
        # The client shares this 2-core machine with the pipeline it measures;
        # a webhook sender does not. In real time (where it may) its own wait
        # for a CPU stays out of the latencies: 3 probe runs each, client at
        # ordinary priority vs real time, GET /healthz p99 20.2 -> 9.2 ms,
        # 1 KB POST p99 60.8 -> 34.2 ms (pooled).
        from geobus import scheduling

        self._realtime = scheduling.request_realtime(1)
        asyncio.run(self._run())

    async def _run(self) -> None:
        # One connection pool per stream: slow POSTs holding every connection
        # must not make the /healthz stream wait for one (that would time
        # the client's pool, not the ingress).
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        async with (
            httpx.AsyncClient(timeout=60, limits=limits) as posts,
            httpx.AsyncClient(timeout=60, limits=limits) as gets,
        ):
            await asyncio.gather(
                self._stream(posts, "post", POST_RATE),
                self._stream(gets, "healthz", HEALTH_RATE),
            )

    async def _stream(self, client: httpx.AsyncClient, kind: str, rate: float) -> None:
        tasks: list[asyncio.Task[None]] = []
        n = 0
        while not self._stop.is_set():
            due = self._t0 + n / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self._one(client, kind)))
            n += 1
        await asyncio.gather(*tasks)

    async def _one(self, client: httpx.AsyncClient, kind: str) -> None:
        sent = time.perf_counter()
        try:
            if kind == "post":
                response = await client.post(
                    self.base + "/v1/features",
                    content=self.body,
                    headers={"Content-Type": "application/geo+json"},
                    params={"collection": "probe"},
                )
            else:
                response = await client.get(self.base + "/healthz")
            status = response.status_code
        except httpx.HTTPError:
            status = 0
        self._samples[kind].append((sent - self._t0, time.perf_counter() - sent, status))


class DurabilityFloor:
    """What a durable 1 KB POST cannot be faster than, timed beside the probe's POSTs.

    At the POSTs' rate, from a thread of the probe's process: the fsync of a
    new 1 KB file and of its directory on the spool's file system (``fsync``
    samples), and one INSERT + COMMIT on PostgreSQL (``commit``). A 202 waits
    for both kinds (the spool, then the job row). The thread runs in real
    time where it may (``realtime`` says), so that what it times is the disk
    and the server, not its own wait for a CPU.
    """

    def __init__(self, directory: Path, pg_url: str, stop: threading.Event) -> None:
        self.directory = directory
        self.pg_url = pg_url
        self._stop = stop
        self._samples: dict[str, list[tuple[float, float, int]]] = {"fsync": [], "commit": []}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = 0.0
        self._error: BaseException | None = None
        self.realtime = False

    def start(self, t0: float) -> None:
        self._t0 = t0
        self._thread.start()

    def join(self) -> dict[str, Any]:
        """The samples; what made the thread fail, raised here (no silent empty floor)."""
        self._thread.join(timeout=120)
        if self._error is not None:
            raise self._error
        return {**self._samples, "floor_realtime": self.realtime}

    def _run(self) -> None:
        try:
            self._measure()
        except BaseException as exc:
            self._error = exc

    def _measure(self) -> None:
        import os

        import psycopg

        from geobus import scheduling

        self.realtime = scheduling.request_realtime(1)

        self.directory.mkdir(parents=True, exist_ok=True)
        table = f"probe_floor_{os.getpid()}"
        payload = b"x" * 1024
        directory = os.open(self.directory, os.O_RDONLY)
        with psycopg.connect(self.pg_url, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {table} (id serial PRIMARY KEY, body text)")
            try:
                n = 0
                while not self._stop.is_set():
                    delay = self._t0 + n / POST_RATE - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    path = self.directory / f"floor-{n}"
                    started = time.perf_counter()
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    os.write(fd, payload)
                    os.fsync(fd)
                    os.close(fd)
                    os.fsync(directory)
                    synced = time.perf_counter()
                    conn.execute(f"INSERT INTO {table} (body) VALUES ('x')")  # noqa: S608
                    committed = time.perf_counter()
                    self._samples["fsync"].append((started - self._t0, synced - started, 0))
                    self._samples["commit"].append((synced - self._t0, committed - synced, 0))
                    path.unlink()
                    n += 1
            finally:
                conn.execute(f"DROP TABLE {table}")
                os.close(directory)


def main() -> None:
    """Sample BASE with DOC until a line arrives on stdin; print the samples as JSON.

    With DIR and PG_URL also the :class:`DurabilityFloor` in DIR.
    """
    floor = (Path(sys.argv[3]), sys.argv[4]) if len(sys.argv) > 4 else None
    sampler = Sampler(sys.argv[1], Path(sys.argv[2]), floor)
    sampler.start()
    print("started", flush=True)
    sys.stdin.readline()
    print(json.dumps(sampler.stop()), flush=True)


if __name__ == "__main__":
    main()
