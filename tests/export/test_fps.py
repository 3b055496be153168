"""FPS measurement: one row per batch, the mode per batch size, raw times kept, probe-sized run counts, typed
errors. Real engines, no timing assertions."""
from __future__ import annotations

import pytest

from deploy_nas.errors import ExportError
from deploy_nas.export.backends.runner import Runner
from deploy_nas.export.fps import FpsResult, measure_fps, mode_for_batch, runs_for_seconds


def test_mode_follows_the_batch_size():
    assert mode_for_batch(1) == "latency" and mode_for_batch(8) == "throughput"


def test_one_row_per_batch_with_raw_times(reference_engines):
    rows = measure_fps(reference_engines["min"], batch=[1, 3], runs=50, warmup=2, threads=1)
    assert [(r.batch, r.runs, len(r.times_ms)) for r in rows] == [(1, 50, 50), (3, 50, 50)]
    for r in rows:
        assert isinstance(r, FpsResult) and r.backend == "torch" and r.threads == 1 and r.requests == 1
        assert 0 < r.p50_ms <= r.p90_ms <= r.p99_ms <= max(r.times_ms)
        assert r.throughput_fps == pytest.approx(r.runs * r.batch / (r.wall_ms / 1e3))
    assert "times_ms" not in rows[0].to_dict(raw=False) and len(rows[0].to_dict()["times_ms"]) == 50


def test_a_prepared_runner_is_measured_as_is():
    calls = []
    row, = measure_fps(Runner(4, lambda: calls.append(1), {"runner": "counting"}), runs=60, warmup=5)
    assert len(calls) == 65 and row.batch == 4 and row.info["runner"] == "counting"


def test_runs_for_seconds_sizes_the_count_from_a_probe(reference_engines):
    runs, probe = runs_for_seconds(reference_engines["min"], seconds=0.0, min_runs=50, warmup=1)
    assert runs == 50 and probe.runs == 50 and probe.batch == 1
    runs, _ = runs_for_seconds(reference_engines["min"], seconds=3600.0, min_runs=50, warmup=1, max_runs=77)
    assert runs == 77


@pytest.mark.parametrize("kwargs, match", [(dict(runs=10), "runs >= 50"), (dict(warmup=-1), "warmup >= 0"),
                                           (dict(mode="fast"), "unknown FPS mode")])
def test_bad_settings_are_typed_errors(reference_engines, kwargs, match):
    with pytest.raises(ExportError, match=match):
        measure_fps(reference_engines["min"], **kwargs)
