"""Runners: a prepared batch run again and again, for timing (no per-call input copies).

An Engine hands out a runner with `engine.runner(batch, mode, requests, threads)`. `step()` is one synchronous
inference; runners that keep several requests in flight also implement `run_async(n)`.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np


class Runner:
    """Runs one prepared batch synchronously. Use as a context manager (it may change thread settings)."""

    asynchronous = False

    def __init__(self, batch: int, step: Callable[[], Any], info: dict[str, Any] | None = None):
        self.batch = batch
        self._step = step
        self.info = dict(info or {})

    def step(self) -> None:
        self._step()

    def run_async(self, n: int) -> tuple[int, list[float]]:
        """(wall time in ns, per-request latencies in ms) for `n` requests; synchronous runners run in order."""
        latencies = []
        start = time.perf_counter_ns()
        for _ in range(n):
            t0 = time.perf_counter_ns()
            self._step()
            latencies.append((time.perf_counter_ns() - t0) / 1e6)
        return time.perf_counter_ns() - start, latencies

    def close(self) -> None:
        """Undo what the runner changed (threads); safe to call twice."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def infer_runner(engine: Any, x: np.ndarray) -> Runner:
    """The generic runner: `engine.infer` on feeds built once."""
    feeds = {engine.input_name: np.ascontiguousarray(x, dtype=np.float32)}
    return Runner(len(x), lambda: engine.infer(feeds), {"runner": "infer"})
