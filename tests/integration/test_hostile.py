"""The hostile-input catalogue against a real pipeline, then a real dataset through it."""

from __future__ import annotations

import httpx

from bench import datasets
from bench.hostile import (
    CALLBACK_ENV,
    ENV,
    Memory,
    callback_targets,
    cases,
    normal_dataset,
    run,
    table,
)
from tests.integration.conftest import Pipeline, free_port

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


def test_callbacks_to_internal_addresses_are_refused_once_and_an_allowed_one_is_delivered(
    pipeline: Pipeline,
) -> None:
    """Hostile callback URLs (loopback in five spellings, metadata, a name for 10.0.0.1, a 302 to
    loopback) never reach the canary, each is refused once in the writer's log and counted, each
    job still succeeds; an allow-listed receiver gets one signed callback."""
    metrics_port = free_port()
    pipeline.env.update(ENV | CALLBACK_ENV)
    pipeline.service_env["writer"] = {"GEOBUS_METRICS_PORT": str(metrics_port)}
    with callback_targets() as targets:
        targets.writer_log = lambda: pipeline.log("writer-1")
        pipeline.start_all()
        memory = Memory(pipeline.processes["ingress"].pid)
        catalogue = targets.cases()
        with httpx.Client(timeout=60) as client:
            results = [
                run(client, pipeline.base_url, case, memory, timeout=30, targets=targets)
                for case in catalogue
            ]
            exposition = client.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        report = table(results)
        assert [r.case for r in results if r.problems] == [], report
        assert targets.canary_hits() == 0, report
        assert len(targets.redirector.hits) == 1, report
        assert len(targets.receiver.hits) == 1, report
    refused = [r for r in results if r.callback.startswith("refused: ")]
    assert len(refused) == len(catalogue) - 1, report
    assert 'geobus_callbacks_total{outcome="refused"} 8.0' in exposition, exposition
    assert 'geobus_callbacks_total{outcome="delivered"} 1.0' in exposition, exposition
    assert 'geobus_callbacks_total{outcome="failed"}' not in exposition, exposition
    assert pipeline.processes["writer-1"].poll() is None, pipeline.log("writer-1")
