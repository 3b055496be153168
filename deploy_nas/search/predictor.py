"""Latency predictor: a non-negative least-squares linear model on per-subnet cost features, fitted to subnets
measured on the backend the search targets.

Why a regression and not a per-block lookup table: on a 2-core CPU the cost of a block depends on its neighbours
(fused kernels, cache reuse, thread start-up), so per-block tables add up badly, while a linear model over the
operation counts that drive the time (matmul MACs of attention and MLP, attention-map sizes, per-layer fixed
costs) is fitted to whole-network measurements and absorbs those effects. The features come from the family
(`Family.cost_features`). The coefficients are kept non-negative (every operation costs time, none saves it): with
~30 noisy measurements and correlated features, a free least-squares fit trades a large positive coefficient
against a negative one and ranks unseen subnets worse. Its quality is reported on held-out measured subnets
(Kendall tau and mean absolute % error) next to every search.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CostFeatures = Callable[[Any, Any], dict[str, float]]  # (space, cfg) -> named per-image costs


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def mape(pred: Sequence[float], true: Sequence[float]) -> float:
    pred, true = np.asarray(pred, float), np.asarray(true, float)
    return float(np.mean(np.abs(pred - true) / true) * 100)


def repeatability(passes: Sequence[Sequence[float]]) -> dict[str, float] | None:
    """How far a measurement can be trusted, from the same subnets timed in several interleaved passes (each entry:
    one subnet's per-pass p50s): the median of the even passes against the median of the odd ones, as the Kendall
    tau of the two rankings and the median abs % difference of the two halves. None with fewer than 3 subnets."""
    halves = [(float(np.median(p[0::2])), float(np.median(p[1::2]))) for p in passes if len(p) >= 2]
    if len(halves) < 3:
        return None
    a, b = zip(*halves)
    diff = np.abs(np.subtract(a, b)) / np.mean([a, b], axis=0) * 100
    return {"kendall_tau": kendall_tau(a, b), "median_diff_percent": float(np.median(diff)), "n": len(halves)}


@dataclass
class LatencyPredictor:
    space: Any
    cost_features: CostFeatures
    coef: np.ndarray | None = None
    names: tuple[str, ...] = field(default=())

    def features(self, cfg: Any) -> np.ndarray:
        named = self.cost_features(self.space, cfg)
        self.names = self.names or tuple(named)
        return np.array([named[n] for n in self.names], dtype=float)

    def fit(self, cfgs: Sequence[Any], ms: Sequence[float]) -> LatencyPredictor:
        from scipy.optimize import nnls

        x = np.stack([self.features(c) for c in cfgs])
        scale = np.maximum(np.abs(x).max(axis=0), 1e-12)  # columns of comparable size for the solver
        self.coef = nnls(x / scale, np.asarray(ms, float))[0] / scale
        return self

    def __call__(self, cfg: Any) -> float:
        return float(self.features(cfg) @ self.coef)

    def validate(self, cfgs: Sequence[Any], ms: Sequence[float]) -> dict[str, float]:
        pred = [self(c) for c in cfgs]
        return {"kendall_tau": kendall_tau(pred, ms), "mape_percent": mape(pred, ms), "n": len(cfgs)}

    def to_dict(self) -> dict[str, Any]:
        return {"model": "linear, non-negative least squares", "features": list(self.names),
                "coef": [float(c) for c in self.coef] if self.coef is not None else None}
