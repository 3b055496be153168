"""The dense `psvit` arch: stages of transformer layers with token pooling between them, where a layer may reuse
the attention map of an earlier layer of its stage instead of computing one.

* A producer computes q, k, v with one fused `qkv` linear, scales q first (as the `vit` arch), and its post-softmax
  map A = softmax(q k^T / sqrt(d)) (B, H, N, N) is both used and handed on. A consumer (`attn_from` = the index of
  its producer in the stage) has no q/k weights at all: only `v` and `proj`; it computes A @ v with its own v. In
  the exported graph each shared map is therefore one Softmax, computed once.
* Identity cells have vanished: a stage lists only the layers that run.
* Pooling into stage s (s > 0): 1D, a Conv1d with kernel 1 on every token (the width changes; the CLS token goes
  through the same pointwise map), then the CLS token is split off, the patch tokens are max-pooled by a
  MaxPool1d with kernel = stride, and the CLS token is concatenated back in front; 2D (no CLS token), the tokens as a
  (g, g) map through a 3x3 Conv2d with padding 1 and the stage's stride.
* Head: final LayerNorm, then the CLS token (1D) or the mean over the tokens (2D), then a linear classifier.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from deploy_nas.console import Table
from deploy_nas.dense.layers import Mlp, PatchEmbed, count_parameters, merge_heads, split_heads
from deploy_nas.dense.spec import ARCHS, DenseSpec
from deploy_nas.errors import DenseModelError, brief, check_fields

ARCH = "psvit"


@dataclass(frozen=True)
class PSViTLayerSpec:
    num_heads: int
    mlp_hidden: int
    attn_from: int | None = None  # the producer (its index in this stage) whose post-softmax map this layer reuses

    def __post_init__(self) -> None:
        check_fields("spec.json layer", DenseModelError, self, zero_ok=("num_heads", "mlp_hidden"))


@dataclass(frozen=True)
class PSViTStageSpec:
    width: int
    tokens: int  # patch tokens (a 1D model has one CLS token besides them)
    stride: int  # of the pooling into this stage (1 for stage 0, which is not pooled into)
    layers: tuple[PSViTLayerSpec, ...]

    def __post_init__(self) -> None:
        check_fields("spec.json stage", DenseModelError, self)

    @property
    def producers(self) -> int:
        return sum(layer.attn_from is None for layer in self.layers)


@dataclass(frozen=True)
class PSViTSpec:
    """The body of a `psvit` spec."""

    patch_size: int
    pooling: str  # "1d" (CLS token, Conv1d + MaxPool1d) | "2d" (no CLS token, strided 3x3 Conv2d)
    head_dim: int
    attn_scale: float  # explicit, as in every arch: head_dim ** -0.5
    stages: tuple[PSViTStageSpec, ...]
    norm_eps: float = 1e-6
    activation: str = "gelu_erf"

    def __post_init__(self) -> None:
        check_fields("spec.json body", DenseModelError, self)
        problems = self.problems()
        if problems:
            raise DenseModelError(f"not a valid psvit spec: {'; '.join(problems)}; re-extract the model")

    @property
    def cls_token(self) -> bool:
        return self.pooling == "1d"

    @property
    def depth(self) -> int:
        return sum(len(s.layers) for s in self.stages)

    def problems(self) -> list[str]:
        if self.pooling not in ("1d", "2d") or not self.stages:
            return [f"pooling {brief(self.pooling)} (1d or 2d) with at least one stage"]
        out = []
        for s, stage in enumerate(self.stages):
            if stage.width < 1 or stage.tokens < 1 or stage.stride < 1 or (s == 0 and stage.stride != 1):
                out.append(f"stage {s}: width {stage.width}, tokens {stage.tokens}, stride {stage.stride} (stage 0 "
                           "is not pooled into: stride 1)")
            for i, layer in enumerate(stage.layers):
                out += _layer_problems(s, i, layer, stage, self.head_dim)
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PSViTSpec:
        known = {f.name for f in fields(cls)}
        body = {k: v for k, v in d.items() if k in known}
        body["stages"] = tuple(PSViTStageSpec(int(s["width"]), int(s["tokens"]), int(s["stride"]), tuple(
            PSViTLayerSpec(**layer) for layer in s["layers"])) for s in d["stages"])
        return cls(**body)


def _layer_problems(s: int, i: int, layer: PSViTLayerSpec, stage: PSViTStageSpec, head_dim: int) -> list[str]:
    where = f"stage {s} layer {i}"
    out = []
    if layer.num_heads < 1 or layer.num_heads * head_dim != stage.width or layer.mlp_hidden < 1:
        out.append(f"{where}: {layer.num_heads} heads of {head_dim} for width {stage.width}, MLP {layer.mlp_hidden}")
    source = layer.attn_from
    if source is not None and (not isinstance(source, int) or not 0 <= source < i
                               or stage.layers[source].attn_from is not None):
        out.append(f"{where}: attn_from = {brief(source)} must name an earlier layer of the same stage that "
                   "computes its own map (a shared map never crosses a stage boundary: pooling changes its tokens)")
    return out


def pooled_tokens(pooling: str, n: int, stride: int) -> int | None:
    """Patch tokens after a pooling of `stride`: 1D n / stride (None unless whole), 2D ceil(g / stride)^2."""
    if pooling == "1d":
        return n // stride if n % stride == 0 else None
    return (-(-math.isqrt(n) // stride)) ** 2


def stage_geometry(spec: DenseSpec) -> list[int]:
    """Patch-token counts per stage, checked against the input size and each pooling stride (DenseModelError)."""
    b: PSViTSpec = spec.body
    n: int | None = (spec.img_size // b.patch_size) ** 2
    counts: list[int] = []
    for s, stage in enumerate(b.stages):
        if s:
            n = pooled_tokens(b.pooling, counts[-1], stage.stride)
        if stage.tokens != n:
            raise DenseModelError(f"stage {s} claims {stage.tokens} tokens, but a {spec.img_size} px input in "
                                  f"{b.patch_size} px patches, {b.pooling}-pooled with the strides of the spec, gives "
                                  f"{n if n is not None else 'no whole number'}; re-extract the model")
        counts.append(n)
    return counts


# ----------------------------------------------------------------------------------------------- modules


class Attention(nn.Module):
    """A producer: its own q, k, v (one fused linear); returns its output and its post-softmax map."""

    def __init__(self, dim: int, heads: int, head_dim: int, scale: float):
        super().__init__()
        self.heads, self.head_dim, self.scale = heads, head_dim, scale
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, h: Tensor, shared: Tensor | None = None) -> tuple[Tensor, Tensor]:
        q, k, v = split_heads(self.qkv(h), 3, self.heads, self.head_dim)  # each (B, H, N, d)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, N, N)
        return self.proj(merge_heads(attn @ v)), attn


class SharedAttention(nn.Module):
    """A consumer: no q/k projections; its own v, the producer's post-softmax map (B, H, N, N)."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, h: Tensor, shared: Tensor) -> tuple[Tensor, Tensor]:
        (v,) = split_heads(self.v(h), 1, self.heads, self.head_dim)  # (B, H, N, d)
        return self.proj(merge_heads(shared @ v)), shared


class Layer(nn.Module):
    """Pre-norm transformer layer: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, spec: PSViTLayerSpec, body: PSViTSpec):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=body.norm_eps)
        self.attn = Attention(dim, spec.num_heads, body.head_dim, body.attn_scale) if spec.attn_from is None \
            else SharedAttention(dim, spec.num_heads, body.head_dim)
        self.norm2 = nn.LayerNorm(dim, eps=body.norm_eps)
        self.mlp = Mlp(dim, spec.mlp_hidden, body.activation)

    def forward(self, x: Tensor, shared: Tensor | None) -> tuple[Tensor, Tensor]:
        out, attn = self.attn(self.norm1(x), shared)
        x = x + out
        return x + self.mlp(self.norm2(x)), attn


class TokenPool1d(nn.Module):
    """Conv1d (kernel 1) on every token, then MaxPool1d (kernel = stride) on the patch tokens, the CLS token split
    off and concatenated back: (B, 1 + N, C_in) -> (B, 1 + N / stride, C_out)."""

    def __init__(self, dim_in: int, dim_out: int, stride: int):
        super().__init__()
        self.conv = nn.Conv1d(dim_in, dim_out, kernel_size=1)
        self.pool = nn.MaxPool1d(stride, stride) if stride > 1 else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x.transpose(1, 2))  # (B, C_out, 1 + N)
        if self.pool is None:
            return y.transpose(1, 2)
        return torch.cat([y[..., :1], self.pool(y[..., 1:])], dim=-1).transpose(1, 2)  # (B, 1 + N / s, C_out)


class TokenPool2d(nn.Module):
    """The tokens as a (g, g) map through a 3x3 Conv2d with padding 1 and the stride: (B, g*g, C_in) ->
    (B, ceil(g / s)^2, C_out)."""

    def __init__(self, dim_in: int, dim_out: int, stride: int, grid: int):
        super().__init__()
        self.dim_in, self.grid = dim_in, grid
        self.conv = nn.Conv2d(dim_in, dim_out, kernel_size=3, stride=stride, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        t = x.transpose(1, 2).reshape(-1, self.dim_in, self.grid, self.grid)  # (B, C_in, g, g)
        return self.conv(t).flatten(2).transpose(1, 2)  # (B, g'*g', C_out)


class Stage(nn.Module):
    def __init__(self, spec: PSViTStageSpec, body: PSViTSpec, dim_in: int, tokens_in: int, first: bool):
        super().__init__()
        if first:
            self.pool = None
        elif body.pooling == "1d":
            self.pool = TokenPool1d(dim_in, spec.width, spec.stride)
        else:
            self.pool = TokenPool2d(dim_in, spec.width, spec.stride, math.isqrt(tokens_in))
        self.layers = nn.ModuleList(Layer(spec.width, layer, body) for layer in spec.layers)
        self.sources = tuple(layer.attn_from for layer in spec.layers)

    def forward(self, x: Tensor) -> Tensor:
        if self.pool is not None:
            x = self.pool(x)
        maps: list[Tensor] = []
        for layer, source in zip(self.layers, self.sources):
            x, attn = layer(x, None if source is None else maps[source])
            maps.append(attn)  # a consumer hands on its producer's map: never read (attn_from names producers)
        return x


class PSViT(nn.Module):
    """A standalone PSViT subnet. Input (B, C, H, W) float32, output (B, num_classes) logits."""

    body_type = PSViTSpec

    def __init__(self, spec: DenseSpec):
        super().__init__()
        self.spec = spec
        b: PSViTSpec = spec.body
        counts = stage_geometry(spec)
        first, last = b.stages[0].width, b.stages[-1].width
        self.patch_embed = PatchEmbed(b.patch_size, spec.in_chans, first)
        if b.cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, first))
        self.pos_embed = nn.Parameter(torch.zeros(1, counts[0] + b.cls_token, first))
        self.stages = nn.ModuleList(
            Stage(stage, b, b.stages[s - 1].width if s else first, counts[s - 1] if s else counts[0], s == 0)
            for s, stage in enumerate(b.stages))
        self.norm = nn.LayerNorm(last, eps=b.norm_eps)
        self.head = nn.Linear(last, spec.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)  # (B, N, C0)
        if self.spec.body.cls_token:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + N, C0)
        x = x + self.pos_embed
        for stage in self.stages:
            x = stage(x)
        x = self.norm(x)
        return self.head(x[:, 0] if self.spec.body.cls_token else x.mean(dim=1))  # (B, classes)

    def architecture_table(self, macs_by_module: dict[str, int]) -> Table:
        b: PSViTSpec = self.spec.body
        src = self.spec.source
        title = (f"{src.get('family', ARCH)} {src.get('config_id', '')}  {self.spec.img_size}px/{b.patch_size}  "
                 f"pooling {b.pooling}  {b.depth} layers ({sum(s.producers for s in b.stages)} attention maps)  "
                 f"head dim {b.head_dim}" + (f"  layers {src['layers']}" if "layers" in src else ""))
        table = Table(title, ("stage", "layer", "tokens", "width", "heads", "attention", "MLP", "params", "MMAC"))
        for s, (stage, module) in enumerate(zip(b.stages, self.stages)):
            n = stage.tokens + b.cls_token
            if module.pool is not None:
                pool = f"pool {b.pooling} /{stage.stride}" if b.pooling == "1d" else f"conv3x3 /{stage.stride}"
                table.add_row(s, pool, n, stage.width, "-", "-", "-", f"{count_parameters(module.pool):,}",
                              f"{pool_macs(b, s, b.stages[s - 1]) / 1e6:.2f}")
            for i, (layer, m) in enumerate(zip(stage.layers, module.layers)):
                attn = "own" if layer.attn_from is None else f"reuses layer {layer.attn_from}"
                table.add_row(s, i, n, stage.width, layer.num_heads, attn, layer.mlp_hidden,
                              f"{count_parameters(m):,}", f"{layer_macs(n, stage.width, layer) / 1e6:.2f}")
        return table


# ---------------------------------------------------------------------------------------------------- costs


def layer_macs(n: int, width: int, layer: PSViTLayerSpec) -> int:
    """Multiply-accumulates of one layer over n tokens: q/k/v (a consumer: v only) and proj, q k^T (producers
    only) and A v, and the MLP."""
    own = layer.attn_from is None
    return n * width * width * (4 if own else 2) + n * n * width * (2 if own else 1) + 2 * n * width * layer.mlp_hidden


def pool_macs(body: PSViTSpec, s: int, previous: PSViTStageSpec) -> int:
    """The pooling into stage s: the pointwise Conv1d over every token before max-pooling (1D), or the 3x3 Conv2d
    at each output position (2D)."""
    stage = body.stages[s]
    if body.pooling == "1d":
        return (previous.tokens + 1) * previous.width * stage.width
    return stage.tokens * previous.width * stage.width * 9


def macs(spec: DenseSpec) -> int:
    """Multiply-accumulates of one image (as the papers count: matmuls and convolutions, not norms or softmax)."""
    b: PSViTSpec = spec.body
    first = b.stages[0]
    total = first.tokens * first.width * spec.in_chans * b.patch_size ** 2 + b.stages[-1].width * spec.num_classes
    for s, stage in enumerate(b.stages):
        if s:
            total += pool_macs(b, s, b.stages[s - 1])
        total += sum(layer_macs(stage.tokens + b.cls_token, stage.width, layer) for layer in stage.layers)
    return total


ARCHS.register(ARCH, PSViT)

__all__ = ["ARCH", "PSViT", "PSViTLayerSpec", "PSViTSpec", "PSViTStageSpec", "layer_macs", "macs", "pool_macs",
           "pooled_tokens", "stage_geometry"]
