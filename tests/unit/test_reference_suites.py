"""Outside reference suites: GEOS's own isValid cases and the antimeridian package's cases.

The files are fetched by ``scripts/fetch-reference-suites`` into ``.data/``
(never committed). A missing suite fails the tests with the command to run.

How a GEOS case is judged: its geometry goes through the real path — GeoJSON
text through the ingress codec, then the validator — in a projected CRS so
that the WGS 84 range rules do not apply to GEOS's arbitrary coordinates. The
case *agrees* when GEOS's expected ``isValid`` is true and the feature passes
without a repair or rejection, or when it is false and geobus rejects or
repairs it. Every disagreement is named in ``GEOS_EXPLAINED`` with its reason.
"""

from __future__ import annotations

import io
import json
import re
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import shapely

from geobus.codec.batches import BatchContext, BatchLimits
from geobus.codec.convert import DocumentConverter
from geobus.v1 import feature_pb2
from geobus.validator.transform import ValidationPolicy, validate
from geobus.validity import repair

ROOT = Path(__file__).resolve().parents[2] / ".data"
FETCH = "run scripts/fetch-reference-suites (PYTHON=/path/to/venv/python) to fetch it into .data/"


def _suite(name: str) -> Path:
    path = ROOT / name
    if not path.is_dir():
        pytest.fail(f"the reference suite {path} is missing: {FETCH}")
    return path


# -- GEOS xmltester isValid ------------------------------------------------------


@dataclass(frozen=True)
class GeosCase:
    """One isValid case: where it comes from, its geometry and the expected answer."""

    name: str
    geometry: shapely.Geometry | None
    source: str
    expected: bool


def geos_cases() -> list[GeosCase]:
    """Every isValid case of every XML file of the GEOS suite."""
    cases = []
    for path in sorted(_suite("geos-xmltester").rglob("*.xml")):
        text = path.read_text(errors="replace")
        if 'name="isValid"' not in text:
            continue
        # The suite's own files, fetched from Debian's archive by our script.
        root = ET.fromstring(text)  # noqa: S314
        for number, case in enumerate(root.iter("case")):
            a = case.find("a")
            for op in case.iter("op"):
                if op.get("name") != "isValid" or op.get("arg1", "A").upper() != "A":
                    continue
                source = (a.text or "").strip() if a is not None else ""
                cases.append(
                    GeosCase(
                        name=f"{path.relative_to(ROOT)}#{number}",
                        geometry=_read(source),
                        source=source,
                        expected=(op.text or "").strip().lower() == "true",
                    )
                )
    return cases


def _read(source: str) -> shapely.Geometry | None:
    with warnings.catch_warnings():
        # Cases with NaN coordinates make Shapely warn; they are read all the same.
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            if re.fullmatch(r"[0-9A-Fa-f\s]+", source):
                return shapely.from_wkb(bytes.fromhex("".join(source.split())))
            return shapely.from_wkt(source)
        except shapely.errors.GEOSException:
            return None


def geobus_verdicts(cases: list[GeosCase]) -> dict[str, str]:
    """Per case: "valid" (passed untouched), "repaired", "rejected:<stage>:<reason>"."""
    features = []
    for case in cases:
        geometry = case.geometry
        if geometry is not None and shapely.get_type_id(geometry) == 2:
            # GeoJSON has no LinearRing: a ring is sent as the shell of a polygon.
            geometry = shapely.Polygon(geometry)
        text = "null" if geometry is None else shapely.to_geojson(geometry)
        features.append(f'{{"type":"Feature","properties":null,"geometry":{text}}}')
    doc = ('{"type":"FeatureCollection","features":[' + ",".join(features) + "]}").encode()
    context = BatchContext(job_id="geos", crs="EPSG:3857")
    verdicts: dict[int, str] = {}
    for output in DocumentConverter(io.BytesIO(doc), context, BatchLimits(max_features=500)):
        if output.rejections is not None:
            for r in output.rejections.rejections:
                verdicts[r.feature_index] = f"rejected:ingress:{r.reason}"
        if output.batch is None:
            continue
        result = validate(output.batch, ValidationPolicy())
        if result.rejections is not None:
            for r in result.rejections.rejections:
                verdicts[r.feature_index] = f"rejected:validator:{r.reason}"
        for f in result.batch.features:
            repaired = feature_pb2.ADJUSTMENT_KIND_REPAIRED in [a.kind for a in f.adjustments]
            verdicts[f.index] = "repaired" if repaired else "valid"
    return {case.name: verdicts[i] for i, case in enumerate(cases)}


# Cases where geobus and GEOS answer differently, each for a documented reason.
_EMPTY_RING = (
    "an empty ring inside a polygon has no RFC 7946 form: GeoJSON writes it as [], and a"
    " linear ring needs four or more positions, so the ingress rejects it"
    " (invalid_coordinates); GEOS skips empty rings"
)
GEOS_EXPLAINED: dict[str, str] = {
    "geos-xmltester/tests/general/TestValid.xml#14": _EMPTY_RING,
    "geos-xmltester/tests/general/TestValid.xml#15": _EMPTY_RING,
    "geos-xmltester/tests/general/TestValid2.xml#749": _EMPTY_RING,
    "geos-xmltester/tests/general/TestValid2.xml#750": _EMPTY_RING,
}


def test_geos_is_valid_cases_agree() -> None:
    """geobus judges every GEOS isValid case as GEOS does, but for the explained ones."""
    cases = geos_cases()
    verdicts = geobus_verdicts(cases)
    disagree = {}
    for case in cases:
        verdict = verdicts[case.name]
        geobus_valid = verdict == "valid"
        if geobus_valid != case.expected:
            disagree[case.name] = f"GEOS {case.expected}, geobus {verdict}: {case.source[:80]}"
    agree = len(cases) - len(disagree)
    print(f"GEOS isValid: {agree} agree / {len(cases)} total")
    for name, why in disagree.items():
        print(" ", name, why)
    assert len(cases) > 800
    assert set(disagree) == set(GEOS_EXPLAINED), disagree


# -- antimeridian package cases ------------------------------------------------------


def antimeridian_cases() -> list[tuple[str, str, str]]:
    """(name, input GeoJSON, expected GeoJSON) for every input with a planar expected output.

    The "flat" outputs are the package's answers with ``great_circle=False``,
    the mode geobus uses (straight edges in longitude/latitude).
    """
    suite = _suite("antimeridian") / "data"
    return [
        (path.stem, path.read_text(), (suite / "output" / "flat" / path.name).read_text())
        for path in sorted((suite / "input").glob("*.json"))
        if (suite / "output" / "flat" / path.name).exists()
    ]


def geobus_answer(text: str) -> tuple[shapely.Geometry | None, list[int], str]:
    """What the validator stores for one GeoJSON geometry: geometry, adjustments, rejection."""
    member = json.dumps(json.loads(text))
    doc = f'{{"type":"Feature","properties":null,"geometry":{member}}}'
    (output,) = DocumentConverter(io.BytesIO(doc.encode()), BatchContext(job_id="am"))
    if output.batch is None:
        assert output.rejections is not None
        return None, [], output.rejections.rejections[0].message
    result = validate(output.batch, ValidationPolicy())
    if result.rejections is not None:
        return None, [], result.rejections.rejections[0].message
    (feature,) = result.batch.features
    geometry = shapely.from_wkb(feature.geometry) if feature.geometry else None
    return geometry, [a.kind for a in feature.adjustments], ""


_OPTION = "the package's own test calls it with {}, an option geobus does not set"
# Cases whose expected answer needs an option geobus does not set, or input
# that is not RFC 7946 GeoJSON.
ANTIMERIDIAN_EXPLAINED: dict[str, str] = {
    "both-poles": _OPTION.format("fix_winding=False"),
    "force-north-pole": _OPTION.format("force_north_pole=True"),
    "issues-124": _OPTION.format("force_south_pole=True"),
    "issues-164": _OPTION.format("reverse=True (fix_geojson)"),
    "issues-187": "its ring is not closed (first and last positions differ), which RFC 7946"
    " forbids: the ingress rejects it (ring_not_closed); the package's test closes it silently",
}


def _same(got: shapely.Geometry, want: shapely.Geometry) -> bool:
    """Equal vertex for vertex, or within 1e-9 degrees (near-duplicate vertices dropped)."""
    if shapely.equals_exact(shapely.normalize(got), shapely.normalize(want), tolerance=1e-9):
        return True
    return bool(shapely.hausdorff_distance(got, want) < 1e-9)


def test_antimeridian_cases_match_the_package_outputs() -> None:
    """The validator's cut of every case equals the package's planar expected output.

    Where the package's expected output is itself invalid (self-intersecting
    on ±180), geobus's answer must equal that output repaired.
    """
    disagree = {}
    after_repair = []
    cases = antimeridian_cases()
    for name, source, expected_text in cases:
        expected = shapely.orient_polygons(shapely.from_geojson(expected_text))
        got, kinds, rejected = geobus_answer(source)
        if got is None:
            disagree[name] = f"rejected: {rejected}"
        elif _same(got, expected):
            continue
        elif not shapely.is_valid(expected) and _same(
            got, shapely.orient_polygons(repair(np.array([expected], dtype=object))[0])
        ):
            after_repair.append(name)
        else:
            disagree[name] = f"got {shapely.to_wkt(got, rounding_precision=3)[:200]} {kinds}"
    print(
        f"antimeridian: {len(cases) - len(disagree)} agree / {len(cases)} total"
        f" ({', '.join(after_repair)} after repairing the package's invalid output)"
    )
    for name, why in disagree.items():
        print(" ", name, why)
    assert len(cases) >= 25
    assert set(disagree) == set(ANTIMERIDIAN_EXPLAINED), disagree
