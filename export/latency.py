"""Measured latency of a dense model on a deployment backend: what the latency-aware search optimises against.

The model goes the way `deploy-nas run` would send it (ONNX, then the backend's engine) in a temporary directory,
and its batch-1 p50 is measured in latency mode like every `bench` row. Sub-millisecond subnets are timed over at
least `seconds` of runs (the count sized from a first `runs`-run probe): 50 runs of 0.5 ms last 25 ms, and one
slow spell of a shared machine inside so short a window moves the p50 of a whole measurement.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from deploy_nas.export.backends import BuildConfig, get_backend


class BackendLatency:
    """`latency(dense_model) -> p50 ms` at batch 1 on `backend`/`precision` with `threads` threads."""

    def __init__(self, backend: str = "openvino", precision: str = "fp32", threads: int | None = None,
                 runs: int = 50, warmup: int = 10, seconds: float = 0.25, max_runs: int = 5000):
        from deploy_nas.export.pipeline import check_request

        check_request(backend, precision)
        self.backend, self.precision, self.threads, self.runs, self.warmup = backend, precision, threads, runs, warmup
        self.seconds, self.max_runs = seconds, max_runs

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision, "threads": self.threads, "runs": self.runs,
                "seconds": self.seconds}

    def __call__(self, model: Any) -> float:
        from deploy_nas.export.backends.torch_backend import TorchEngine
        from deploy_nas.export.onnx import export_onnx

        if self.backend == "torch":
            return self.p50(TorchEngine(model, threads=self.threads))
        from deploy_nas.io import temp_dir

        with temp_dir("latency") as tmp:
            onnx = export_onnx(model, Path(tmp) / "model.onnx").path
            config = BuildConfig(precision=self.precision, threads=self.threads)
            with get_backend(self.backend).build(onnx, config) as engine:
                return self.p50(engine)

    def p50(self, engine: Any) -> float:
        from deploy_nas.export.fps import measure_fps, runs_for_seconds

        runs, probe = runs_for_seconds(engine, self.seconds, self.runs, self.warmup, self.max_runs)
        if runs <= self.runs:
            return probe.p50_ms
        return measure_fps(engine, batch=1, runs=runs, warmup=self.warmup)[0].p50_ms
