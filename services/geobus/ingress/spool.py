"""Spool files: the accepted document and the metadata needed to resume it.

A job is spooled as two files in the spool directory: ``<job_id>.body``
holds the request body exactly as it was sent (still gzip-compressed when the
request said ``Content-Encoding: gzip``: the bytes a webhook signature covers,
and less disk written), and ``<job_id>.json`` holds :class:`SpoolMeta`. Both
are fsynced before the 202, so a job that was acknowledged survives a crash
and can be converted again from the spool alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

BODY_SUFFIX = ".body"
META_SUFFIX = ".json"
TEMPORARY_SUFFIX = ".tmp"


@dataclass(frozen=True, slots=True)
class SpoolMeta:
    """What a spooled job needs besides its body; independent of settings."""

    job_id: str
    collection: str
    media_type: str
    content_encoding: str  # "identity" or "gzip"
    source_crs: str | None
    callback_url: str | None
    created: str  # RFC 3339, UTC
    body_bytes: int  # size of the .body file (as sent, before any decoding)
    # Size of the document once the content encoding is removed, counted while
    # the body streamed in (geobus.ingress.limits).
    document_bytes: int
    # How batches are cut. A resumed job must cut exactly the batches it cut
    # before the crash: message ids and the store's ledger are keyed by batch
    # sequence, so a changed limit would publish different features under an
    # already-stored sequence. None (metadata of an older geobus): the settings'.
    batch_max_features: int | None = None
    batch_max_bytes: int | None = None
    max_message_bytes: int | None = None
    # Who sent it (GEOBUS_MAX_JOBS_PER_CLIENT); counted again after a resume.
    client: str | None = None
    # Decimal digits the request asked coordinates to be snapped to (the
    # `precision` parameter); None: the deployment's GEOBUS_PRECISION. Kept
    # here so that a resumed job snaps as it was asked to.
    precision: int | None = None
    # The W3C traceparent of the POST (geobus.tracing): a resumed job keeps its trace.
    traceparent: str | None = None
    # The GEOBUS_MAX_* document limits the job was accepted with (field name ->
    # value of geobus.codec.limits.DocumentLimits): which features they reject
    # decides how batches are cut, so a resumed job must keep them. None
    # (metadata of an older geobus): the settings'.
    document_limits: dict[str, float] | None = None

    def to_json(self) -> bytes:
        """The metadata file's content."""
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> SpoolMeta:
        """Read a metadata file written by :meth:`to_json` (of this or another geobus version).

        Keys this version does not know are ignored, so that a newer geobus's
        spool can still be resumed by an older one after a rollback.
        """
        raw: dict[str, Any] = json.loads(data)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


def body_path(spool_dir: Path, job_id: str) -> Path:
    """Where the body of ``job_id`` is spooled."""
    return spool_dir / f"{job_id}{BODY_SUFFIX}"


def meta_path(spool_dir: Path, job_id: str) -> Path:
    """Where the metadata of ``job_id`` is spooled."""
    return spool_dir / f"{job_id}{META_SUFFIX}"


def fsync_file(path: Path) -> None:
    """Flush a file's data to disk (blocking: call it in a thread)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Make the directory entries of new or renamed files durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_meta(spool_dir: Path, meta: SpoolMeta) -> Path:
    """Write the metadata file atomically (temp file, fsync, rename, fsync dir).

    Blocking: call it in a thread. Also fsyncs the directory, which makes the
    body file's directory entry durable too.
    """
    target = meta_path(spool_dir, meta.job_id)
    temporary = target.with_name(target.name + TEMPORARY_SUFFIX)
    with temporary.open("wb") as handle:
        handle.write(meta.to_json())
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(target)
    fsync_dir(spool_dir)
    return target


def read_meta(spool_dir: Path, job_id: str) -> SpoolMeta:
    """The metadata of a spooled job."""
    return SpoolMeta.from_json(meta_path(spool_dir, job_id).read_bytes())


def remove(spool_dir: Path, job_id: str) -> None:
    """Delete both spool files of a job (missing files are fine)."""
    body_path(spool_dir, job_id).unlink(missing_ok=True)
    meta_path(spool_dir, job_id).unlink(missing_ok=True)


def pending_jobs(spool_dir: Path) -> list[str]:
    """Job ids whose metadata is on disk: accepted but not finished converting."""
    return sorted(p.name.removesuffix(META_SUFFIX) for p in spool_dir.glob(f"*{META_SUFFIX}"))


def unacknowledged_files(spool_dir: Path) -> list[Path]:
    """Spool files of documents that were never acknowledged (blocking).

    A body without metadata was cut off by a crash before the 202 (the
    metadata file is the last thing written before it), and so is a
    metadata file still under its temporary name. Their client got no 202
    and sends again; the files are garbage. Only meaningful before the
    ingress serves: an upload in progress is a body without metadata too.
    """
    described = set(pending_jobs(spool_dir))
    bodies = [
        p
        for p in spool_dir.glob(f"*{BODY_SUFFIX}")
        if p.name.removesuffix(BODY_SUFFIX) not in described
    ]
    return sorted(bodies + list(spool_dir.glob(f"*{META_SUFFIX}{TEMPORARY_SUFFIX}")))
