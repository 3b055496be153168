"""Measured latency of a dense model on a deployment backend: what the latency-aware search optimises against.

The model goes the way `deploy-nas run` would send it (ONNX, then the backend's engine) in a temporary directory,
and its batch-1 p50 is measured in latency mode like every `bench` row. Sub-millisecond subnets are timed over at
least `seconds` of runs (the count sized from a first `runs`-run probe): 50 runs of 0.5 ms last 25 ms, and one
slow spell of a shared machine inside so short a window moves the p50 of a whole measurement.

Several models (`many`) are measured interleaved: every engine is built first, then `passes` passes each time every
model for `seconds / passes` (the order rotating from pass to pass), and a model's latency is the median of its
passes' p50s. A slow spell of a shared machine then lands on one slice of every model's measurement instead of on
all of one model's, which is what decides the ranking a latency predictor is fitted and scored on. `many_passes`
returns the passes' p50s themselves, from which the search reports how repeatable its timings were.
"""
from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deploy_nas.export.backends import BuildConfig, get_backend


class BackendLatency:
    """`latency(dense_model) -> p50 ms` at batch 1 on `backend`/`precision` with `threads` threads."""

    def __init__(self, backend: str = "openvino", precision: str = "fp32", threads: int | None = None,
                 runs: int = 50, warmup: int = 10, seconds: float = 0.25, max_runs: int = 5000, passes: int = 5):
        from deploy_nas.export.pipeline import check_request

        check_request(backend, precision)
        self.backend, self.precision, self.threads, self.runs, self.warmup = backend, precision, threads, runs, warmup
        self.seconds, self.max_runs, self.passes = seconds, max_runs, passes

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision, "threads": self.threads, "runs": self.runs,
                "seconds": self.seconds, "passes": self.passes}

    def engine(self, model: Any, work: Path) -> Any:
        """The engine `model` is timed on (built under `work`)."""
        from deploy_nas.export.backends.torch_backend import TorchEngine
        from deploy_nas.export.onnx import export_onnx

        if self.backend == "torch":
            return TorchEngine(model, threads=self.threads)
        onnx = export_onnx(model, work / "model.onnx").path
        return get_backend(self.backend).build(onnx, BuildConfig(precision=self.precision, threads=self.threads))

    def __call__(self, model: Any) -> float:
        from deploy_nas.io import temp_dir

        with temp_dir("latency") as tmp, self.engine(model, Path(tmp)) as engine:
            return self.p50(engine)

    def many(self, models: Sequence[Any]) -> list[float]:
        """Batch-1 p50 (ms) of each model, measured interleaved (see the module docstring)."""
        return [statistics.median(p) for p in self.many_passes(models)]

    def many_passes(self, models: Sequence[Any]) -> list[list[float]]:
        """Each model's batch-1 p50s (ms), one per pass, measured interleaved (one p50 each when there is nothing to
        interleave)."""
        import numpy as np

        from deploy_nas.io import temp_dir

        if len(models) < 2 or self.passes < 2:
            return [[self(m)] for m in models]
        with contextlib.ExitStack() as stack:
            tmp = Path(stack.enter_context(temp_dir("latency")))
            runners = []
            for i, model in enumerate(models):
                engine = stack.enter_context(self.engine(model, tmp / str(i)))
                x = np.random.default_rng(0).standard_normal((1, *engine.input_shape), dtype=np.float32)
                runners.append(stack.enter_context(engine.runner(x, mode="latency", threads=self.threads)))
            counts = []
            for runner in runners:  # warm-up, and a probe that sizes each pass to seconds / passes
                runner.run_async(self.warmup)
                probe = statistics.median(runner.run_async(max(5, self.runs // self.passes))[1])
                share = self.seconds / self.passes * 1000 / max(probe, 1e-3)
                counts.append(min(self.max_runs, max(self.runs // self.passes, math.ceil(share))))
            p50s: list[list[float]] = [[] for _ in runners]
            for k in range(self.passes):
                for i in [(j + k) % len(runners) for j in range(len(runners))]:
                    p50s[i].append(statistics.median(runners[i].run_async(counts[i])[1]))
            return p50s

    def p50(self, engine: Any) -> float:
        from deploy_nas.export.fps import measure_fps, runs_for_seconds

        runs, probe = runs_for_seconds(engine, self.seconds, self.runs, self.warmup, self.max_runs)
        if runs <= self.runs:
            return probe.p50_ms
        return measure_fps(engine, batch=1, runs=runs, warmup=self.warmup)[0].p50_ms
