"""Where the end-to-end time goes: py-spy on every pipeline process during one job.

    python -m bench.profile NAME [--rate HZ] [--out DIR]

Starts a fresh pipeline (PostGIS, EPSG:3857), attaches ``py-spy record``
(raw collapsed stacks, native frames off, subprocesses followed so the
ingress's conversion worker is included) to each process, POSTs dataset
NAME, waits for ``successful`` and stops the recorders. Prints, per process,
how many seconds it was on CPU in Python (samples / rate) against the job's
wall time, and where those seconds went: by library, and the top functions
by self time. The collapsed stacks stay in DIR for flame graphs.
"""

from __future__ import annotations

import argparse
import collections
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench import documents, harness

PY_SPY = str(harness.BIN / "py-spy")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]*)(?::(?P<line>\d+))?\)$")
BUCKETS = (
    ("geobus/codec", "geobus codec"),
    ("geobus/store", "geobus store"),
    ("geobus/validator", "geobus validator"),
    ("geobus/reprojector", "geobus reprojector"),
    ("geobus/writer", "geobus writer"),
    ("geobus/ingress", "geobus ingress"),
    ("geobus/broker", "geobus broker"),
    ("geobus/", "geobus other"),
    ("shapely/", "shapely (GEOS)"),
    ("pyproj/", "pyproj (PROJ)"),
    ("google/protobuf", "protobuf"),
    ("aio_pika", "aio-pika/aiormq"),
    ("aiormq", "aio-pika/aiormq"),
    ("pamqp", "aio-pika/aiormq"),
    ("psycopg", "psycopg"),
    ("sqlite3", "sqlite3"),
    ("asyncio", "asyncio"),
    ("concurrent/futures", "executor"),
    ("multiprocessing", "multiprocessing"),
    ("threading", "threads (waiting)"),
    ("uvicorn", "uvicorn"),
    ("starlette", "starlette"),
    ("numpy", "numpy"),
    ("msgspec", "msgspec"),
)


def bucket(file: str) -> str:
    """The library a source file belongs to."""
    for needle, name in BUCKETS:
        if needle in file:
            return name
    return "other"


def summarize(raw: Path, rate: float, top: int = 8) -> dict[str, dict[str, Any]]:
    """Per (sub)process of one raw profile: active seconds, self seconds by library, top
    functions by self time. A process's children (``--subprocesses``: the ingress's
    conversion worker) are keyed ``child``, the process itself ``main``."""
    by_bucket: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    by_func: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        depth = sum(1 for f in frames if f.startswith("process "))
        who = "main" if depth <= 1 else "child"
        n = int(count)
        leaf = frames[-1]
        m = _FRAME.match(leaf)
        file = m.group("file") if m else leaf
        func = f"{m.group('func')} ({Path(file).name}:{m.group('line')})" if m else leaf
        by_bucket[who][bucket(file)] += n
        by_func[who][func] += n
    return {
        who: {
            "active_s": round(sum(by_bucket[who].values()) / rate, 2),
            "by_library_s": {k: round(v / rate, 2) for k, v in by_bucket[who].most_common(top)},
            "top_self_s": {k: round(v / rate, 2) for k, v in by_func[who].most_common(top)},
        }
        for who in by_bucket
    }


def profile(name: str, rate: int, out: Path) -> dict[str, Any]:
    """Profile one job of dataset ``name`` through a fresh pipeline."""
    path = documents.path(name)
    out.mkdir(parents=True, exist_ok=True)
    recorders: dict[str, subprocess.Popen[bytes]] = {}
    with (
        harness.fresh_database() as pg_url,
        harness.pipeline(pg_url, out / "logs") as (group, base),
        httpx.Client(timeout=1800) as client,
    ):
        harness.warm(client, base)
        for proc_name, process in group.processes.items():
            argv = [PY_SPY, "record", "--pid", str(process.pid), "--rate", str(rate),
                    "--format", "raw", "--subprocesses", "--nonblocking", "--full-filenames",
                    "--output", str(out / f"{proc_name}.txt")]  # fmt: skip
            recorders[proc_name] = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        time.sleep(1.0)  # let the recorders attach
        t0, ack, document = harness.timed_post(
            client, base + "/v1/features", path, params={"collection": "profiled"}
        )
        done, final = harness.wait_job(client, f"{base}/v1/jobs/{document['jobID']}")
        for recorder in recorders.values():
            recorder.send_signal(signal.SIGINT)
        for recorder in recorders.values():
            recorder.wait(timeout=60)
    wall = done - t0
    result: dict[str, Any] = {"dataset": name, "wall_s": wall, "ack_s": ack, "job": final}
    for proc_name in recorders:
        raw = out / f"{proc_name}.txt"
        if raw.exists():
            for who, summary in summarize(raw, rate).items():
                result[proc_name if who == "main" else f"{proc_name} (child)"] = summary
    return result


def main(argv: list[str] | None = None) -> int:
    """Profile one job and print where its time went."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("name", help="dataset (bench.datasets name or points-100k)")
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--out", type=Path, help="keep collapsed stacks here (default: temp)")
    parser.add_argument("--code", choices=("worktree", "head"), default="worktree")
    parser.add_argument("--with", dest="overlay", nargs="+", metavar="FILE",
                        help="with --code head: these files from the working tree")  # fmt: skip
    args = parser.parse_args(argv)
    from bench.suite import use_code

    with tempfile.TemporaryDirectory(prefix="geobus-profile-") as tmp:
        use_code(args.code, Path(tmp), args.overlay)
        result = profile(args.name, args.rate, args.out or Path(tmp))
    print(f"{args.name}: wall {result['wall_s']:.2f} s (202 after {result['ack_s'] * 1000:.0f} ms)")
    for key, value in result.items():
        if not isinstance(value, dict) or "active_s" not in value:
            continue
        print(f"\n{key}: {value['active_s']:.2f} s on CPU in Python (sampled)")
        for lib, s in value["by_library_s"].items():
            print(f"    {s:6.2f} s  {lib}")
        print("  top functions by self time:")
        for func, s in value["top_self_s"].items():
            print(f"    {s:6.2f} s  {func}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
