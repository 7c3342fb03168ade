"""Geometry at the edges of the globe through the real pipeline: counts table and pictures.

Usage: ``python -m bench.edges [--out docs/images]`` (RabbitMQ on 127.0.0.1 needed).

The published ``countries-land-10km`` is already cut at ±180° and clipped at
85.05°S, so geobus has nothing to cut or clip in it. Feeds in the wild send
the same countries the ways RFC 7946 §3.1.9 warns about, so a second
document holds those forms, derived from the real geometries:

- Russia in 0-360 longitudes: the parts west of ±180 (Chukotka) shifted by
  +360 and joined to the rest (longitudes up to 190);
- Fiji (maritime zone from ``countries-maritime-10m``: at 10 km resolution
  the land of Fiji no longer reaches ±180) joined across ±180, then written
  back in -180..180, so its rings jump over the antimeridian;
- Antarctica as one ring around the south pole: its artificial edges along
  ±180 and along 85.05°S removed.

Both documents go through a fresh pipeline (ingress, validator, reprojector,
writer; GeoPackage store) into EPSG:4326 and into EPSG:3857, and the job
counts are printed as a Markdown table. The pictures show Fiji and
Antarctica as sent next to what was stored.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import shapely

from bench import datasets, harness
from geobus.validity import polygonal_parts

TARGETS = ("EPSG:4326", "EPSG:3857")
SLOPPY = ("RUS", "FJI", "ATA")


def _features(name: str) -> dict[str, dict[str, Any]]:
    document = json.loads(datasets.path(name).read_bytes())
    return {f["properties"]["A3"]: f for f in document["features"]}


def _joined(geometry: shapely.Geometry) -> shapely.Geometry:
    """Parts west of the antimeridian shifted by +360 and unioned with the rest."""
    parts = shapely.get_parts(geometry)
    west = shapely.bounds(parts)[:, 0] <= -179.999
    parts[west] = shapely.transform(parts[west], lambda c: c + np.array([360.0, 0.0]))
    # The source has invalid parts (nested shells): union needs valid input,
    # and a country stays polygonal.
    joined = shapely.union_all(shapely.make_valid(parts))
    return polygonal_parts(np.array([joined], dtype=object))[0]


def _wrapped(geometry: shapely.Geometry) -> shapely.Geometry:
    """Longitudes beyond 180 written back in -180..180, vertex by vertex (rings then jump)."""
    return shapely.transform(
        geometry,
        lambda c: np.column_stack([np.where(c[:, 0] > 180, c[:, 0] - 360, c[:, 0]), c[:, 1]]),
    )


def _around_the_pole(geometry: shapely.Geometry) -> shapely.Geometry:
    """The largest part's shell without its edges on ±180 and 85.05°S: a ring around the pole."""
    parts = shapely.get_parts(geometry)
    shell = shapely.get_exterior_ring(parts[np.argmax(shapely.area(parts))])
    coords = shapely.get_coordinates(shell)[:-1]
    keep = (np.abs(coords[:, 0]) < 180) & (coords[:, 1] > -85.04)
    ring = coords[keep]
    # Start where the ring jumps, so the jump is one edge, not the closing one.
    jump = int(np.argmax(np.abs(np.diff(ring[:, 0])))) + 1
    ring = np.roll(ring, -jump, axis=0)
    return shapely.Polygon(np.vstack([ring, ring[:1]]))


def sloppy_document() -> bytes:
    """countries-land-10km with RUS, FJI and ATA replaced by their sloppy forms."""
    land = _features("countries-land-10km")
    maritime = _features("countries-maritime-10m")
    shapes = {
        "RUS": _joined(shapely.geometry.shape(land["RUS"]["geometry"])),
        "FJI": _wrapped(_joined(shapely.geometry.shape(maritime["FJI"]["geometry"]))),
        "ATA": _around_the_pole(shapely.geometry.shape(land["ATA"]["geometry"])),
    }
    features = []
    for code, feature in land.items():
        geometry = feature["geometry"]
        if code in shapes:
            geometry = json.loads(shapely.to_geojson(shapes[code]))
        features.append({"type": "Feature", "properties": {"A3": code}, "geometry": geometry})
    if "FJI" not in land:
        features.append({"type": "Feature", "properties": {"A3": "FJI"}, "geometry": None})
    features[[f["properties"]["A3"] for f in features].index("FJI")]["geometry"] = json.loads(
        shapely.to_geojson(shapes["FJI"])
    )
    return json.dumps({"type": "FeatureCollection", "features": features}).encode()


@contextlib.contextmanager
def pipeline(workdir: Path, target: str, extra: dict[str, str] | None = None) -> Iterator[str]:
    """A fresh pipeline into a GeoPackage in ``workdir`` storing in ``target``; its URL."""
    env = harness.geobus_env(str(workdir / "store.gpkg"), workdir / "spool")
    env["GEOBUS_TARGET_CRS"] = target
    env.update(extra or {})
    group = harness.Group(env=env, logs=workdir)
    base = f"http://127.0.0.1:{env['GEOBUS_HTTP_PORT']}"
    try:
        for stage in harness.STAGES:
            group.start(stage, harness.GEOBUS, "worker", stage)
        group.start("ingress", harness.GEOBUS, "ingress")
        group.wait_ready(base + "/readyz")
        yield base
    finally:
        group.stop()
        harness._delete_topology(env["GEOBUS_PREFIX"])


def run(document: Path, base: str, collection: str) -> dict[str, Any]:
    """POST ``document``, wait for the job, return its final job document."""
    with httpx.Client(timeout=600) as client:
        _, _, accepted = harness.timed_post(
            client, base + "/v1/features", document, params={"collection": collection}
        )
        _, job = harness.wait_job(client, base + f"/v1/jobs/{accepted['jobID']}")
    return job


def stored(store: Path, collection: str) -> dict[str, shapely.Geometry]:
    """The stored geometry of every feature of ``collection``, by country code."""
    from pyogrio import raw  # type: ignore[import-untyped]

    _meta, _fids, geometry, fields = raw.read(store, layer=collection)
    names = [json.loads(p)["A3"] for p in fields[3]]
    return {
        n: (shapely.from_wkb(g) if g is not None else None)
        for n, g in zip(names, geometry, strict=True)
    }


def table(results: dict[tuple[str, str], dict[str, Any]]) -> str:
    """The counts as Markdown: one row per document and target CRS."""
    kinds = ["antimeridian_cut", "longitude_normalised", "clipped", "repaired"]
    head = "| document | target | received | stored | " + " | ".join(kinds) + " | rejected |"
    rows = [head, "|" + "---|" * (len(kinds) + 5)]
    for (document, target), job in results.items():
        counts = job["counts"]
        adjusted = counts.get("adjusted", {})
        cells = [str(adjusted.get(k, 0)) for k in kinds]
        rows.append(
            f"| {document} | {target} | {counts['received']} | {counts['stored']} | "
            + " | ".join(cells)
            + f" | {counts['rejected']} |"
        )
    return "\n".join(rows)


def pictures(sent: dict[str, shapely.Geometry], kept: dict[str, dict[str, Any]], out: Path) -> Path:
    """Fiji and Antarctica as sent, as stored in EPSG:4326 and as stored in EPSG:3857."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import PathPatch
    from matplotlib.path import Path as MPath

    def draw(ax: Any, geometry: shapely.Geometry, title: str, color: str) -> None:
        for polygon in shapely.get_parts(geometry):
            if shapely.get_type_id(polygon) != 3:
                continue
            rings = [polygon.exterior, *polygon.interiors]
            vertices = np.concatenate([np.asarray(r.coords)[:, :2] for r in rings])
            codes = np.concatenate(
                [[MPath.MOVETO] + [MPath.LINETO] * (len(r.coords) - 1) for r in rings]
            )
            ax.add_patch(PathPatch(MPath(vertices, codes), fc=color, ec="black", lw=0.4, alpha=0.7))
        ax.autoscale_view()
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=6)

    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    # Fiji's stored halves lie at opposite ends of the map: they are drawn
    # with the western half shifted by one world width (360° or 2πR), in
    # another colour, so that the cut along ±180 shows.
    worlds = {"EPSG:4326": 360.0, "EPSG:3857": 2 * 20037508.342789244}
    for row, code in enumerate(("FJI", "ATA")):
        draw(axes[row][0], sent[code], f"{code} as sent (OGC:CRS84, drawn as lon/lat)", "tab:red")
        for col, (target, color) in enumerate(
            (("EPSG:4326", "tab:green"), ("EPSG:3857", "tab:blue")), start=1
        ):
            geometry = kept[target][code]
            title = f"{code} as stored, {target}"
            if code == "FJI":
                pieces = shapely.get_parts(geometry)
                west = shapely.bounds(pieces)[:, 2] <= 0
                shift = np.array([worlds[target], 0.0])
                moved = shapely.transform(pieces[west], lambda c, d=shift: c + d)
                draw(axes[row][col], shapely.multipolygons(pieces[~west]), title, color)
                draw(axes[row][col], shapely.multipolygons(moved), title, "tab:orange")
                axes[row][col].set_title(
                    title + "\n(orange: part west of ±180, drawn shifted)", fontsize=8
                )
            else:
                draw(axes[row][col], geometry, title, color)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "antimeridian-fiji-antarctica.png"
    fig.savefig(path, dpi=90)
    return path


def main() -> None:
    """Run both documents into both targets; print the table; save the picture."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=harness.REPO_ROOT / "docs" / "images")
    parser.add_argument(
        "--set", dest="env", action="append", default=[], help="GEOBUS_NAME=value for the pipeline"
    )
    args = parser.parse_args()
    args.env = dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory(prefix="geobus-edges-") as tmp:
        work = Path(tmp)
        documents = {
            "countries-land-10km": datasets.path("countries-land-10km"),
            "same, sloppy RUS/FJI/ATA": work / "sloppy.geojson",
        }
        documents["same, sloppy RUS/FJI/ATA"].write_bytes(sloppy_document())
        results: dict[tuple[str, str], dict[str, Any]] = {}
        kept: dict[str, dict[str, Any]] = {}
        for target in TARGETS:
            workdir = work / target.replace(":", "_")
            workdir.mkdir()
            with pipeline(workdir, target, args.env) as base:
                for n, (name, path) in enumerate(documents.items()):
                    results[(name, target)] = run(path, base, f"edges_{n}")
            kept[target] = stored(workdir / "store.gpkg", "edges_1")
        print(table(results))
        sloppy = json.loads(documents["same, sloppy RUS/FJI/ATA"].read_bytes())
        sent = {
            f["properties"]["A3"]: shapely.geometry.shape(f["geometry"])
            for f in sloppy["features"]
            if f["properties"]["A3"] in SLOPPY
        }
        print(pictures(sent, kept, args.out))


if __name__ == "__main__":
    main()
