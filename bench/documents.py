"""The benchmark's request bodies, derived from the real datasets in ``bench.datasets``.

Two are made here rather than in ``bench.datasets``: a ~1 KB document (one
real earthquake feature) for the small-POST measurements, and ``points-100k``,
the first 100,000 features of ``points-large`` (earthquakes repeated), a point
set large enough to show per-feature cost yet small enough that the
reference pattern (one ``INSERT`` per feature) finishes in a benchmark run.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from bench import datasets

POINTS = 100_000


def _write(dest: Path, features: list[bytes] | itertools.islice[bytes]) -> Path:
    tmp = dest.with_suffix(".tmp")
    with tmp.open("wb") as out:
        out.write(b'{"type":"FeatureCollection","features":[\n')
        for i, raw in enumerate(features):
            out.write(b",\n" + raw if i else raw)
        out.write(b"\n]}\n")
    tmp.replace(dest)
    return dest


def small() -> Path:
    """A ~1 KB FeatureCollection: the first earthquake feature."""
    dest = datasets.DATA_DIR / "bench-1kb.geojson"
    if not dest.exists():
        first = next(datasets.iter_feature_bytes(datasets.path("earthquakes")))
        _write(dest, [first])
    return dest


def points() -> Path:
    """``points-100k``: the first 100,000 features of ``points-large``."""
    dest = datasets.DATA_DIR / "points-100k.geojson"
    if not dest.exists():
        source = datasets.iter_feature_bytes(datasets.path("points-large"))
        _write(dest, itertools.islice(source, POINTS))
    return dest


def path(name: str) -> Path:
    """A dataset of ``bench.datasets`` or one of the bodies made here."""
    if name == "points-100k":
        return points()
    if name == "bench-1kb":
        return small()
    return datasets.path(name)
