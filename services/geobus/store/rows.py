"""Batch messages → column values, shared by the PostGIS and GeoPackage stores.

Everything here is pure: protobuf in, plain Python values out. Feature ids,
adjustments and rejection coordinates are stored as JSON text so that a
string id stays a string and a big integer id keeps every digit.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from geobus.problems import reason_name
from geobus.store.base import FeatureIdValue, JobRecord, derive_counts
from geobus.v1 import feature_pb2, rejection_pb2

_REPAIRED = feature_pb2.ADJUSTMENT_KIND_REPAIRED
NO_FEATURE_STORED = "no feature of the job could be stored: every feature was rejected"


def feature_id_json(message: feature_pb2.FeatureId, present: bool) -> str | None:
    """The GeoJSON ``id`` as JSON text, or None when the feature had none."""
    if not present:
        return None
    kind = message.WhichOneof("value")
    if kind == "string_id":
        return json.dumps(message.string_id, ensure_ascii=False)
    if kind == "integer_id":
        return str(message.integer_id)
    if kind == "number_id":
        return json.dumps(message.number_id)
    if kind == "big_integer_id":
        # The exact digits as received: a JSON number, not rounded.
        return message.big_integer_id
    return None


def feature_id_value(text: str | None) -> FeatureIdValue:
    """JSON text of a stored feature id → the Python value (str, int, float or None)."""
    if text is None:
        return None
    value = json.loads(text)
    if isinstance(value, str | int | float):
        return value
    return None


def adjustments_json(feature: feature_pb2.Feature) -> str | None:
    """The feature's adjustments as a JSON array, None when there were none."""
    if not feature.adjustments:
        return None
    return json.dumps(
        [
            {
                "kind": adjustment_name(a.kind),
                "stage": a.stage,
                "message": a.message,
            }
            for a in feature.adjustments
        ],
        ensure_ascii=False,
    )


def adjustment_name(kind: int) -> str:
    """``ADJUSTMENT_KIND_ANTIMERIDIAN_CUT`` → ``antimeridian_cut``."""
    return feature_pb2.AdjustmentKind.Name(kind).removeprefix("ADJUSTMENT_KIND_").lower()  # type: ignore[arg-type]


def adjusted_json(features: Iterable[feature_pb2.Feature]) -> str | None:
    """Features per adjustment kind as a JSON object (a feature counts once per kind)."""
    counts: Counter[str] = Counter()
    for feature in features:
        counts.update({adjustment_name(a.kind) for a in feature.adjustments})
    return json.dumps(dict(sorted(counts.items()))) if counts else None


def warnings_json(warnings: Sequence[str]) -> str | None:
    """A job's warnings as a JSON array, None when there are none."""
    return json.dumps(list(warnings), ensure_ascii=False) if warnings else None


def warnings_value(value: object) -> list[str]:
    """The stored warnings (JSON text or already decoded) as a list."""
    loaded = json.loads(value) if isinstance(value, str) else value
    return [str(w) for w in loaded] if isinstance(loaded, list) else []


def adjusted_value(value: object) -> dict[str, int]:
    """The ledger's summed ``adjusted`` column (JSON text, a dict, or None) as a dict."""
    if value is None:
        return {}
    loaded = json.loads(value) if isinstance(value, str) else value
    if not isinstance(loaded, dict):
        return {}
    return {str(k): int(v) for k, v in loaded.items()}


def is_repaired(feature: feature_pb2.Feature) -> bool:
    """True when a stage repaired the feature's geometry."""
    return any(a.kind == _REPAIRED for a in feature.adjustments)


def rejections_kind(stage: str) -> str:
    """Ledger kind of a stage's rejections: ``rejections:<stage>``."""
    return f"rejections:{stage}"


@dataclass(frozen=True, slots=True)
class RejectionRow:
    """One rejection as stored (JSON text for the id and the coordinate)."""

    job_id: str
    feature_index: int
    feature_id: str | None
    stage: str
    reason: str
    message: str
    json_pointer: str
    coordinate: list[float]


def rejection_rows(rb: rejection_pb2.RejectionBatch) -> list[RejectionRow]:
    """The rows of a RejectionBatch; a rejection's own stage wins over the batch's."""
    return [
        RejectionRow(
            job_id=rb.job_id,
            feature_index=r.feature_index,
            feature_id=feature_id_json(r.feature_id, r.HasField("feature_id")),
            stage=r.stage or rb.stage,
            reason=reason_name(r.reason),
            message=r.message,
            json_pointer=r.location.json_pointer,
            coordinate=list(r.location.coordinate),
        )
        for r in rb.rejections
    ]


def final_status(stored: int, features_total: int) -> tuple[str, str | None, str | None]:
    """(status, code, message) of a job whose features are all accounted for."""
    if stored == 0 and features_total > 0:
        return "failed", "no_feature_stored", NO_FEATURE_STORED
    return "successful", None, None


def job_from_row(row: Sequence[Any], moment: Callable[[Any], datetime | None]) -> JobRecord:
    """A JobRecord from the ledger's job query (same column order in both stores);
    ``moment`` turns the store's timestamp values into aware datetimes."""
    features_total = row[11]
    return JobRecord(
        job_id=row[0],
        status=row[1],
        collection=row[2],
        created=moment(row[3]),
        started=moment(row[4]),
        finished=moment(row[5]),
        updated=moment(row[6]),
        source_uri=row[7],
        media_type=row[8],
        document_bytes=row[9],
        callback_url=row[10],
        features_total=features_total,
        batches_total=row[12],
        message=row[13],
        code=row[14],
        counts=derive_counts(
            features_total, int(row[15]), int(row[16]), int(row[17]), adjusted_value(row[18])
        ),
        warnings=warnings_value(row[19]),
        precision=row[20],
    )


def job_row(job: JobRecord, moment: Callable[[datetime | None], Any]) -> tuple[Any, ...]:
    """The values of a new job's ledger row, in the column order of both stores'
    INSERT; ``moment`` turns datetimes into what the store keeps."""
    now = datetime.now(UTC)
    return (
        job.job_id,
        job.status,
        job.collection,
        moment(job.created or now),
        moment(job.started),
        moment(job.finished),
        moment(job.updated or job.created or now),
        job.source_uri,
        job.media_type,
        job.document_bytes,
        job.callback_url,
        job.features_total,
        job.batches_total,
        job.message,
        job.code,
        job.idempotency_key,
        job.precision,
    )
