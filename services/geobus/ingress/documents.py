"""The JSON documents of the job API (OGC API - Processes ``statusInfo``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from geobus.ingress.ports import JobRecord, RejectionRecord

PROCESS_ID = "ingest"


def job_path(job_id: str) -> str:
    """The path of a job's status document (also the 202's ``Location``)."""
    return f"/v1/jobs/{job_id}"


def rfc3339(moment: datetime | None) -> str | None:
    """``2026-05-09T07:35:25.123456Z`` (UTC), or None."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def job_document(job: JobRecord) -> dict[str, Any]:
    """The ``statusInfo`` of a job, with geobus's ``collection`` and ``counts``."""
    path = job_path(job.job_id)
    counts = job.counts
    return {
        "jobID": job.job_id,
        "processID": PROCESS_ID,
        "type": "process",
        "status": job.status,
        "message": job.message,
        "progress": job.progress,
        "created": rfc3339(job.created),
        "started": rfc3339(job.started),
        "finished": rfc3339(job.finished),
        "updated": rfc3339(job.updated),
        "collection": job.collection,
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


def rejects_document(
    job_id: str, rejects: Sequence[RejectionRecord], *, limit: int, offset: int, more: bool
) -> dict[str, Any]:
    """One page of a job's rejected features; ``next`` is linked when ``more``."""
    path = f"{job_path(job_id)}/rejects"
    links = [
        {
            "href": f"{path}?limit={limit}&offset={offset}",
            "rel": "self",
            "type": "application/json",
        },
        {"href": job_path(job_id), "rel": "up", "type": "application/json"},
    ]
    if more:
        links.append(
            {
                "href": f"{path}?limit={limit}&offset={offset + limit}",
                "rel": "next",
                "type": "application/json",
            }
        )
    return {
        "jobID": job_id,
        "rejects": [
            {
                "index": r.feature_index,
                "id": r.feature_id,
                "stage": r.stage,
                "reason": r.reason,
                "message": r.message,
                "location": {
                    "pointer": r.json_pointer or None,
                    "coordinate": list(r.coordinate) or None,
                },
            }
            for r in rejects
        ],
        "links": links,
    }
