"""The reference pattern the field starts from, written faithfully, as a baseline.

    REFERENCE_DATABASE_URL=postgresql://... python -m bench.baselines.reference_service --port PORT

This is the typical tutorial geo service geobus is compared with — *not* how
geobus works. A FastAPI handler reads the whole body, ``json.loads`` it,
and hands the features to ``BackgroundTasks``; the background task runs
``shape()`` / ``make_valid`` / reprojection / area per feature in a
``ProcessPoolExecutor`` and writes each feature with an ``INSERT`` via
psycopg. Jobs live in an in-memory dict (lost on restart). It does the same
work as the geobus pipeline (repair, EPSG:3857, PostGIS) so the wall times
compare like for like.
"""

from __future__ import annotations

import argparse
import json
import os
import uuid
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import psycopg
import uvicorn
from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import JSONResponse
from pyproj import Transformer
from shapely import make_valid, to_wkb
from shapely.geometry import shape
from shapely.ops import transform

from geobus.ingress.server import http_implementation

app = FastAPI()
executor = ProcessPoolExecutor(max_workers=os.cpu_count())
jobs: dict[str, dict[str, Any]] = {}
DATABASE_URL = os.environ.get("REFERENCE_DATABASE_URL", "")
_project = None


def process_feature(feature: dict[str, Any]) -> tuple[bytes, str, float, bool]:
    """Per feature, in a worker process: shape, repair if invalid, reproject, area."""
    global _project
    if _project is None:
        _project = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform
    geom = shape(feature["geometry"])
    repaired = False
    if not geom.is_valid:
        geom = make_valid(geom)
        repaired = True
    geom = transform(_project, geom)
    if not geom.is_valid:
        geom = make_valid(geom)
    area = geom.area
    return to_wkb(geom), json.dumps(feature.get("properties")), area, repaired


def process_job(job_id: str, table: str, features: list[dict[str, Any]]) -> None:
    """The background task: fan the features out to the pool, INSERT the results."""
    jobs[job_id]["status"] = "running"
    try:
        futures = [executor.submit(process_feature, f) for f in features]
        with psycopg.connect(DATABASE_URL) as conn, conn.cursor() as cur:
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {table} "
                "(id serial PRIMARY KEY, properties jsonb, area double precision, "
                "geom geometry)"
            )
            for future in futures:
                wkb, properties, area, _repaired = future.result()
                cur.execute(
                    f"INSERT INTO {table} (properties, area, geom) "  # noqa: S608 - bench-only
                    "VALUES (%s, %s, ST_SetSRID(ST_GeomFromWKB(%s), 3857))",
                    (properties, area, wkb),
                )
                jobs[job_id]["stored"] += 1
            conn.commit()
        jobs[job_id]["status"] = "successful"
    except Exception as exc:
        jobs[job_id].update(status="failed", error=repr(exc))


@app.post("/features", status_code=202)
async def ingest(request: Request, background_tasks: BackgroundTasks, table: str) -> JSONResponse:
    """Read the whole body, parse it, and schedule the processing."""
    body = await request.body()
    features = json.loads(body)["features"]
    job_id = str(uuid.uuid4())
    jobs[job_id] = {"status": "accepted", "received": len(features), "stored": 0}
    background_tasks.add_task(process_job, job_id, table, features)
    return JSONResponse({"job_id": job_id}, status_code=202)


@app.get("/jobs/{job_id}")
async def job(job_id: str) -> dict[str, Any]:
    """The job's status from the in-memory dict."""
    return jobs[job_id]


@app.get("/readyz")
async def ready() -> dict[str, str]:
    """Readiness for the bench harness."""
    return {"status": "ok"}


def main(argv: list[str] | None = None) -> None:
    """Serve the reference service on 127.0.0.1:PORT against the database ``--db``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        http=http_implementation(),
        access_log=False,
        log_level="warning",
        timeout_keep_alive=30,
    )


if __name__ == "__main__":
    main()
