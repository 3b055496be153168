"""The small layer vocabulary the dense archs are built from (timm-style names, plain nn.Modules, no slicing)."""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

Activation = Literal["gelu_erf", "gelu_tanh", "silu", "relu", "hardswish"]


def activation(name: str) -> nn.Module:
    """The module for an activation name of a spec (GELU's erf vs tanh form is explicit: they differ by ~1e-4)."""
    table = {"gelu_erf": lambda: nn.GELU(approximate="none"), "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
             "silu": nn.SiLU, "relu": nn.ReLU, "hardswish": nn.Hardswish}
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; choose one of: {', '.join(table)}")
    return table[name]()


class PatchEmbed(nn.Module):
    """Non-overlapping patches by a strided conv; (B, C, H, W) -> (B, N, E)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, E, h, w) -> (B, N, E)


class Mlp(nn.Module):
    """fc1 -> activation -> fc2."""

    def __init__(self, dim: int, hidden: int, act: str = "gelu_erf", out_dim: int | None = None, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = activation(act)
        self.fc2 = nn.Linear(hidden, out_dim or dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def split_heads(x: Tensor, parts: int, heads: int, head_dim: int) -> tuple[Tensor, ...]:
    """(B, N, parts * heads * head_dim) -> `parts` tensors of (B, heads, N, head_dim)."""
    B, N, _ = x.shape
    return tuple(x.reshape(B, N, parts, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0))


def scaled(x: Tensor, scale: float) -> Tensor:
    """x * scale; x itself for a scale of 1.0 (one folded into the weights), so that no op is left in the graph."""
    return x if scale == 1.0 else x * scale


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, N, d) -> (B, N, H * d)."""
    B, H, N, d = x.shape
    return x.transpose(1, 2).reshape(B, N, H * d)


def pool_tokens(x: Tensor, pool: str) -> Tensor:
    """(B, N, E) -> (B, E): the cls token, or the mean over the patch tokens (cls excluded, as AutoFormer's gp)."""
    if pool == "cls":
        return x[:, 0]
    if pool == "mean":
        return x[:, 1:].mean(dim=1)
    if pool == "mean_all":
        return x.mean(dim=1)
    raise ValueError(f"unknown pooling {pool!r}")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def constant(value: Tensor) -> Tensor:
    """A contiguous float32 copy for a non-persistent buffer (rebuilt from the spec, never stored as a weight)."""
    return value.detach().to(torch.float32).contiguous().clone()
