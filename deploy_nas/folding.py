"""Folding passes: pure functions of a state dict that move runtime scalings into weights, so that the dense model
has no scaling op left. `Supernet.subnet_state` lists the folds its subnet needs; `materialize` applies them.

* `ScaleFold`: a per-channel factor on a linear/conv layer's output (rows and bias: NASViT's switchable scaling,
  ViT-Slim soft masks after a projection) or input (columns: a mask on the hidden units before fc2).
* `BatchNormFold`: an eval-mode BatchNorm after a convolution, folded into the convolution's weight and bias.

Each returns a new dict and leaves its input untouched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

State = dict[str, Tensor]


class Fold(Protocol):
    def apply(self, state: State) -> State: ...


def _take(state: State, key: str) -> Tensor:
    if key not in state:
        raise KeyError(f"fold refers to {key!r}, which the subnet state lacks")
    return state[key]


@dataclass(frozen=True)
class ScaleFold:
    """Multiply `layer`'s output channels (axis "out": weight rows and bias) or input channels (axis "in": weight
    columns) by `scale`. Exact: the layer is linear in its weights."""

    layer: str
    scale: Tensor
    axis: Literal["out", "in"] = "out"

    def apply(self, state: State) -> State:
        out = dict(state)
        w = _take(state, f"{self.layer}.weight")
        s = self.scale.to(w.dtype).reshape(-1)
        n = w.shape[0] if self.axis == "out" else w.shape[1]
        if s.numel() != n:
            raise ValueError(f"scale of {s.numel()} values for {n} {self.axis}put channels of {self.layer}")
        shape = (-1,) + (1,) * (w.dim() - 1) if self.axis == "out" else (1, -1) + (1,) * (w.dim() - 2)
        out[f"{self.layer}.weight"] = (w * s.reshape(shape)).contiguous()
        bias = state.get(f"{self.layer}.bias")
        if bias is not None and self.axis == "out":
            out[f"{self.layer}.bias"] = (bias * s).contiguous()
        return out


@dataclass(frozen=True)
class BatchNormFold:
    """conv(x) -> BN: weight * g / sqrt(var + eps), bias (or 0) -> (bias - mean) * g / sqrt(var + eps) + beta.
    The BN entries (weight, bias, running_mean, running_var, num_batches_tracked) leave the state."""

    conv: str
    bn: str
    eps: float = 1e-5

    def apply(self, state: State) -> State:
        out = {k: v for k, v in state.items() if not k.startswith(f"{self.bn}.")}
        w = _take(state, f"{self.conv}.weight")
        gamma, beta = _take(state, f"{self.bn}.weight"), _take(state, f"{self.bn}.bias")
        mean, var = _take(state, f"{self.bn}.running_mean"), _take(state, f"{self.bn}.running_var")
        factor = gamma.double() / torch.sqrt(var.double() + self.eps)  # in float64, then back: exact to fp32
        bias = state.get(f"{self.conv}.bias")
        bias = torch.zeros_like(mean) if bias is None else bias
        out[f"{self.conv}.weight"] = (w.double() * factor.reshape(-1, *(1,) * (w.dim() - 1))).to(w.dtype).contiguous()
        out[f"{self.conv}.bias"] = ((bias.double() - mean.double()) * factor + beta.double()).to(w.dtype).contiguous()
        return out


def apply_folds(state: State, folds: tuple[Fold, ...] | list[Fold]) -> State:
    for fold in folds:
        state = fold.apply(state)
    return state


__all__ = ["BatchNormFold", "Fold", "ScaleFold", "apply_folds"]
