"""What the ingress's worker publishes for a spooled document (fake publisher, no pool)."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

from geobus.codec.batches import BatchLimits
from geobus.ingress.conversion import open_body, publish_document
from geobus.ingress.spool import SpoolMeta
from geobus.v1 import feature_pb2, job_pb2, rejection_pb2
from tests.unit.fakes import RecordingPublisher


def _meta(media_type: str = "application/geo+json", encoding: str = "identity") -> SpoolMeta:
    return SpoolMeta(
        job_id="job-1",
        collection="roads",
        media_type=media_type,
        content_encoding=encoding,
        source_crs=None,
        callback_url=None,
        created="2026-01-01T00:00:00Z",
        body_bytes=0,
        document_bytes=0,
    )


def _collection(n: int, bad: int = 0) -> bytes:
    good = [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [i, i]},
            "properties": {"i": i},
        }
        for i in range(n)
    ]
    broken = [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": ["x"]}, "properties": None}
        for _ in range(bad)
    ]
    return json.dumps({"type": "FeatureCollection", "features": good + broken}).encode()


async def test_batches_then_sealed_with_totals() -> None:
    """Every feature is published in a batch or a rejection; job.sealed comes last with totals."""
    publisher = RecordingPublisher()
    result = await publish_document(
        io.BytesIO(_collection(25, bad=2)),
        _meta(),
        BatchLimits(max_features=10),
        publisher,
        "t1",
        window=2,
    )
    assert (result.features, result.rejected, result.failed) == (27, 2, False)
    batches = [s for s in publisher.sent if s.key == "feature.ingested"]
    rejected = [s for s in publisher.sent if s.key == "feature.rejected"]
    assert {s.exchange for s in batches + rejected} == {"t1.features"}
    features = [f for s in batches for f in feature_pb2.FeatureBatch.FromString(s.payload).features]
    assert sorted(f.index for f in features) == list(range(25))
    assert (
        sum(len(rejection_pb2.RejectionBatch.FromString(s.payload).rejections) for s in rejected)
        == 2
    )
    first = feature_pb2.FeatureBatch.FromString(batches[0].payload)
    assert (first.collection, first.crs, first.source.uri) == (
        "roads",
        "OGC:CRS84",
        "urn:geobus:http",
    )
    last = publisher.sent[-1]
    assert (last.exchange, last.key) == ("t1.jobs", "job.sealed")
    sealed = job_pb2.JobSealed.FromString(last.payload)
    assert (sealed.features_total, sealed.batches_total, sealed.rejected_total) == (
        27,
        len(batches),
        2,
    )
    assert len({s.message_id for s in publisher.sent}) == len(publisher.sent)
    assert {s.correlation_id for s in publisher.sent} == {"job-1"}
    assert {s.stage for s in publisher.sent} == {"ingress"}


async def test_unreadable_document_publishes_job_failed() -> None:
    """A body that is not JSON ends in job.failed with the code, and a failed result."""
    publisher = RecordingPublisher()
    result = await publish_document(
        io.BytesIO(b"{not json"), _meta(), BatchLimits(), publisher, "t1"
    )
    assert result.failed
    assert publisher.sent[-1].key == "job.failed"
    failed = job_pb2.JobFailed.FromString(publisher.sent[-1].payload)
    assert failed.code == result.failure_code
    assert failed.code.startswith("document_")
    assert not [s for s in publisher.sent if s.key == "job.sealed"]


async def test_gzip_body_is_read_and_broken_gzip_fails_the_job(tmp_path: Path) -> None:
    """A gzip spool converts like a plain one; a body that is not gzip is document_not_gzip."""
    good, bad = tmp_path / "good.body", tmp_path / "bad.body"
    good.write_bytes(gzip.compress(_collection(3)))
    bad.write_bytes(_collection(3))
    publisher = RecordingPublisher()
    with open_body(good, "gzip") as stream:
        ok = await publish_document(stream, _meta(encoding="gzip"), BatchLimits(), publisher, "t")
    assert (ok.features, ok.failed) == (3, False)
    with open_body(bad, "gzip") as stream:
        broken = await publish_document(
            stream, _meta(encoding="gzip"), BatchLimits(), RecordingPublisher(), "t"
        )
    assert broken.failure_code == "document_not_gzip"


async def test_ndjson_framing_follows_the_media_type() -> None:
    """An NDJSON body is read line by line because its media type says so."""
    lines = b"\n".join(
        json.dumps(
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [i, 0]},
                "properties": {},
            }
        ).encode()
        for i in range(4)
    )
    publisher = RecordingPublisher()
    result = await publish_document(
        io.BytesIO(lines), _meta("application/x-ndjson"), BatchLimits(), publisher, "t"
    )
    assert (result.features, result.rejected, result.failed) == (4, 0, False)
