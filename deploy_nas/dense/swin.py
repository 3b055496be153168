"""The dense `swin` arch: a hierarchical window-attention transformer with static shapes per stage (S3 / Cream
AutoFormerV2 `SSSTransformer`, Swin v1 semantics).

patch embedding (conv + LayerNorm) -> stages of blocks on an R x R map (R halves per stage) with patch merging
between stages -> LayerNorm -> mean over tokens -> head. A block: x + proj(window attention(LN(x))), then
x + fc2(GELU(fc1(LN(x)))). Every block has its own heads, head dim (Q = heads * head dim may differ from the width),
scale, window (already clipped to the stage resolution) and shift.

Lowering (`deploy_nas.kernels.window`): partition/reverse and patch merging are reshapes and transposes, the shift is
slices + concat, q is scaled before q @ k^T. The relative position bias is a constant of shape (heads, w * w, w * w)
gathered from the block's table once, when the weights load (the table is the stored weight, so the parameter count
is the official one); the shifted-window mask is one constant per stage and window size. Neither is gathered per
inference, and neither is stored in weights.safetensors: both are rebuilt from the spec and the table.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from deploy_nas.console import Table
from deploy_nas.dense.layers import Mlp, count_parameters
from deploy_nas.dense.spec import ARCHS, DenseSpec
from deploy_nas.errors import DenseModelError, check_fields
from deploy_nas.kernels import window as win

ARCH = "swin"


@dataclass(frozen=True)
class SwinBlockSpec:
    num_heads: int
    head_dim: int  # Q = num_heads * head_dim (S3 searches Q apart from the width)
    attn_scale: float  # explicit: the official S3 models use 32 ** -0.5
    window_size: int  # the window the block really uses (already clipped to the stage resolution)
    shift_size: int  # 0, or window_size // 2 on odd blocks of a stage with more than one window
    mlp_hidden: int
    qkv_bias: bool = True

    def __post_init__(self) -> None:
        check_fields("spec.json block", DenseModelError, self, zero_ok=("shift_size",))

    @property
    def qkv_dim(self) -> int:
        return self.num_heads * self.head_dim


@dataclass(frozen=True)
class SwinStageSpec:
    dim: int
    resolution: int  # the stage works on a resolution x resolution token map
    blocks: tuple[SwinBlockSpec, ...]
    out_dim: int | None = None  # patch merging to the next stage (None on the last stage)

    def __post_init__(self) -> None:
        check_fields("spec.json stage", DenseModelError, self)


@dataclass(frozen=True)
class SwinSpec:
    """The body of a `swin` spec."""

    patch_size: int
    stages: tuple[SwinStageSpec, ...]
    patch_norm: bool = True
    norm_eps: float = 1e-5
    activation: str = "gelu_erf"

    def __post_init__(self) -> None:
        check_fields("spec.json body", DenseModelError, self)

    @property
    def depth(self) -> int:
        return sum(len(s.blocks) for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SwinSpec:
        stages = tuple(SwinStageSpec(dim=int(s["dim"]), resolution=int(s["resolution"]),
                                     blocks=tuple(SwinBlockSpec(**b) for b in s["blocks"]),
                                     out_dim=None if s.get("out_dim") is None else int(s["out_dim"]))
                       for s in d["stages"])
        return cls(patch_size=int(d["patch_size"]), stages=stages, patch_norm=d.get("patch_norm", True),
                   norm_eps=float(d.get("norm_eps", 1e-5)), activation=str(d.get("activation", "gelu_erf")))


def check_spec(spec: DenseSpec) -> None:
    """DenseModelError unless the stages chain (R halves, widths meet) and every window tiles its stage."""
    body: SwinSpec = spec.body
    if not body.stages or spec.img_size % body.patch_size:
        raise DenseModelError(f"swin spec: img_size {spec.img_size} must be a multiple of patch_size "
                              f"{body.patch_size}, with at least one stage; re-extract the model")
    resolution = spec.img_size // body.patch_size
    for i, stage in enumerate(body.stages):
        last = i == len(body.stages) - 1
        if stage.resolution != resolution or not stage.blocks or (stage.out_dim is None) != last:
            raise DenseModelError(f"swin spec: stage {i + 1} has resolution {stage.resolution} (expected "
                                  f"{resolution}), {len(stage.blocks)} blocks and out_dim {stage.out_dim}; "
                                  "re-extract the model")
        for j, b in enumerate(stage.blocks):
            if b.window_size < 1 or resolution % b.window_size or not 0 <= b.shift_size < b.window_size \
                    or min(b.num_heads, b.head_dim, b.mlp_hidden) < 1:
                raise DenseModelError(f"swin spec: stage {i + 1} block {j + 1} (window {b.window_size}, shift "
                                      f"{b.shift_size}, heads {b.num_heads} x {b.head_dim}, MLP {b.mlp_hidden}) "
                                      f"does not fit a {resolution} x {resolution} map; re-extract the model")
        if not last and resolution % 2:
            raise DenseModelError(f"swin spec: stage {i + 1} resolution {resolution} is odd: patch merging needs "
                                  "an even map; re-extract the model")
        resolution //= 2


# --------------------------------------------------------------------------------------------------- modules


class PatchEmbed(nn.Module):
    """Conv patches, then (optionally) LayerNorm: (B, C, H, W) -> (B, R * R, E)."""

    def __init__(self, patch_size: int, in_chans: int, dim: int, norm: bool, eps: float, tokens: int):
        super().__init__()
        self.dim, self.tokens = dim, tokens
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim, eps=eps) if norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x).reshape(-1, self.dim, self.tokens)  # (B, E, R, R) -> (B, E, R * R)
        return self.norm(x.transpose(1, 2))


class WindowAttention(nn.Module):
    """qkv -> per-window attention with a constant relative bias (+ the stage's mask) -> proj."""

    def __init__(self, dim: int, spec: SwinBlockSpec):
        super().__init__()
        self.spec = spec
        w = spec.window_size
        self.qkv = nn.Linear(dim, 3 * spec.qkv_dim, bias=spec.qkv_bias)
        self.proj = nn.Linear(spec.qkv_dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * w - 1) ** 2, spec.num_heads))
        self.register_buffer("bias", torch.zeros(spec.num_heads, w * w, w * w), persistent=False)
        self.register_load_state_dict_post_hook(_refresh_bias)
        if not self.bias.is_meta:  # a model of shapes only (built under torch.device("meta")) has no bias to gather
            self.refresh_constants()

    @torch.no_grad()
    def refresh_constants(self) -> None:
        """Gather the (heads, w * w, w * w) bias constant from the table (done on load; call it after editing the
        table by hand)."""
        self.bias.copy_(win.relative_bias(self.relative_position_bias_table.detach(), self.spec.window_size))

    def forward(self, windows: Tensor, mask: Tensor | None) -> Tensor:
        return win.window_attention(windows, self.qkv.weight, self.qkv.bias, self.proj.weight, self.proj.bias,
                                    self.spec.num_heads, self.spec.attn_scale, self.bias, mask)


def _refresh_bias(module: nn.Module, incompatible: Any) -> None:
    module.refresh_constants()


class SwinBlock(nn.Module):
    def __init__(self, dim: int, resolution: int, spec: SwinBlockSpec, body: SwinSpec):
        super().__init__()
        self.spec, self.resolution, self.dim = spec, resolution, dim
        self.norm1 = nn.LayerNorm(dim, eps=body.norm_eps)
        self.attn = WindowAttention(dim, spec)
        self.norm2 = nn.LayerNorm(dim, eps=body.norm_eps)
        self.mlp = Mlp(dim, spec.mlp_hidden, body.activation)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        r, w, s, c = self.resolution, self.spec.window_size, self.spec.shift_size, self.dim
        h = self.norm1(x).reshape(-1, r, r, c)  # (B, R, R, C)
        h = win.cyclic_shift(h, -s)
        h = self.attn(win.window_partition(h, r, w, c), mask)  # (B * nW, w * w, C)
        h = win.cyclic_shift(win.window_reverse(h, r, w, c), s)  # (B, R, R, C)
        x = x + h.reshape(-1, r * r, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """(B, R * R, C) -> (B, R * R / 4, C_out): the four sub-grids concatenated, LayerNorm(4C), a bias-free linear."""

    def __init__(self, resolution: int, dim: int, out_dim: int, eps: float):
        super().__init__()
        self.resolution, self.dim = resolution, dim
        self.norm = nn.LayerNorm(4 * dim, eps=eps)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.reduction(self.norm(win.patch_merge(x, self.resolution, self.dim)))


class SwinStage(nn.Module):
    """Blocks on one resolution; the shifted-window masks are constants of the stage (one per window size)."""

    def __init__(self, spec: SwinStageSpec, body: SwinSpec):
        super().__init__()
        self.spec = spec
        self.blocks = nn.ModuleList(SwinBlock(spec.dim, spec.resolution, b, body) for b in spec.blocks)
        for w, s in sorted({(b.window_size, b.shift_size) for b in spec.blocks if b.shift_size}):
            self.register_buffer(f"mask_{w}_{s}", win.attention_mask(spec.resolution, w, s), persistent=False)
        self.downsample = (PatchMerging(spec.resolution, spec.dim, spec.out_dim, body.norm_eps)
                           if spec.out_dim is not None else None)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            b = block.spec
            x = block(x, getattr(self, f"mask_{b.window_size}_{b.shift_size}") if b.shift_size else None)
        return self.downsample(x) if self.downsample is not None else x


class SwinTransformer(nn.Module):
    """A standalone S3/Swin model. Input (B, C, H, W) float32, output (B, num_classes) logits."""

    body_type = SwinSpec

    def __init__(self, spec: DenseSpec):
        super().__init__()
        check_spec(spec)
        self.spec = spec
        b: SwinSpec = spec.body
        self.patch_embed = PatchEmbed(b.patch_size, spec.in_chans, b.stages[0].dim, b.patch_norm, b.norm_eps,
                                      b.stages[0].resolution ** 2)
        self.layers = nn.ModuleList(SwinStage(s, b) for s in b.stages)
        self.norm = nn.LayerNorm(b.stages[-1].dim, eps=b.norm_eps)
        self.head = nn.Linear(b.stages[-1].dim, spec.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)  # (B, R * R, C0)
        for stage in self.layers:
            x = stage(x)
        return self.head(self.norm(x).mean(dim=1))  # mean over tokens (the official AdaptiveAvgPool1d)

    def architecture_table(self, macs_by_module: dict[str, int]) -> Table:
        b: SwinSpec = self.spec.body
        src = self.spec.source
        table = Table(f"{src.get('family', ARCH)} {src.get('config_id', '')}  {self.spec.img_size}px/{b.patch_size}  "
                      f"{len(b.stages)} stages  depth {b.depth}  pool mean",
                      ("stage", "block", "map", "width", "heads", "head dim", "Q", "scale", "window", "shift", "MLP",
                       "params", "stage MMAC"))
        for i, (stage, module) in enumerate(zip(b.stages, self.layers)):
            macs = macs_by_module.get(f"layers.{i}", 0) / 1e6
            for j, (blk, mod) in enumerate(zip(stage.blocks, module.blocks)):
                table.add_row(i + 1, j + 1, f"{stage.resolution}x{stage.resolution}", stage.dim, blk.num_heads,
                              blk.head_dim, blk.qkv_dim, f"{blk.attn_scale:.4g}", blk.window_size, blk.shift_size,
                              blk.mlp_hidden, f"{count_parameters(mod):,}", f"{macs:.1f}" if j == 0 else "")
            if stage.out_dim is not None:
                table.add_row(i + 1, "merge", f"{stage.resolution // 2}x{stage.resolution // 2}", stage.out_dim,
                              "", "", "", "", "", "", "", f"{count_parameters(module.downsample):,}", "")
        return table


# --------------------------------------------------------------------------------------------- counting


def param_count(spec: DenseSpec) -> int:
    """Parameters of the dense model (= SSSTransformer's for the official configs), by formula."""
    b: SwinSpec = spec.body
    c0 = b.stages[0].dim
    total = c0 * spec.in_chans * b.patch_size ** 2 + c0 + (2 * c0 if b.patch_norm else 0)
    for stage in b.stages:
        c = stage.dim
        for blk in stage.blocks:
            q = blk.qkv_dim
            total += 4 * c + 3 * q * c + (3 * q if blk.qkv_bias else 0) + q * c + c
            total += (2 * blk.window_size - 1) ** 2 * blk.num_heads + 2 * c * blk.mlp_hidden + blk.mlp_hidden + c
        if stage.out_dim is not None:
            total += 8 * c + 4 * c * stage.out_dim
    last = b.stages[-1].dim
    return total + 2 * last + last * spec.num_classes + spec.num_classes


def macs(spec: DenseSpec) -> int:
    """Multiply-accumulates of one image in the convolution, the linear layers and the attention matmuls (what a
    GEMM-counting profiler reports; norms, softmax and additions not included)."""
    b: SwinSpec = spec.body
    r0 = spec.img_size // b.patch_size
    total = r0 * r0 * b.stages[0].dim * spec.in_chans * b.patch_size ** 2
    for stage in b.stages:
        tokens, c = stage.resolution ** 2, stage.dim
        for blk in stage.blocks:
            q = blk.qkv_dim
            total += tokens * (3 * q * c + q * c + 2 * c * blk.mlp_hidden)
            total += 2 * tokens * blk.window_size ** 2 * q  # q @ k^T and attn @ v inside each window
        if stage.out_dim is not None:
            total += tokens // 4 * 4 * c * stage.out_dim
    return total + b.stages[-1].dim * spec.num_classes


def official_flops(spec: DenseSpec) -> float:
    """`SSSTransformer.flops()` of Cream AutoFormerV2, formula for formula (its MAC count, quirks included): the
    attention counts qkv and proj at the block width (not Q), patch merging counts an output of twice its input
    width, and the pooling term uses the first stage's map divided by 2 ** stages."""
    b: SwinSpec = spec.body
    r0 = spec.img_size // b.patch_size
    c0 = b.stages[0].dim
    flops = float(r0 * r0 * c0 * spec.in_chans * b.patch_size ** 2 + (r0 * r0 * c0 if b.patch_norm else 0))
    for stage in b.stages:
        c, r = stage.dim, stage.resolution
        for blk in stage.blocks:
            n, heads = blk.window_size ** 2, blk.num_heads
            windows = r * r / blk.window_size / blk.window_size
            attn = n * c * 3 * c + heads * n * (c // heads) * n * 2 + n * c * c
            flops += c * r * r + windows * attn + 2 * r * r * c * c * (blk.mlp_hidden / c) + c * r * r
        if stage.out_dim is not None:
            flops += r * r * c + (r // 2) * (r // 2) * 4 * c * 2 * c
    last = b.stages[-1].dim
    return flops + last * r0 * r0 // (2 ** len(b.stages)) + last * spec.num_classes


ARCHS.register(ARCH, SwinTransformer)

__all__ = ["ARCH", "SwinBlockSpec", "SwinSpec", "SwinStageSpec", "SwinTransformer", "check_spec", "macs",
           "official_flops", "param_count"]
