"""A stage transform that misbehaves on marked features, for the isolation tests.

A feature whose properties hold ``"fault": "<kind>"`` makes the transform
raise, exit its process, segfault, hang or run slowly; every other feature
passes through unchanged (with its geometry re-checked by Shapely, so the
transform is vectorised over the batch like a real one). The module is
imported by worker processes too (the runner pickles the factory by
reference), which is why it lives in a file of its own and not in a test.
"""

from __future__ import annotations

import io
import json
import os
import signal
import time

import shapely

from geobus.codec.batches import BatchContext
from geobus.codec.convert import DocumentConverter
from geobus.errors import ConfigurationError
from geobus.stage import StageResult
from geobus.stagerunner import Transform
from geobus.v1 import feature_pb2

FAULTS = ("raise", "exit", "segv", "hang", "slow", "memory")
SLOW_SECONDS = 0.6


def transform(batch: feature_pb2.FeatureBatch) -> StageResult:
    """Pass the batch through; misbehave for the first marked feature it holds."""
    for feature in batch.features:
        fault = json.loads(feature.properties or b"{}").get("fault")
        if fault == "raise":
            msg = f"boom on feature {feature.index}"
            raise RuntimeError(msg)
        if fault == "exit":
            os._exit(3)
        if fault == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        if fault == "hang":
            time.sleep(3600)
        if fault == "slow":
            time.sleep(SLOW_SECONDS)
        if fault == "memory":
            raise MemoryError
    geometries = shapely.from_wkb([f.geometry for f in batch.features if f.geometry])
    assert shapely.is_valid(geometries).all()
    out = feature_pb2.FeatureBatch()
    out.CopyFrom(batch)
    return StageResult(out)


def factory() -> Transform:
    """The transform factory a StageRunner is given (picklable by reference)."""
    return transform


def broken_factory() -> Transform:
    """A factory that fails the way a bad setting does."""
    msg = "GEOBUS_TARGET_CRS is not a CRS"
    raise ConfigurationError(msg)


def marked_batch(faults: dict[int, str], size: int) -> feature_pb2.FeatureBatch:
    """A batch of ``size`` points (ids ``f0``…) via the codec; feature ``i`` gets ``faults[i]``."""
    features = []
    for i in range(size):
        properties: dict[str, object] = {"i": i}
        if i in faults:
            properties["fault"] = faults[i]
        features.append(
            {
                "type": "Feature",
                "id": f"f{i}",
                "properties": properties,
                "geometry": {"type": "Point", "coordinates": [i % 180, 0]},
            }
        )
    doc = json.dumps({"type": "FeatureCollection", "features": features}).encode()
    outputs = list(
        DocumentConverter(io.BytesIO(doc), BatchContext(job_id="job-f", crs="OGC:CRS84"))
    )
    assert len(outputs) == 1
    batch = outputs[0].batch
    assert batch is not None
    return batch
