"""The floor: the pipeline's computation in one process, no broker, no database.

    python -m bench.floor NAME

Parses the document with the real ``DocumentConverter``, runs the real
validator and reprojector transforms (repair, EPSG:3857) and encodes the
output batch, printing one JSON line: seconds in total and per step, features
and peak RSS. The suite runs it in a fresh process per repetition.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from bench import documents


def run(path: Path, target_crs: str = "EPSG:3857") -> dict[str, float]:
    """Convert, validate, reproject and encode every batch of ``path``; time each step."""
    from geobus.codec.batches import BatchContext
    from geobus.codec.convert import DocumentConverter
    from geobus.reprojector.transform import Reprojector
    from geobus.settings import Settings
    from geobus.validator.transform import ValidationPolicy, validate

    settings = Settings.from_env({"GEOBUS_TARGET_CRS": target_crs})
    policy = ValidationPolicy.from_settings(settings)
    reproject = Reprojector(settings.target_crs)
    steps = {"convert_s": 0.0, "validate_s": 0.0, "reproject_s": 0.0, "encode_s": 0.0}
    features = 0
    start = time.perf_counter()
    with path.open("rb") as stream:
        outputs = iter(DocumentConverter(stream, BatchContext(job_id="floor")))
        while True:
            t0 = time.perf_counter()
            out = next(outputs, None)
            t1 = time.perf_counter()
            steps["convert_s"] += t1 - t0
            if out is None:
                break
            if out.batch is None:
                continue
            validated = validate(out.batch, policy)
            t2 = time.perf_counter()
            reprojected = reproject(validated.batch)
            t3 = time.perf_counter()
            reprojected.batch.SerializeToString()
            steps["encode_s"] += time.perf_counter() - t3
            steps["validate_s"] += t2 - t1
            steps["reproject_s"] += t3 - t2
            features += len(reprojected.batch.features)
    wall = time.perf_counter() - start
    from bench.roundtrip import peak_rss_mb

    return {"wall_s": wall, "features": features, "peak_rss_mb": peak_rss_mb(), **steps}


def main() -> None:
    """Print the floor of dataset NAME (or a file path) as one JSON line."""
    target = sys.argv[1]
    path = Path(target) if "/" in target else documents.path(target)
    print(json.dumps(run(path)))


if __name__ == "__main__":
    main()
