"""Crash resume: which spooled jobs start-up resumes, and that a re-run cuts the same batches."""

from __future__ import annotations

import io
import json
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

from geobus.codec.limits import DocumentLimits
from geobus.ingress import spool
from geobus.ingress.conversion import document_limits_for, limits_for, publish_document
from geobus.ingress.ports import JobRecord
from geobus.ingress.resume import plan, resume_spooled
from geobus.ingress.spool import SpoolMeta
from geobus.settings import Settings
from geobus.v1 import feature_pb2
from tests.unit.fakes import FakeRunner, FakeStore, RecordingPublisher

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _meta(job_id: str, **changes: object) -> SpoolMeta:
    meta = SpoolMeta(
        job_id=job_id,
        collection="features",
        media_type="application/geo+json",
        content_encoding="identity",
        source_crs=None,
        callback_url=None,
        created="2026-01-01T00:00:00Z",
        body_bytes=2,
        document_bytes=2,
    )
    return replace(meta, **changes)  # type: ignore[arg-type]


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _spool(spool_dir: Path, meta: SpoolMeta) -> None:
    spool.body_path(spool_dir, meta.job_id).write_bytes(b"{}")
    spool.write_meta(spool_dir, meta)


def test_start_up_sorts_the_spool(tmp_path: Path) -> None:
    """Acknowledged and unfinished: resumed; unknown to the store, or final: deleted; rest kept."""
    store = FakeStore()
    for job_id, status in (("running", "running"), ("accepted", "accepted"), ("done", "failed")):
        store.create_job(JobRecord(job_id=job_id, status=status, created=NOW))  # type: ignore[arg-type]
        _spool(tmp_path, _meta(job_id))
    _spool(tmp_path, _meta("never-acknowledged"))
    (tmp_path / "cut-off.body").write_bytes(b"{")
    (tmp_path / "half.json.tmp").write_bytes(b"{")
    (tmp_path / "broken.json").write_bytes(b"not json")
    (tmp_path / "broken.body").write_bytes(b"{}")

    todo = plan(tmp_path, store)

    assert sorted(m.job_id for m in todo.resume) == ["accepted", "running"]
    assert sorted(todo.delete) == ["done", "never-acknowledged"]
    assert sorted(p.name for p in todo.garbage) == ["cut-off.body", "half.json.tmp"]
    assert todo.unreadable == ["broken"]


async def test_resume_submits_and_cleans(tmp_path: Path) -> None:
    """resume_spooled hands resumable jobs to the runner and deletes the rest from disk."""
    store, runner = FakeStore(), FakeRunner()
    store.create_job(JobRecord(job_id="j1", status="running", created=NOW))
    _spool(tmp_path, _meta("j1"))
    _spool(tmp_path, _meta("j2"))
    (tmp_path / "cut-off.body").write_bytes(b"{")

    await resume_spooled(tmp_path, store, runner)

    assert [m.job_id for m in runner.submitted] == ["j1"]
    assert _names(tmp_path) == ["j1.body", "j1.json"]


def test_metadata_of_other_versions_reads(tmp_path: Path) -> None:
    """Old metadata (no limits, no client) and unknown future keys both read back."""
    old = json.loads(_meta("j").to_json())
    for key in ("batch_max_features", "batch_max_bytes", "max_message_bytes", "client"):
        del old[key]
    old["from_the_future"] = 1
    meta = SpoolMeta.from_json(json.dumps(old).encode())
    assert meta.batch_max_features is None
    assert meta.client is None
    settings = replace(Settings(), batch_max_features=7)
    assert limits_for(meta, settings).max_features == 7


def _document(n: int) -> bytes:
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [i, i / 3]},
            "properties": {"i": i},
        }
        for i in range(n)
    ]
    return json.dumps({"type": "FeatureCollection", "features": features}).encode()


async def _ingested(meta: SpoolMeta, settings: Settings, body: bytes) -> dict[str, list[int]]:
    """message id → feature indices of every feature.ingested batch published."""
    publisher = RecordingPublisher()
    await publish_document(
        io.BytesIO(body), meta, limits_for(meta, settings), publisher, settings.prefix
    )
    batches: dict[str, list[int]] = {}
    for sent in publisher.sent:
        if sent.key == "feature.ingested":
            batch = feature_pb2.FeatureBatch.FromString(sent.payload)
            batches[sent.message_id] = [f.index for f in batch.features]
    return batches


async def test_a_resumed_job_is_cut_into_the_same_batches_whatever_the_settings() -> None:
    """The limits in the metadata win: a re-run under other settings publishes the same ids."""
    body = _document(95)
    before_crash = replace(Settings(), batch_max_features=10)
    meta = _meta(
        "job-r",
        batch_max_features=before_crash.batch_max_features,
        batch_max_bytes=before_crash.batch_max_bytes,
        max_message_bytes=before_crash.max_message_bytes,
    )
    first = await _ingested(meta, before_crash, body)
    after_restart = replace(Settings(), batch_max_features=500)
    again = await _ingested(meta, after_restart, body)
    assert len(first) == 10
    assert again == first
    # Without the limits in the metadata the same restart would cut one big batch.
    legacy = await _ingested(replace(meta, batch_max_features=None), after_restart, body)
    assert len(legacy) == 1


def test_document_limits_travel_with_the_spooled_job() -> None:
    """A resumed job keeps the GEOBUS_MAX_* limits it was accepted with, not today's settings."""
    accepted_under = replace(Settings(), max_vertices_per_feature=5, max_string_bytes=100)
    kept = asdict(DocumentLimits.from_settings(accepted_under))
    meta = SpoolMeta.from_json(_meta("j", document_limits=kept).to_json())
    now = replace(Settings(), max_vertices_per_feature=50, max_string_bytes=9)
    limits = document_limits_for(meta, now)
    assert (limits.max_vertices, limits.max_string_bytes) == (5, 100)
    # Older metadata (no limits) and keys of a newer geobus: today's settings, unknown ignored.
    assert document_limits_for(_meta("old"), now).max_vertices == 50
    newer = _meta("new", document_limits={"max_vertices": 7, "max_wormholes": 1})
    assert document_limits_for(newer, now) == replace(
        DocumentLimits.from_settings(now), max_vertices=7
    )
