"""Turn the suite's raw results into the ratio table, the detail tables and a plot."""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench import harness

MB = 1_000_000
CONTENDERS = ("geobus", "ogr2ogr", "reference")
BIG_BODIES = {"big-200mb x1": "200 MB", "big-50mb x1": "50 MB"}  # scaling run → ack label


# -- statistics -------------------------------------------------------------------


def median(values: list[float]) -> float:
    """The median (0 for no values)."""
    return statistics.median(values) if values else 0.0


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile by the nearest-rank method (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered))))
    return ordered[rank - 1]


def spread(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    """``median (min-max)`` scaled, or the single value."""
    if not values:
        return "-"
    m = median(values) * scale
    if len(values) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ({min(values) * scale:.{digits}f}-{max(values) * scale:.{digits}f})"


def walls(result: dict[str, Any]) -> list[float]:
    """Wall seconds of every run of one contender (none when it failed)."""
    return [r["wall_s"] for r in result.get("runs", [])]


def floor_walls(results: dict[str, Any], name: str) -> list[float]:
    """Wall seconds of every floor run of one document (none when it failed)."""
    runs = results.get("floor", {}).get(name, [])
    return [r["wall_s"] for r in runs] if isinstance(runs, list) else []


def acks(result: dict[str, Any]) -> list[float]:
    """Seconds to the 202 of every run (contenders that answer one)."""
    return [r["ack_s"] for r in result.get("runs", []) if "ack_s" in r]


def verdict(value: float, limit: float, *, below: bool = True) -> str:
    """``yes`` / ``NO`` against a target."""
    ok = value <= limit if below else value >= limit
    return "yes" if ok else "**NO**"


# -- machine ----------------------------------------------------------------------


def _command(argv: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.rstrip()
    return "unknown"


def git_head() -> str:
    """The short hash of HEAD."""
    return _command(["git", "-C", str(harness.REPO_ROOT), "rev-parse", "--short", "HEAD"])


def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPU, memory, versions."""
    import shapely
    from pyproj import proj_version_str

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str] = {
        "python": platform.python_version(),
        "GEOS": shapely.geos_version_string,
        "PROJ": proj_version_str,
        "GDAL (ogr2ogr)": _command(["ogr2ogr", "--version"]),
    }
    for package in ("shapely", "pyproj", "uvicorn", "starlette", "fastapi", "httptools",
                    "aio-pika", "psycopg", "protobuf", "msgspec", "orjson", "geobuf"):  # fmt: skip
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    with contextlib.suppress(psycopg.Error), psycopg.connect(harness.ADMIN_URL) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        versions["PostgreSQL"] = str(row[0]) if row else "unknown"
        row = conn.execute(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'postgis'"
        ).fetchone()
        versions["PostGIS"] = str(row[0]) if row else "unknown"
    with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
        overview = httpx.get(
            "http://127.0.0.1:15672/api/overview", auth=("guest", "guest"), timeout=5
        ).json()
        versions["RabbitMQ"] = overview["rabbitmq_version"]
    if "RabbitMQ" not in versions:  # no management plugin: ask the local node
        versions["RabbitMQ"] = _command(["rabbitmqctl", "version"]) or "unknown"
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "free -g": _command(["free", "-g"]),
        "kernel": platform.release(),
        # The machine is shared: a busy neighbour shows here and in the spread.
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "git": git_head(),
        "versions": versions,
    }


# -- derived numbers ----------------------------------------------------------------


def probe_stats(probe: dict[str, Any]) -> dict[str, float]:
    """p50 / p99 / max (ms) of the probe's POSTs and /healthz GETs, and failures."""
    out: dict[str, float] = {}
    floor = [(kind, 0) for kind in ("fsync", "commit") if kind in probe]  # no status
    for kind, ok in (("post", 202), ("healthz", 200), *floor):
        samples = probe.get(kind, [])
        lat = [s[1] * 1000 for s in samples]
        out[f"{kind}_n"] = len(samples)
        out[f"{kind}_failed"] = sum(1 for s in samples if s[2] != ok)
        out[f"{kind}_p50_ms"] = quantile(lat, 0.5)
        out[f"{kind}_p99_ms"] = quantile(lat, 0.99)
        out[f"{kind}_max_ms"] = max(lat, default=0.0)
    return out


def _geobus_rss(result: dict[str, Any]) -> tuple[float, float, float]:
    """(ingress process, ingress's conversion worker(s), largest stage) peak RSS in MB."""
    rss: dict[str, float] = result.get("peak_rss_mb", {})
    ingress = rss.get("ingress", 0.0)
    workers = max((v for k, v in rss.items() if k.startswith("ingress/")), default=0.0)
    stages = max((v for k, v in rss.items() if not k.startswith("ingress")), default=0.0)
    return ingress, workers, stages


def _rss_text(result: dict[str, Any]) -> str:
    rss: dict[str, float] = result.get("peak_rss_mb", {})
    # Tiny forkserver / resource-tracker helpers are noise in the table.
    return ", ".join(f"{k} {v:.0f}" for k, v in rss.items() if v >= 20) or "-"


def _cpu_text(result: dict[str, Any]) -> str:
    runs = result.get("runs", [])
    if not runs:
        return "-"
    keys = list(runs[0].get("cpu_s", {}))
    parts = [f"{k} {median([r['cpu_s'].get(k, 0.0) for r in runs]):.1f}" for k in keys]
    parts.append(f"postgres {median([r.get('postgres_cpu_s', 0.0) for r in runs]):.1f}")
    if "rabbitmq_cpu_s" in runs[0]:
        parts.append(f"rabbitmq {median([r['rabbitmq_cpu_s'] for r in runs]):.1f}")
    return ", ".join(parts)


# -- the Markdown ---------------------------------------------------------------------


RT_NOTE = ", event loop in real time (GEOBUS_INGRESS_RT_PRIORITY={}, as compose.yaml)"
ORDINARY_NOTE = ", event loop at ordinary priority (the default)"


def _probe_rows(probe: dict[str, Any], label: str, note: str) -> list[str]:
    """The small-request and loop-lag rows of one probed job."""
    p = probe_stats(probe)
    rows = [
        f"| 1 KB POST p99 while a {label} job runs{note} | {p['post_p99_ms']:.0f} ms "
        f"(p50 {p['post_p50_ms']:.0f}) | ≤ 10 ms | {verdict(p['post_p99_ms'], 10)} |"
    ]
    accept = probe.get("accept")
    if accept and "p99_ms" in accept:
        rows.append(
            f"| ... the same POSTs inside the ingress (arrival → 202, its histogram) "
            f"| p99 {accept['p99_ms']:.0f} ms (p50 {accept['p50_ms']:.0f}) | ≤ 10 ms "
            f"| {verdict(accept['p99_ms'], 10)} |"
        )
    lag = probe.get("loop_lag")
    if lag and "p99_ms" in lag:
        above = ">" if lag.get("max_above_ms") else "≤ "
        rows.append(
            f"| ingress event-loop lag p99 while it runs (max){note} | {lag['p99_ms']:.1f} ms "
            f"({above}{lag['max_ms']:.0f}) | ≤ 5 ms | {verdict(lag['p99_ms'], 5)} |"
        )
    rows.append(
        f"| GET /healthz p99 / max while it runs (loop lag + one HTTP round trip){note} "
        f"| {p['healthz_p99_ms']:.0f} / {p['healthz_max_ms']:.0f} ms | | |"
    )
    if "fsync_n" in p:
        rows.append(
            "| floor of a durable 202 beside those POSTs: fsync of a new 1 KB file + its"
            " directory / one INSERT + COMMIT, p99 (p50) "
            f"| {p['fsync_p99_ms']:.1f} ({p['fsync_p50_ms']:.1f}) / {p['commit_p99_ms']:.1f} "
            f"({p['commit_p50_ms']:.1f}) ms | | |"
        )
    return rows


def _probe_paragraphs(probe: dict[str, Any]) -> list[str]:
    """The probe's small requests and the loop's lag, in words."""
    p = probe_stats(probe)
    # Results from before the client ran in real time do not say: ordinary.
    client = "in real time" if probe.get("client_realtime") else "at ordinary priority"
    lines = [
        f"From a client thread {client}, 1 KB POSTs at {probe['rates']['post']:.0f}/s:"
        f" {p['post_n']:.0f} sent, "
        f"{p['post_failed']:.0f} failed, p50 {p['post_p50_ms']:.1f} ms, "
        f"p99 {p['post_p99_ms']:.1f} ms, max {p['post_max_ms']:.1f} ms. "
        f"GET /healthz at {probe['rates']['healthz']:.0f}/s: p50 "
        f"{p['healthz_p50_ms']:.1f} ms, p99 {p['healthz_p99_ms']:.1f} ms, max "
        f"{p['healthz_max_ms']:.1f} ms (/healthz does no work: the loop's lag plus one "
        "HTTP round trip).",
        "",
    ]
    if "fsync_n" in p:
        lines += [
            "Beside those POSTs, at their rate, from a thread of the probe"
            + (" in real time" if probe.get("floor_realtime") else " (ordinary priority)")
            + ": the fsync"
            f" of a new 1 KB file and of its directory took p50 {p['fsync_p50_ms']:.1f} ms,"
            f" p99 {p['fsync_p99_ms']:.1f} ms, max {p['fsync_max_ms']:.1f} ms; one INSERT +"
            f" COMMIT on PostgreSQL p50 {p['commit_p50_ms']:.1f} ms, p99"
            f" {p['commit_p99_ms']:.1f} ms, max {p['commit_max_ms']:.1f} ms. A 202 waits for"
            " both kinds (spool fsynced, then the job row committed): what a durable small"
            " POST cannot beat on this disk while the job writes to it.",
            "",
        ]
    lag = probe.get("loop_lag")
    if lag and "p99_ms" in lag:
        above = "above " if lag.get("max_above_ms") else "at most "
        lines += [
            f"Event-loop lag inside the ingress (its 50 ms sleeper, "
            f"`geobus_event_loop_lag_seconds` from `GET /metrics`, during the job): "
            f"{lag['samples']:.0f} samples, p50 {lag['p50_ms']:.1f} ms, p99 "
            f"{lag['p99_ms']:.1f} ms, max {above}{lag['max_ms']:.0f} ms (interpolated "
            "in the histogram's buckets).",
            "",
        ]
    return lines


def _targets(results: dict[str, Any]) -> list[str]:
    """The ratio table: one row per target of issue 6."""
    rows = ["| measure | geobus | target | met |", "|---|---|---|---|"]
    drain = results.get("ack_drain", {})
    geobus_ack: dict[str, list[float]] = {
        label: acks(r) for label, r in results.get("ack_geobus", {}).items()
    }
    e2e = results.get("e2e", {})
    if "countries-maritime-10m" in e2e:
        geobus_ack["38 MB"] = acks(e2e["countries-maritime-10m"]["geobus"])
    scaling = results.get("scaling", {})
    for key, label in BIG_BODIES.items():
        if key in scaling:
            geobus_ack[label] = acks(scaling[key])
    for label, values in geobus_ack.items():
        if not values or label not in drain:
            continue
        added = (median(values) - median(drain[label])) * 1000
        target = "≤ 20 ms" if label == "38 MB" else "(instant)"
        met = verdict(added, 20) if label == "38 MB" else ""
        rows.append(f"| 202 - drain, {label} body (median) | {added:+.0f} ms | {target} | {met} |")
    probed = next((r for r in scaling.values() if "probe" in r), None)
    label = "200 MB" if "big-200mb x1" in scaling else "50 MB"
    if probed is not None:
        # Results from before the setting existed record no priority: no note.
        priority = results.get("settings", {}).get("ingress_rt_priority", "0")
        rows += _probe_rows(
            probed["probe"], label, "" if priority == "0" else RT_NOTE.format(priority)
        )
    ordinary = results.get("probe_ordinary", {})
    if "probe" in ordinary:
        rows += _probe_rows(ordinary["probe"], label, ORDINARY_NOTE)
    cores = int(results.get("machine", {}).get("nproc", 2))
    for name, row in e2e.items():
        g = median(walls(row["geobus"]))
        if not g:
            rows.append(f"| end to end, {name} | failed | | **NO** |")
            continue
        for other, target, limit in (("ogr2ogr", "≤ 1.0x (aim 0.6x)", 1.0),
                                     ("reference", "< 1.0x", 1.0)):  # fmt: skip
            o = median(walls(row.get(other, {})))
            if o:
                rows.append(
                    f"| end to end / {other}, {name} | {g / o:.2f}x | {target} "
                    f"| {verdict(g / o, limit)} |"
                )
        f = median(floor_walls(results, name))
        if f:
            rows.append(
                f"| end to end / floor, {name} | {g / f:.2f}x | ≤ 1.3x | {verdict(g / f, 1.3)} |"
            )
            bound = _services_bound(row["geobus"], f, cores)
            if bound is not None:
                rows.append(
                    f"| ... lower bound of that ratio from the servers' CPU alone, {name}:"
                    f" (floor + PostgreSQL CPU + RabbitMQ CPU) / {cores} cores, no cost in"
                    f" geobus's own processes beyond the floor's | {bound / f:.2f}x | | |"
                )
    sized = [(k, r) for k, r in scaling.items() if k.endswith("x1")]
    if sized:
        key, result = sized[-1]
        ingress, workers, _stages = _geobus_rss(result)
        body = key.split()[0]
        rows.append(
            f"| ingress peak RSS, {body} body (process / conversion worker) "
            f"| {ingress:.0f} / {workers:.0f} MB | ≤ 150 MB "
            f"| {verdict(max(ingress, workers), 150)} |"
        )
        everything = [_geobus_rss(r)[2] for r in scaling.values()]
        everything += [_geobus_rss(row["geobus"])[2] for row in e2e.values()]
        rows.append(
            f"| largest stage peak RSS (any run) | {max(everything):.0f} MB | ≤ 500 MB "
            f"| {verdict(max(everything), 500)} |"
        )
    return rows


def _services_bound(result: dict[str, Any], floor_s: float, cores: int) -> float | None:
    """The shortest wall time the pipeline could have on ``cores``, given the servers' CPU.

    The floor's work must be done once somewhere, and PostgreSQL and RabbitMQ
    spent what they spent (medians of the runs): even with geobus's own
    processes adding nothing and every core busy all the time, the job
    cannot take less than their sum over the cores. (The floor's own steps
    run one after the other; the pipeline's run side by side, so this bound
    may be below 1x the floor.)
    """
    runs = [r for r in result.get("runs", []) if "rabbitmq_cpu_s" in r]
    if not runs:
        return None
    servers = median([r["postgres_cpu_s"] for r in runs]) + median(
        [r["rabbitmq_cpu_s"] for r in runs]
    )
    return (floor_s + servers) / cores


def _e2e_rows(results: dict[str, Any]) -> list[str]:
    rows = [
        "| dataset | contender | wall s median (min-max) | features/s | MB/s | 202 ms "
        "| peak RSS MB per process | CPU s per process (median run) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    sizes = results.get("sizes", {})
    for name, row in results.get("e2e", {}).items():
        mb = sizes.get(name, {}).get("bytes", 0) / MB
        features = next(
            (r["counts"]["received"] for c in CONTENDERS for r in row.get(c, {}).get("runs", [])
             if "received" in r.get("counts", {})),
            0,
        )  # fmt: skip
        for contender in CONTENDERS:
            result = row.get(contender)
            if not result:
                continue
            w = median(walls(result))
            if not w:
                rows.append(f"| {name} | {contender} | failed: {result.get('error', '?')[:200]} "
                            "| | | | | |")  # fmt: skip
                continue
            rows.append(
                f"| {name} | {contender} | {spread(walls(result))} | {features / w:,.0f} "
                f"| {mb / w:.1f} | {spread(acks(result), 1000, 0)} | {_rss_text(result)} "
                f"| {_cpu_text(result)} |"
            )
        f = results.get("floor", {}).get(name, [])
        if f and isinstance(f, list):
            w = median([r["wall_s"] for r in f])
            steps = ", ".join(
                f"{k.removesuffix('_s')} {median([r.get(k, 0.0) for r in f]):.2f}"
                for k in ("convert_s", "validate_s", "reproject_s", "encode_s")
            )
            rows.append(
                f"| {name} | floor (1 process) | {spread([r['wall_s'] for r in f])} "
                f"| {features / w:,.0f} | {mb / w:.1f} | - "
                f"| {median([r.get('peak_rss_mb', 0.0) for r in f]):.0f} | {steps} |"
            )
    return rows


def _ack_rows(results: dict[str, Any]) -> list[str]:
    rows = [
        "| body | geobus 202 ms median (min-max) | drain 202 ms | geobus - drain ms |",
        "|---|---|---|---|",
    ]
    sources: dict[str, list[float]] = {k: acks(v) for k, v in results.get("ack_geobus", {}).items()}
    e2e = results.get("e2e", {})
    if "countries-maritime-10m" in e2e:
        sources["38 MB"] = acks(e2e["countries-maritime-10m"]["geobus"])
    for key, label in BIG_BODIES.items():
        if key in results.get("scaling", {}):
            sources[label] = acks(results["scaling"][key])
    for label, drained in results.get("ack_drain", {}).items():
        g = sources.get(label)
        if not g:
            continue
        added = (median(g) - median(drained)) * 1000
        rows.append(
            f"| {label} | {spread(g, 1000, 1)} | {spread(drained, 1000, 1)} | {added:+.1f} |"
        )
    return rows


def _scaling_rows(results: dict[str, Any]) -> list[str]:
    rows = [
        "| document | replicas | wall s | MB/s | 202 ms | ingress / conversion worker / "
        "largest stage peak RSS MB | floor s |",
        "|---|---|---|---|---|---|---|",
    ]
    sizes = results.get("sizes", {})
    floors = results.get("floor", {})
    for key, result in results.get("scaling", {}).items():
        name, replicas = key.split()
        mb = sizes.get(name, {}).get("bytes", 0) / MB
        w = median(walls(result))
        if not w:
            rows.append(f"| {name} | {replicas} | failed | | | | |")
            continue
        ingress, workers, stages = _geobus_rss(result)
        f = floors.get(name, [])
        f = f if isinstance(f, list) else []
        rows.append(
            f"| {name} | {replicas.removeprefix('x')} | {spread(walls(result))} | {mb / w:.1f} "
            f"| {spread(acks(result), 1000, 0)} | {ingress:.0f} / {workers:.0f} / {stages:.0f} "
            f"| {spread([r['wall_s'] for r in f]) if f else '-'} |"
        )
    return rows


def _codec_rows(results: dict[str, Any]) -> list[str]:
    rows = [
        "| dataset | codec | encode MB/s | decode MB/s | size / GeoJSON | peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for name, codecs in results.get("codec", {}).items():
        for codec, r in codecs.items():
            if "error" in r:
                rows.append(f"| {name} | {codec} | failed | | | |")
                continue
            mb = r.get("document_bytes", 0) / MB
            rows.append(
                f"| {name} | {codec} | {mb / r['encode_s']:.1f} | {mb / r['decode_s']:.1f} "
                f"| {r['encoded_bytes'] / MB / mb:.2f} | {r['peak_rss_mb']:.0f} |"
            )
    return rows


def markdown(results: dict[str, Any]) -> str:
    """The whole report as Markdown: targets first, then the details and the machine."""
    m = results.get("machine", {})
    s = results.get("settings", {})
    lines = [
        "# geobus benchmark results",
        "",
        f"`python -m bench{' --quick' if s.get('quick') else ''}` — {s.get('repeat')} "
        f"repetition(s) per measurement, medians with (min-max); job state polled every "
        f"{s.get('poll_s', 0) * 1000:.0f} ms. Suite wall time {results.get('suite_s', 0):.0f} s. "
        f"Code measured: {results.get('code', '?')}"
        f"{''.join(f', {k}={v}' for k, v in s.get('env', {}).items())}. "
        f"Machine: {m.get('nproc')} CPUs ({m.get('cpu')}), git {m.get('git')}.",
        "",
        "## Against the targets of issue 6",
        "",
        *_targets(results),
        "",
        *[f"- measurement failed: {e}" for e in results.get("errors", [])],
        "",
        "## End to end (first byte of the POST → features in PostGIS, EPSG:3857, repaired)",
        "",
        *_e2e_rows(results),
        "",
        "## Acknowledgement (first byte → 202)",
        "",
        *_ack_rows(results),
        "",
        "## Scaling",
        "",
        *_scaling_rows(results),
        "",
    ]
    probed = next((r for r in results.get("scaling", {}).values() if "probe" in r), None)
    if probed is not None:
        lines += ["## Small requests during the largest job", ""]
        lines += _probe_paragraphs(probed["probe"])
    if "probe" in results.get("probe_ordinary", {}):
        lines += [
            "The same probe once more with the ingress's event loop at ordinary priority"
            " (GEOBUS_INGRESS_RT_PRIORITY=0, the default of `geobus up`):",
            "",
            *_probe_paragraphs(results["probe_ordinary"]["probe"]),
        ]
    if results.get("codec"):
        lines += ["## Codec (bench.roundtrip, against geobuf precision 6)", ""]
        lines += [*_codec_rows(results), ""]
    lines += [
        "## Machine",
        "",
        "```",
        f"nproc: {m.get('nproc')}",
        f"cpu: {m.get('cpu')}",
        f"kernel: {m.get('kernel')}",
        f"load average at start (1/5/15 min): {m.get('loadavg')}",
        str(m.get("free -g", "")),
        *[f"{k}: {v}" for k, v in m.get("versions", {}).items()],
        "```",
        "",
    ]
    return "\n".join(lines)
