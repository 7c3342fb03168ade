"""The job API's lists: jobs (OGC API - Processes ``jobList``) and a job's rejects.

A job's own status document is :func:`geobus.jobs.job_document` (the writer's
callbacks send it too).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from geobus.ingress.ports import JobRecord, RejectionRecord
from geobus.jobs import JOBS_PATH, job_document, job_path


def jobs_document(
    jobs: Sequence[JobRecord], *, limit: int, offset: int, more: bool, status: str | None = None
) -> dict[str, Any]:
    """One page of the job list (OGC API - Processes ``jobList``); ``next`` linked when ``more``."""

    def page(at: int) -> str:
        query = {"limit": limit, "offset": at} | ({"status": status} if status else {})
        return f"{JOBS_PATH}?{urlencode(query)}"

    links = [{"href": page(offset), "rel": "self", "type": "application/json"}]
    if more:
        links.append({"href": page(offset + limit), "rel": "next", "type": "application/json"})
    return {"jobs": [job_document(job) for job in jobs], "links": links}


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
