"""A feature-level problem and its wire form, ``geobus.v1.Rejection``.

Every stage that refuses a feature describes it as a :class:`Problem`
(reason code, one human sentence, and where); the consumer turns problems
into ``Rejection`` messages. A rejected feature is data, not an error.
"""

from __future__ import annotations

from dataclasses import dataclass

from geobus.v1 import feature_pb2, rejection_pb2

R = rejection_pb2.RejectReason


@dataclass(slots=True)
class Problem:
    """Why a feature was refused."""

    reason: int
    message: str
    pointer: str = ""
    coordinate: tuple[float, ...] = ()

    def to_rejection(
        self,
        *,
        job_id: str,
        index: int,
        stage: str,
        feature_id: feature_pb2.FeatureId | None = None,
    ) -> rejection_pb2.Rejection:
        """The ``geobus.v1.Rejection`` for the feature at ``index`` of ``job_id``."""
        rejection = rejection_pb2.Rejection(
            job_id=job_id,
            feature_index=index,
            stage=stage,
            reason=self.reason,  # type: ignore[arg-type]
            message=self.message,
            location=rejection_pb2.Location(
                json_pointer=self.pointer, coordinate=list(self.coordinate)
            ),
        )
        if feature_id is not None:
            rejection.feature_id.CopyFrom(feature_id)
        return rejection


def reason_name(reason: int) -> str:
    """``REJECT_REASON_RING_NOT_CLOSED`` → ``ring_not_closed`` (the code shown to people)."""
    return R.Name(reason).removeprefix("REJECT_REASON_").lower()  # type: ignore[arg-type]
