"""Resume, at start-up, every job that was acknowledged but not fully published.

A job was acknowledged when its 202 went out: its body and metadata were
fsynced and the job is in the store. The runner deletes the spool files only
once every batch and ``job.sealed`` were confirmed, so whatever is spooled
when the ingress starts was interrupted (kill -9, power loss, a shutdown that
ran out of time) and is converted again from the start. That is safe: the
batches are cut as on the first run (their limits are in the metadata),
message ids are ``<job>:<key>:<seq>`` and the store writes each (job, kind,
sequence) once, so batches published before the crash are not stored twice.

What was never acknowledged is deleted: a body without metadata, a metadata
file under its temporary name, and metadata of a job the store does not know
(the crash fell between the two). A job the store already shows as final
(its spool outlived it by a crash) has nothing left to do either.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from geobus.ingress import spool
from geobus.ingress.ports import JobStore
from geobus.ingress.runner import ConversionRunner
from geobus.ingress.spool import SpoolMeta
from geobus.store.base import FINAL_STATUSES

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ResumePlan:
    """What start-up does with the spool."""

    resume: list[SpoolMeta] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    """Job ids whose spool files go: never acknowledged, or already final."""
    garbage: list[Path] = field(default_factory=list)
    """Files of uploads a crash cut off before their metadata was written."""
    unreadable: list[str] = field(default_factory=list)
    """Job ids whose metadata cannot be read: kept for a person to look at."""


def plan(spool_dir: Path, store: JobStore) -> ResumePlan:
    """Sort the spool's jobs (blocking: reads files and the store)."""
    result = ResumePlan(garbage=spool.unacknowledged_files(spool_dir))
    for job_id in spool.pending_jobs(spool_dir):
        try:
            meta = spool.read_meta(spool_dir, job_id)
        except (OSError, ValueError, TypeError) as exc:
            log.error("spooled job %s has unreadable metadata, left in place: %s", job_id, exc)
            result.unreadable.append(job_id)
            continue
        job = store.get_job(job_id)
        if job is None or job.status in FINAL_STATUSES:
            result.delete.append(job_id)
        else:
            result.resume.append(meta)
    return result


def _clean(spool_dir: Path, plan: ResumePlan) -> None:
    for path in plan.garbage:
        path.unlink(missing_ok=True)
    for job_id in plan.delete:
        spool.remove(spool_dir, job_id)


async def resume_spooled(spool_dir: Path, store: JobStore, runner: ConversionRunner) -> ResumePlan:
    """Delete what was never acknowledged and hand every interrupted job to ``runner``."""
    todo = await asyncio.to_thread(plan, spool_dir, store)
    await asyncio.to_thread(_clean, spool_dir, todo)
    for meta in todo.resume:
        runner.submit(meta)
    if todo.resume or todo.delete or todo.garbage:
        log.info(
            "spool: %d job(s) resumed, %d finished or unacknowledged job(s) and %d partial"
            " upload(s) deleted",
            len(todo.resume),
            len(todo.delete),
            len(todo.garbage),
        )
    return todo
