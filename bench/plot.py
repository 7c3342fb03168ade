"""The suite's plot: latency of small requests during the big job, throughput, scaling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report import CONTENDERS, MB, floor_walls, median, walls


def plot(results: dict[str, Any], dest: Path) -> None:
    """Write a PNG with three panels (those with data)."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    fig, (latency, throughput, scaling) = plt.subplots(1, 3, figsize=(18, 5.5))
    sizes = results.get("sizes", {})

    probed = next(((k, r) for k, r in results.get("scaling", {}).items() if "probe" in r), None)
    if probed is not None:
        key, result = probed
        for kind, color in (("post", "tab:blue"), ("healthz", "tab:orange")):
            samples = result["probe"].get(kind, [])
            latency.scatter(
                [s[0] for s in samples],
                [s[1] * 1000 for s in samples],
                s=6,
                color=color,
                label="1 KB POST" if kind == "post" else "GET /healthz",
            )
        ack = result["runs"][0].get("ack_s")  # the probe runs during the first repetition
        if ack:
            latency.axvline(ack, color="grey", linestyle="--", label="202 of the big POST")
        latency.axvline(result["runs"][0]["wall_s"], color="black", linestyle=":",
                        label="big job successful")  # fmt: skip
        latency.axhline(10, color="red", linewidth=0.8, label="target p99 10 ms")
        latency.set_yscale("log")
        latency.set_xlabel("seconds since the big POST started")
        latency.set_ylabel("latency (ms)")
        latency.set_title(f"Small requests while {key.split()[0]} is ingested")
        latency.legend(fontsize=8)

    e2e = results.get("e2e", {})
    names = list(e2e)
    width = 0.2
    for i, contender in enumerate((*CONTENDERS, "floor")):
        values = []
        for name in names:
            mb = sizes.get(name, {}).get("bytes", 0) / MB
            if contender == "floor":
                w = median(floor_walls(results, name))
            else:
                w = median(walls(e2e[name].get(contender, {})))
            values.append(mb / w if w else 0.0)
        throughput.bar([x + (i - 1.5) * width for x in range(len(names))], values, width,
                       label=contender)  # fmt: skip
    throughput.set_xticks(range(len(names)), names, fontsize=8)
    throughput.set_ylabel("MB/s, first byte → in PostGIS (higher is better)")
    throughput.set_title("End-to-end throughput")
    throughput.legend(fontsize=8)

    for replicas, marker in (("x1", "o"), ("x2", "s")):
        points = [
            (sizes.get(k.split()[0], {}).get("bytes", 0) / MB, median(walls(r)))
            for k, r in results.get("scaling", {}).items()
            if k.endswith(replicas) and walls(r)
        ]
        if points:
            scaling.plot(*zip(*points, strict=True), marker=marker,
                         label=f"{replicas.removeprefix('x')} replica(s) per stage")  # fmt: skip
    floor_points = [
        (sizes.get(k, {}).get("bytes", 0) / MB, median(floor_walls(results, k)))
        for k in results.get("floor", {})
        if k.startswith("big-") and floor_walls(results, k)
    ]
    if floor_points:
        scaling.plot(*zip(*floor_points, strict=True), marker="^", linestyle="--", label="floor")
    scaling.set_xlabel("document MB")
    scaling.set_ylabel("seconds, first byte → in PostGIS")
    scaling.set_title("Scaling with document size")
    scaling.legend(fontsize=8)

    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)
