"""Small requests at a steady rate while a big job runs, timed from outside.

Open loop: each request is sent at its scheduled moment on its own task, so a
slow answer does not delay the next request (no coordinated omission). Two
streams: 1 KB ``POST /v1/features`` (what a webhook sender sees) and
``GET /healthz`` (the ingress's event loop seen from outside: a request that
does no work waits only for the loop). True event-loop lag needs a probe
inside the ingress; that is left for the metrics work.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

POST_RATE = 20.0  # 1 KB POSTs per second
HEALTH_RATE = 50.0  # GET /healthz per second


class Probe:
    """Runs :class:`Sampler` in its own process, so the bench client's GIL is not measured."""

    def __init__(self, base: str, small_doc: Path) -> None:
        self.argv = [sys.executable, "-m", "bench.probe", base, str(small_doc)]
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

    def __init__(self, base: str, small_doc: Path) -> None:
        self.base = base
        self.body = small_doc.read_bytes()
        self._stop = threading.Event()
        self._samples: dict[str, list[tuple[float, float, int]]] = {"post": [], "healthz": []}
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._t0 = 0.0

    def start(self) -> None:
        """Begin sending."""
        self._t0 = time.perf_counter()
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        """Stop sending, wait for answers; samples are (seconds since start, latency, status)."""
        self._stop.set()
        self._thread.join(timeout=120)
        return {
            "t0": self._t0,
            "rates": {"post": POST_RATE, "healthz": HEALTH_RATE},
            **self._samples,
        }

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            await asyncio.gather(
                self._stream(client, "post", POST_RATE),
                self._stream(client, "healthz", HEALTH_RATE),
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


def main() -> None:
    """Sample BASE with DOC until a line arrives on stdin; print the samples as JSON."""
    sampler = Sampler(sys.argv[1], Path(sys.argv[2]))
    sampler.start()
    print("started", flush=True)
    sys.stdin.readline()
    print(json.dumps(sampler.stop()), flush=True)


if __name__ == "__main__":
    main()
