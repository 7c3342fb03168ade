"""The hostile-input catalogue against a real pipeline, then a real dataset through it."""

from __future__ import annotations

import httpx

from bench import datasets
from bench.hostile import ENV, Memory, cases, normal_dataset, run, table
from tests.integration.conftest import Pipeline

# Peak RSS any one input may cost the ingress or its conversion worker: far
# below what the largest inputs would take if they were held whole.
MAX_PEAK_MB = 600


def test_every_hostile_input_gets_its_outcome_and_the_pipeline_still_works(
    pipeline: Pipeline,
) -> None:
    """Each of 60+ hostile inputs gets its expected HTTP answer or job outcome; then a real
    dataset is stored completely by the same processes."""
    pipeline.env.update(ENV)
    pipeline.start_all()
    memory = Memory(pipeline.processes["ingress"].pid)
    catalogue = cases(giant=False)
    assert len(catalogue) >= 40
    with httpx.Client(timeout=120) as client:
        results = [run(client, pipeline.base_url, case, memory, timeout=60) for case in catalogue]
        after = normal_dataset(
            client, pipeline.base_url, datasets.path("countries-land-10km"), timeout=120
        )
    report = table([*results, after])
    assert [r.case for r in results if r.problems] == [], report
    assert after.problems == [], report
    assert after.stored == 220, report
    heavy = [r.case for r in results if max(r.ingress_mb, r.worker_mb) > MAX_PEAK_MB]
    assert heavy == [], report
    for name in pipeline.processes:
        assert pipeline.processes[name].poll() is None, pipeline.log(name)
