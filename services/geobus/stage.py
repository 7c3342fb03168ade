"""What a stage's pure transform returns.

A stage (validator, reprojector) maps one ``FeatureBatch`` to the batch of
features that go on plus the rejections of those that do not. Transforms do
no I/O; the consumer publishes ``batch`` (when it has features) and
``rejections`` (when there are any) and only then acks the input.
"""

from __future__ import annotations

from dataclasses import dataclass

from geobus.v1 import feature_pb2, rejection_pb2


@dataclass(slots=True)
class StageResult:
    """The output of one stage for one input batch (same job and sequence)."""

    batch: feature_pb2.FeatureBatch
    rejections: rejection_pb2.RejectionBatch | None = None
    # ``batch`` serialized, when those bytes are at hand anyway (a worker's
    # reply, or the input's own body when a stage left the batch as it was):
    # publishing them saves encoding 1-4 MB again per batch.
    encoded: bytes | None = None

    @property
    def has_features(self) -> bool:
        """Whether ``batch`` carries any feature worth publishing."""
        return len(self.batch.features) > 0
