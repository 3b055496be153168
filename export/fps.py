"""FPS / latency measurement, benchmark_app-style: inputs prepared once, warm-up first, raw times kept.

latency mode: batch 1 (by default), one request at a time; p50/p90/p99 of per-inference wall times.
throughput mode: a larger batch (8 by default) and, where the engine supports it (OpenVINO), several requests in
flight; images/s = runs * batch / wall time of the whole run, percentiles over per-request latencies.
Times come from time.perf_counter_ns (or, for OpenVINO async requests, the runtime's own per-request latency).
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from deploy_nas.errors import ExportError
from deploy_nas.export.backends.runner import Runner

MIN_RUNS = 50
MODES = ("latency", "throughput")
DEFAULT_BATCH = {"latency": 1, "throughput": 8}


def mode_for_batch(batch: int) -> str:
    """Batch 1 is measured in latency mode, larger batches in throughput mode."""
    return "latency" if batch == 1 else "throughput"


@dataclass(frozen=True)
class FpsResult:
    backend: str
    precision: str
    batch: int
    mode: str
    threads: int | None
    requests: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    cv: float  # std / mean of the per-request times; > 0.025 means a noisy machine
    throughput_fps: float
    runs: int
    warmup: int
    wall_ms: float
    times_ms: tuple[float, ...] = field(repr=False)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, raw: bool = True) -> dict[str, Any]:
        d = asdict(self)
        if not raw:
            d.pop("times_ms")
        return d


def measure_fps(engine: Any, batch: int | Sequence[int] | None = None, mode: str = "latency", warmup: int = 10,
                runs: int = MIN_RUNS, threads: int | None = None, requests: int | None = None,
                seed: int = 0) -> list[FpsResult]:
    """One FpsResult per batch size. `engine` is an Engine (a runner is made per batch) or a ready Runner."""
    if mode not in MODES:
        raise ExportError(f"unknown FPS mode {mode!r}; choose one of: {', '.join(MODES)}")
    if runs < MIN_RUNS or warmup < 0:
        raise ExportError(f"runs={runs}, warmup={warmup}: need runs >= {MIN_RUNS} (stable p99) and warmup >= 0")
    if isinstance(engine, Runner):
        return [_measure(engine, "runner", "-", mode, warmup, runs, None)]
    if not engine.input_shape:
        raise ExportError(f"the {engine.name} engine does not know its input shape; pass a Runner instead")
    sizes = [DEFAULT_BATCH[mode]] if batch is None else [batch] if isinstance(batch, int) else list(batch)
    for b in sizes:
        check_batch(b, engine.input_shape)
    rows = []
    for b in sizes:
        x = np.random.default_rng(seed).standard_normal((b, *engine.input_shape), dtype=np.float32)
        with engine.runner(x, mode=mode, requests=requests, threads=threads) as runner:
            rows.append(_measure(runner, engine.name, engine.precision, mode, warmup, runs, engine.threads))
    return rows


def available_memory() -> int:
    """Bytes of memory available to new allocations now (MemAvailable), or the physical memory where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_batch(batch: int, shape: Sequence[int], share: float = 1 / 8) -> None:
    """Refuse a batch whose float32 input alone would take more than `share` of the available memory (the
    activations of a ViT take many times the input)."""
    if batch < 1:
        raise ExportError(f"batch sizes must be >= 1, got {batch}")
    need, have = 4 * batch * math.prod(shape), available_memory()
    if need > share * have:
        largest = max(1, int(share * have) // (4 * math.prod(shape)))
        raise ExportError(f"batch {batch} needs {need / 2**30:.3g} GiB for its input alone and this machine has "
                          f"{have / 2**30:.3g} GiB available; use a batch of at most {largest}")


def runs_for_seconds(engine: Any, seconds: float, min_runs: int = MIN_RUNS, warmup: int = 10,
                     max_runs: int | None = None) -> tuple[int, FpsResult]:
    """How many batch-1 latency runs fill `seconds` (at least `min_runs`, at most `max_runs`), sized from a probe of
    `min_runs` runs, which is returned too. Short windows let one slow spell of a shared machine move a p50."""
    probe = measure_fps(engine, batch=1, mode="latency", runs=min_runs, warmup=warmup)[0]
    runs = max(min_runs, math.ceil(seconds * 1000 / max(probe.p50_ms, 1e-3)))
    return (runs if max_runs is None else min(runs, max_runs)), probe


def _measure(runner: Runner, backend: str, precision: str, mode: str, warmup: int, runs: int,
             threads: int | None) -> FpsResult:
    if warmup:
        runner.run_async(warmup)
    wall_ns, times = runner.run_async(runs)
    t = np.asarray(times, dtype=np.float64)
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    return FpsResult(backend=backend, precision=precision, batch=runner.batch, mode=mode,
                     threads=runner.info.get("threads", threads), requests=int(runner.info.get("requests", 1)),
                     p50_ms=float(p50), p90_ms=float(p90), p99_ms=float(p99), mean_ms=float(t.mean()),
                     cv=float(t.std() / t.mean()) if t.mean() > 0 else 0.0,
                     throughput_fps=runs * runner.batch / (wall_ns / 1e9), runs=runs, warmup=warmup,
                     wall_ms=wall_ns / 1e6, times_ms=tuple(float(v) for v in t), info=dict(runner.info))
