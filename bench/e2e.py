"""End-to-end runs of one document through geobus, ogr2ogr and the reference pattern.

Each function runs ``repeat`` loads of the same file against fresh processes
(started once per call, so each process's VmHWM covers exactly these loads)
and returns plain dicts: wall seconds per run, seconds to the 202, job counts,
CPU seconds per process and of PostgreSQL, and peak RSS per process.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from bench import documents, harness
from bench.probe import Probe, histogram_delta, histograms

Result = dict[str, Any]


def slug(name: str) -> str:
    """A table-name-safe form of a dataset name."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def geobus(
    name: str,
    path: Path,
    pg_url: str,
    workdir: Path,
    repeat: int,
    *,
    replicas: int = 1,
    probe_doc: Path | None = None,
    probe_floor: bool = False,
) -> Result:
    """POST ``path`` ``repeat`` times to a fresh pipeline, each time waiting for ``successful``."""
    runs: list[Result] = []
    probe_result: Result | None = None
    with (
        harness.pipeline(pg_url, workdir, replicas) as (group, base),
        httpx.Client(timeout=1800) as client,
    ):
        harness.warm(client, base)
        harness.warm_job(
            client,
            base + "/v1/features",
            lambda document: f"{base}/v1/jobs/{document['jobID']}",
            documents.small(),
            {"collection": "warmup"},
        )
        for r in range(repeat):
            cpu0, pg0 = group.cpu(), harness.postgres_cpu_seconds()
            mq0 = harness.rabbitmq_cpu_seconds()
            floor = (workdir / "floor", pg_url) if probe_floor else None
            probe = Probe(base, probe_doc, floor) if probe_doc is not None and r == 0 else None
            metrics_before = {}
            if probe is not None:
                metrics_before = histograms(client, base)
                probe.start()
            t0, ack, document = harness.timed_post(
                client,
                base + "/v1/features",
                path,
                params={"collection": f"{slug(name)}_{replicas}_{r}"},
            )
            done, final = harness.wait_job(client, f"{base}/v1/jobs/{document['jobID']}")
            if probe is not None:
                probe_result = probe.stop()
                probe_result.update(histogram_delta(metrics_before, histograms(client, base)))
            cpu1, pg1 = group.cpu(), harness.postgres_cpu_seconds()
            mq1 = harness.rabbitmq_cpu_seconds()
            counts = final.get("counts", {})
            if final["status"] != "successful" or counts.get("stored", 0) + counts.get(
                "rejected", 0
            ) != counts.get("received", -1):
                raise RuntimeError(f"geobus job for {name} ended {final['status']}: {final}")
            runs.append(
                {
                    "ack_s": ack,
                    "wall_s": done - t0,
                    "counts": final.get("counts", {}),
                    "cpu_s": {k: round(cpu1[k] - cpu0.get(k, 0.0), 2) for k in cpu1},
                    "postgres_cpu_s": round(pg1 - pg0, 2),
                    "rabbitmq_cpu_s": round(mq1 - mq0, 2),
                }
            )
        rss = group.peak_rss()
    out: Result = {"runs": runs, "peak_rss_mb": rss}
    if probe_result is not None:
        out["probe"] = probe_result
    return out


def ogr2ogr(name: str, path: Path, pg_url: str, repeat: int) -> Result:
    """``ogr2ogr`` the file into PostGIS with repair and EPSG:3857, ``repeat`` times."""
    pg = f"PG:host=127.0.0.1 user=postgres dbname={pg_url.rsplit('/', 1)[1]}"
    runs: list[Result] = []
    peak = 0.0
    for r in range(repeat):
        table = f"ogr_{slug(name)}_{r}"
        argv = [
            "ogr2ogr", "-f", "PostgreSQL", pg, str(path), "-nln", table,
            "-t_srs", "EPSG:3857", "-makevalid", "-lco", "GEOMETRY_NAME=geom",
        ]  # fmt: skip
        pg0 = harness.postgres_cpu_seconds()
        t0 = time.perf_counter()
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - t0
        process.returncode = os.waitstatus_to_exitcode(status)
        err = process.stderr.read().decode(errors="replace") if process.stderr else ""
        if process.stderr:
            process.stderr.close()
        if process.returncode != 0:
            raise RuntimeError(f"ogr2ogr {name} failed ({process.returncode}): {err[-2000:]}")
        peak = max(peak, usage.ru_maxrss / 1024)
        runs.append(
            {
                "wall_s": wall,
                "counts": {"stored": harness.count_rows(pg_url, table)},
                "cpu_s": {"ogr2ogr": round(usage.ru_utime + usage.ru_stime, 2)},
                "postgres_cpu_s": round(harness.postgres_cpu_seconds() - pg0, 2),
            }
        )
    return {"runs": runs, "peak_rss_mb": {"ogr2ogr": peak}}


def reference(name: str, path: Path, pg_url: str, workdir: Path, repeat: int) -> Result:
    """POST to the reference FastAPI service ``repeat`` times, each time waiting for the job."""
    runs: list[Result] = []
    with (
        harness.python_service(
            "bench.baselines.reference_service", workdir, {"REFERENCE_DATABASE_URL": pg_url}
        ) as (group, base),
        httpx.Client(timeout=1800) as client,
    ):
        harness.warm(client, base)
        harness.warm_job(
            client,
            base + "/features",
            lambda document: f"{base}/jobs/{document['job_id']}",
            documents.small(),
            {"table": "ref_warmup"},
        )
        for r in range(repeat):
            cpu0, pg0 = group.cpu(), harness.postgres_cpu_seconds()
            t0, ack, document = harness.timed_post(
                client, base + "/features", path, params={"table": f"ref_{slug(name)}_{r}"}
            )
            done, final = harness.wait_job(client, f"{base}/jobs/{document['job_id']}")
            cpu1, pg1 = group.cpu(), harness.postgres_cpu_seconds()
            if final["status"] != "successful":
                raise RuntimeError(f"reference job for {name} ended {final['status']}: {final}")
            runs.append(
                {
                    "ack_s": ack,
                    "wall_s": done - t0,
                    "counts": {"received": final["received"], "stored": final["stored"]},
                    "cpu_s": {k: round(cpu1[k] - cpu0.get(k, 0.0), 2) for k in cpu1},
                    "postgres_cpu_s": round(pg1 - pg0, 2),
                }
            )
        rss = group.peak_rss()
    return {"runs": runs, "peak_rss_mb": rss}


def drain(paths: dict[str, Path], workdir: Path, repeat: int) -> dict[str, list[float]]:
    """Seconds to the 202 of the bare drain endpoint, per body, ``repeat`` times each."""
    out: dict[str, list[float]] = {}
    with (
        harness.python_service("bench.baselines.drain", workdir) as (_group, base),
        httpx.Client(timeout=600) as client,
    ):
        harness.warm(client, base)
        for label, path in paths.items():
            out[label] = [
                harness.timed_post(client, base + "/v1/features", path)[1] for _ in range(repeat)
            ]
    return out
