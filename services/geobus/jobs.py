"""The job status document (OGC API - Processes ``statusInfo``), wherever a job is shown.

The ingress answers ``POST /v1/features`` and ``GET /v1/jobs/{id}`` with it,
the writer POSTs it to a job's ``callback_url`` when the job ends, and
``geobus jobs`` prints it: one builder, so that all three say the same.
The job API's other documents (job list, rejects) live in
:mod:`geobus.ingress.documents`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from geobus.store.base import JobRecord

PROCESS_ID = "ingest"
JOBS_PATH = "/v1/jobs"


def job_path(job_id: str) -> str:
    """The path of a job's status document (also the 202's ``Location``)."""
    return f"{JOBS_PATH}/{job_id}"


def rfc3339(moment: datetime | None) -> str | None:
    """``2026-05-09T07:35:25.123456Z`` (UTC), or None."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def job_document(job: JobRecord) -> dict[str, Any]:
    """The ``statusInfo`` of a job, with geobus's ``collection``, ``precision`` and ``counts``."""
    path = job_path(job.job_id)
    counts = job.counts
    return {
        "jobID": job.job_id,
        "processID": PROCESS_ID,
        "type": "process",
        "status": job.status,
        "message": job.message,
        # Machine-readable reason of a failed job (document_not_json, ...); null otherwise.
        "code": job.code,
        "progress": job.progress,
        "created": rfc3339(job.created),
        "started": rfc3339(job.started),
        "finished": rfc3339(job.finished),
        "updated": rfc3339(job.updated),
        "collection": job.collection,
        # The job's `precision` parameter; null: the deployment's GEOBUS_PRECISION.
        "precision": job.precision,
        "warnings": list(job.warnings),
        "counts": {
            "received": counts.received,
            "valid": counts.valid,
            "repaired": counts.repaired,
            "rejected": counts.rejected,
            "stored": counts.stored,
            "adjusted": dict(counts.adjusted),
        },
        "links": [
            {"href": path, "rel": "self", "type": "application/json", "title": "this job"},
            {
                "href": f"{path}/rejects",
                "rel": "rejects",
                "type": "application/json",
                "title": "features that were rejected, with the reason",
            },
        ],
    }
