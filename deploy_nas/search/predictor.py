"""Latency predictor: a least-squares linear model on per-subnet cost features, fitted to measured subnets.

Why a regression and not a per-block lookup table: on a 2-core CPU the cost of a block depends on its neighbours
(fused kernels, cache reuse, thread start-up), so per-block tables add up badly, while a linear model over the
operation counts that drive the time (matmul MACs of attention and MLP, attention-map sizes, per-layer fixed
costs) is fitted to whole-network measurements and absorbs those effects. Its quality is reported on held-out
measured subnets (Kendall tau and mean absolute % error) next to every search.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

FEATURES = ("const", "depth", "embed_x_depth", "attn_macs", "mlp_macs", "attn_map")


def features(cfg: Any, space: Any) -> np.ndarray:
    """Cost features of one AutoFormer config (per image; tokens are fixed by the image and patch size)."""
    n = (space.img_size // space.patch_size) ** 2 + 1
    e, d = cfg.embed_dim, cfg.depth
    qkv = [h * space.head_dim for h in cfg.num_heads]
    attn = sum(n * e * 4 * q for q in qkv)  # qkv + proj
    mlp = sum(2 * n * e * int(e * r) for r in cfg.mlp_ratio)
    attn_map = sum(2 * n * n * q for q in qkv)  # q k^T and attn v
    return np.array([1.0, d, e * d, attn / 1e6, mlp / 1e6, attn_map / 1e6])


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def mape(pred: Sequence[float], true: Sequence[float]) -> float:
    pred, true = np.asarray(pred, float), np.asarray(true, float)
    return float(np.mean(np.abs(pred - true) / true) * 100)


@dataclass
class LatencyPredictor:
    space: Any
    coef: np.ndarray | None = None

    def fit(self, cfgs: Sequence[Any], ms: Sequence[float]) -> "LatencyPredictor":
        x = np.stack([features(c, self.space) for c in cfgs])
        self.coef = np.linalg.lstsq(x, np.asarray(ms, float), rcond=None)[0]
        return self

    def __call__(self, cfg: Any) -> float:
        return float(features(cfg, self.space) @ self.coef)

    def validate(self, cfgs: Sequence[Any], ms: Sequence[float]) -> dict[str, float]:
        pred = [self(c) for c in cfgs]
        return {"kendall_tau": kendall_tau(pred, ms), "mape_percent": mape(pred, ms), "n": len(cfgs)}

    def to_dict(self) -> dict[str, Any]:
        return {"model": "linear least squares", "features": list(FEATURES),
                "coef": [float(c) for c in self.coef] if self.coef is not None else None}
