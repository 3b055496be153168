"""The dense `nasvit` arch: one NASViT subnet as plain layers, BatchNorm folded into the convolutions and the
switchable scaling folded into the attention projection and both MLP output layers (nothing of either is left).

* MBConv: 1x1 expansion conv + SiLU (absent in stages with expand ratio 1), depthwise k x k conv + SiLU,
  optional squeeze-excite (mean over the map, 1x1 conv, ReLU, 1x1 conv, HardSigmoid: relu6(x + 3) / 6, the
  official `Hsigmoid`), 1x1 projection; plus the official shortcut: identity, or a 2x2 average pool (padded by one,
  zeros counted, on odd maps) and/or a 1x1 conv without bias.
* Transformer block (tokens (B, L, C), L = G x G): the per-sample norm over tokens and channels (one ONNX
  LayerNormalization over the last two axes), q/k with the 8**-0.5 scale folded into q, V expanded 4x then a 3x3
  depthwise conv on the G x G map, talking heads as (heads x heads) MatMuls over the heads axis of the (B, heads,
  L, L) logits (`proj_l` before softmax, with the cropped relative bias and proj_l's bias as one (heads, L, L)
  weight `attn.bias`; `proj_w` after), SiLU on the attention output, `proj`; then two MLPs (mlp2 before mlp1, as
  the official block).
* Head: 1x1 expansion conv + SiLU, mean over the map, 1x1 conv without bias + SiLU, flatten (never squeeze: the
  batch axis stays), Linear.

The input resolution is fixed at the subnet's (`spec.img_size`): the exported graph takes images of that size.
Like the official static model, eager calls with another size resize first (bicubic); the exported graph, traced
at the subnet's size, has no Resize.

A spec is checked before any layer is built (a hand-edited spec.json is one DenseModelError naming the field, never
a shape error in the first forward pass): the body when it is read (widths chain from block to block, odd kernels,
strides of 1 or 2, pool paddings of 0 or 1 and 0 without a pooled shortcut, no middle width of its own without an
expansion conv, heads that divide the width, a known activation and resize mode), and with the input size when the
model is built (`map_sides`: the map side after the stem and each stride; each stride-2 block's pool padding is 1
exactly on odd maps and each transformer's grid is the side of the map it runs on; `param_count` within MAX_PARAMS).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deploy_nas.console import Table
from deploy_nas.dense.layers import count_parameters
from deploy_nas.dense.spec import ARCHS, DenseSpec
from deploy_nas.errors import DenseModelError, brief, check_fields, check_params
from deploy_nas.kernels import nasvit as kernels

ARCH = "nasvit"
V_EXPAND = 4  # V is 4C wide: 32 value channels per 8-channel head
ACTIVATIONS = ("silu",)  # what the layers compute (the field records it; nothing else is built)
RESIZE_MODES = ("bicubic", "bilinear", "nearest", "nearest-exact", "area")  # F.interpolate's modes for (B, C, H, W)


@dataclass(frozen=True)
class MBConvSpec:
    """One MBConv. `mid`: middle width; `expand`: whether a 1x1 expansion conv makes it (else mid == c_in);
    `se`: squeeze-excite width (0: none); `pool_padding`: of the stride-2 average-pool shortcut (1 on odd maps)."""

    c_in: int
    c_out: int
    mid: int
    kernel: int
    stride: int
    expand: bool = True
    se: int = 0
    pool_padding: int = 0
    kind: str = "mbconv"

    def __post_init__(self) -> None:
        check_fields("spec.json mbconv block", DenseModelError, self, zero_ok=("se", "pool_padding"))

    @property
    def shortcut_pool(self) -> bool:
        return self.stride > 1

    @property
    def shortcut_conv(self) -> bool:
        return self.c_in != self.c_out


@dataclass(frozen=True)
class TransformerSpec:
    """One transformer block on a `grid` x `grid` token map of width `dim` (heads of 8, values of 32 per head)."""

    dim: int
    grid: int
    head_dim: int = 8
    kind: str = "transformer"

    def __post_init__(self) -> None:
        check_fields("spec.json transformer block", DenseModelError, self)

    @property
    def heads(self) -> int:
        return self.dim // self.head_dim

    @property
    def tokens(self) -> int:
        return self.grid * self.grid


BLOCK_TYPES = {"mbconv": MBConvSpec, "transformer": TransformerSpec}


@dataclass(frozen=True)
class NASViTSpec:
    """The body of a `nasvit` spec."""

    stem_width: int
    stem_stride: int
    blocks: tuple[MBConvSpec | TransformerSpec, ...]
    head_width: int  # the expansion conv of the head (6 x the last stage's width)
    feature_width: int  # the feature-mix conv, the classifier's input
    norm_eps: float = 1e-5
    activation: str = "silu"  # official swish, x * sigmoid(x)
    resize: str = "bicubic"  # eager calls at another input size resize first (the official static model does)

    def __post_init__(self) -> None:
        check_fields("spec.json body", DenseModelError, self)
        problems = self.problems()
        if problems:
            more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
            raise DenseModelError(f"spec.json body: {'; '.join(problems[:3])}{more}; re-extract the model")

    def problems(self) -> list[str]:
        """What makes the body inconsistent on its own (without the input size: see `map_sides`)."""
        out = [f"{name} = {brief(getattr(self, name), 30)} (one of {', '.join(allowed)})"
               for name, allowed in (("activation", ACTIVATIONS), ("resize", RESIZE_MODES))
               if getattr(self, name) not in allowed]
        if not isinstance(self.blocks, (tuple, list)):
            return [*out, f"blocks = {brief(self.blocks, 30)} (must be a list of blocks)"]
        width, source = self.stem_width, "stem_width"  # the channels entering each block, and what sets them
        for i, s in enumerate(self.blocks):
            where = f"blocks[{i}]"
            if isinstance(s, MBConvSpec):
                out += _mbconv_problems(where, s, width, source)
                width, source = s.c_out, f"{where}.c_out"
            elif isinstance(s, TransformerSpec):
                if s.dim != width:
                    out.append(f"{where}.dim = {s.dim}, but {width} channels enter it ({source})")
                if s.dim % s.head_dim:
                    out.append(f"{where}.head_dim = {s.head_dim} does not divide dim {s.dim} into whole heads")
            else:
                out.append(f"{where} is a {type(s).__name__}, neither an mbconv nor a transformer block")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "blocks": [asdict(b) for b in self.blocks]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NASViTSpec:
        known = {f.name for f in fields(cls)}
        body = {k: v for k, v in d.items() if k in known}
        body["blocks"] = tuple(_block(b) for b in d["blocks"])
        return cls(**body)


def _mbconv_problems(where: str, s: MBConvSpec, width: int, source: str) -> list[str]:
    out = []
    if s.c_in != width:
        out.append(f"{where}.c_in = {s.c_in}, but {width} channels enter it ({source})")
    if s.stride not in (1, 2):
        out.append(f"{where}.stride = {s.stride} (1 or 2: the shortcut's 2 x 2 average pool halves the map)")
    if s.kernel % 2 == 0:
        out.append(f"{where}.kernel = {s.kernel} (must be odd: padded by kernel // 2, only an odd kernel keeps the "
                   "map's side)")
    if s.pool_padding not in (0, 1) or (s.stride == 1 and s.pool_padding):
        out.append(f"{where}.pool_padding = {s.pool_padding} (0 or 1 with stride 2, 0 with stride 1: no pooled "
                   "shortcut)")
    if not s.expand and s.mid != s.c_in:
        out.append(f"{where}.mid = {s.mid}, but without an expansion conv the middle width is c_in {s.c_in}")
    return out


def map_sides(spec: DenseSpec) -> list[int]:
    """The side of the map entering each block and leaving the last one, from the input size, the stem's stride and
    each block's; DenseModelError where a stride-2 block's pool padding is not 1 exactly on an odd map (the shortcut
    must meet the depthwise conv's output side, ceil(side / 2)) or a transformer's grid is not the map's side."""
    b: NASViTSpec = spec.body
    side = (spec.img_size - 1) // b.stem_stride + 1  # the 3 x 3 stem, padding 1
    sides, strides = [side], []
    for i, s in enumerate(b.blocks):
        trail = (f"img_size {spec.img_size}, stem_stride {b.stem_stride}"
                 + (f", then stride {', '.join(map(str, strides))} in blocks[0..{i - 1}]" if strides else ""))
        if isinstance(s, MBConvSpec):
            if s.stride > 1 and s.pool_padding != side % 2:
                raise DenseModelError(f"spec.json body: blocks[{i}].pool_padding = {s.pool_padding}, but it pools a "
                                      f"{side} x {side} map ({trail}): a stride-2 block pads its shortcut by 1 on odd "
                                      "maps, 0 on even ones (check the strides and img_size); re-extract the model")
            side = (side - 1) // s.stride + 1
            strides.append(s.stride)
        elif s.grid != side:
            raise DenseModelError(f"spec.json body: blocks[{i}].grid = {s.grid}, but the map there is {side} x {side} "
                                  f"({trail}); check the strides and img_size, or re-extract the model")
        sides.append(side)
    return sides


def param_count(spec: DenseSpec) -> int:
    """Parameters of the dense model, by formula from its spec (= count_parameters of the built module)."""
    b: NASViTSpec = spec.body
    total = spec.in_chans * b.stem_width * 9 + b.stem_width
    width = b.stem_width
    for s in b.blocks:
        if isinstance(s, MBConvSpec):
            total += (s.c_in * s.mid + s.mid) * s.expand + s.mid * s.kernel ** 2 + s.mid + s.mid * s.c_out + s.c_out
            total += 2 * s.mid * s.se + s.se + s.mid if s.se else 0
            total += s.c_in * s.c_out if s.shortcut_conv else 0
            width = s.c_out
        else:
            C, h, L = s.dim, s.heads, s.tokens
            total += 3 * 2 * C + 2 * (C * C + C) + (V_EXPAND * C * C + V_EXPAND * C) + 9 * V_EXPAND * C
            total += h * h + h * L * L + h * h + h + V_EXPAND * C * C + C + 2 * 2 * (C * C + C)
    total += width * b.head_width + b.head_width + b.head_width * b.feature_width
    return total + b.feature_width * spec.num_classes + spec.num_classes


def check_spec(spec: DenseSpec) -> list[int]:
    """`map_sides(spec)`; also a DenseModelError for a spec of more than MAX_PARAMS parameters (before any layer
    exists: a hand-edited kernel or width must not allocate gigabytes only to fail)."""
    sides = map_sides(spec)
    check_params("spec.json", DenseModelError, param_count(spec), "its widths, kernels and token grids",
                 "NASViT subnet")
    return sides


def _block(d: dict[str, Any]) -> MBConvSpec | TransformerSpec:
    kind = BLOCK_TYPES.get(d.get("kind"))
    if kind is None:
        raise ValueError(f"block kind {str(d.get('kind'))[:20]!r} is neither mbconv nor transformer")
    known = {f.name for f in fields(kind)}
    return kind(**{k: v for k, v in d.items() if k in known})


# ------------------------------------------------------------------------------------------------------ MBConv


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, mid: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, mid, 1)
        self.expand = nn.Conv2d(mid, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1); a ReduceMean, which the fp16 rewrite keeps in fp32
        return x * F.hardsigmoid(self.expand(F.relu(self.reduce(y))))


class MBConv(nn.Module):
    def __init__(self, s: MBConvSpec):
        super().__init__()
        self.spec = s
        self.expand = nn.Conv2d(s.c_in, s.mid, 1) if s.expand else None
        self.dw = nn.Conv2d(s.mid, s.mid, s.kernel, s.stride, s.kernel // 2, groups=s.mid)
        self.se = SqueezeExcite(s.mid, s.se) if s.se else None
        self.project = nn.Conv2d(s.mid, s.c_out, 1)
        self.pool = nn.AvgPool2d(2, padding=s.pool_padding) if s.shortcut_pool else None
        self.shortcut = nn.Conv2d(s.c_in, s.c_out, 1, bias=False) if s.shortcut_conv else None

    def forward(self, x: Tensor) -> Tensor:
        y = F.silu(self.expand(x)) if self.expand is not None else x  # (B, mid, H, W)
        y = F.silu(self.dw(y))  # (B, mid, H / s, W / s)
        if self.se is not None:
            y = self.se(y)
        if self.pool is not None:
            x = self.pool(x)  # count_include_pad: the official average counts the zero padding
        if self.shortcut is not None:
            x = self.shortcut(x)
        return self.project(y) + x  # (B, c_out, H / s, W / s)


# ------------------------------------------------------------------------------------------------- transformer


class TokenNorm(nn.Module):
    """Normalization over tokens and channels of each sample, per-channel affine; (B, L, C) -> (B, L, C)."""

    def __init__(self, dim: int, tokens: int, eps: float):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim))
        self.tokens, self.eps = tokens, eps

    def forward(self, x: Tensor) -> Tensor:
        return kernels.token_norm(x, self.weight, self.bias, self.tokens, self.eps)


class HeadMix(nn.Module):
    """Talking heads: a (heads x heads) linear map over the heads axis of (B, heads, L, L) attention maps."""

    def __init__(self, heads: int, tokens: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.eye(heads))
        self.bias = nn.Parameter(torch.zeros(heads)) if bias else None
        self.tokens = tokens

    def forward(self, attn: Tensor) -> Tensor:
        return kernels.mix_heads(attn, self.weight, self.bias, self.tokens)


class Attention(nn.Module):
    def __init__(self, s: TransformerSpec):
        super().__init__()
        C, h, L = s.dim, s.heads, s.tokens
        self.grid, self.heads, self.head_dim = s.grid, h, s.head_dim
        self.q, self.k = nn.Linear(C, C), nn.Linear(C, C)  # the q scale is folded into q
        self.v = nn.Linear(C, V_EXPAND * C)
        self.vconv = nn.Conv2d(V_EXPAND * C, V_EXPAND * C, 3, padding=1, groups=V_EXPAND * C, bias=False)
        self.proj_l = HeadMix(h, L, bias=False)  # talking heads before softmax
        self.bias = nn.Parameter(torch.zeros(h, L, L))  # proj_l (cropped relative bias) + proj_l's bias
        self.proj_w = HeadMix(h, L, bias=True)  # talking heads after softmax
        self.proj = nn.Linear(V_EXPAND * C, C)

    def forward(self, x: Tensor) -> Tensor:
        L, h, d, G = self.grid * self.grid, self.heads, self.head_dim, self.grid
        q = self.q(x).reshape(-1, L, h, d).transpose(1, 2)  # (B, h, L, 8)
        k = self.k(x).reshape(-1, L, h, d).transpose(1, 2)
        v = self.v(x).transpose(1, 2).reshape(-1, V_EXPAND * h * d, G, G)  # (B, 4C, G, G)
        v = self.vconv(v).reshape(-1, h, V_EXPAND * d, L).transpose(2, 3)  # (B, h, L, 32)
        attn = self.proj_l(q @ k.transpose(-2, -1)) + self.bias  # (B, h, L, L)
        attn = self.proj_w(attn.softmax(dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(-1, L, V_EXPAND * h * d)  # (B, L, 4C)
        return self.proj(F.silu(out))


class Mlp(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.silu(self.fc1(x)))


class TransformerBlock(nn.Module):
    """x + attn(norm1 x); + mlp2(norm3 x); + mlp1(norm2 x): the official order, scales already in the weights."""

    def __init__(self, s: TransformerSpec, eps: float):
        super().__init__()
        self.spec = s
        self.norm1, self.norm2, self.norm3 = (TokenNorm(s.dim, s.tokens, eps) for _ in range(3))
        self.attn = Attention(s)
        self.mlp1, self.mlp2 = Mlp(s.dim), Mlp(s.dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))  # (B, L, C)
        x = x + self.mlp2(self.norm3(x))
        return x + self.mlp1(self.norm2(x))


# ------------------------------------------------------------------------------------------------------- model


class Head(nn.Module):
    def __init__(self, c_in: int, width: int, features: int):
        super().__init__()
        self.expand = nn.Conv2d(c_in, width, 1)
        self.mix = nn.Conv2d(width, features, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = F.silu(self.expand(x)).mean(dim=(2, 3), keepdim=True)  # (B, width, 1, 1)
        return F.silu(self.mix(x)).flatten(1)  # (B, features): flatten, not squeeze, keeps a batch of 1


def _to_tokens(x: Tensor, s: TransformerSpec) -> Tensor:
    """(B, C, G, G) -> (B, L, C) at the start of a transformer stage."""
    return x.reshape(-1, s.dim, s.tokens).transpose(1, 2)


def _to_map(x: Tensor, s: TransformerSpec) -> Tensor:
    """(B, L, C) -> (B, C, G, G) at the end of a transformer stage (sizes from the spec: constants in the graph)."""
    return x.transpose(1, 2).reshape(-1, s.dim, s.grid, s.grid)


class NASViT(nn.Module):
    """A standalone NASViT subnet. Input (B, C, R, R) float32 at the subnet's resolution R, output logits."""

    body_type = NASViTSpec

    def __init__(self, spec: DenseSpec):
        super().__init__()
        check_spec(spec)  # every size agrees through the network before a layer is built
        self.spec = spec
        b: NASViTSpec = spec.body
        self.stem = nn.Conv2d(spec.in_chans, b.stem_width, 3, b.stem_stride, 1)
        self.blocks = nn.ModuleList(MBConv(s) if isinstance(s, MBConvSpec) else TransformerBlock(s, b.norm_eps)
                                    for s in b.blocks)
        last = next((s.c_out for s in reversed(b.blocks) if isinstance(s, MBConvSpec)), b.stem_width)
        self.head = Head(last, b.head_width, b.feature_width)
        self.classifier = nn.Linear(b.feature_width, spec.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.spec.img_size or x.shape[-2] != self.spec.img_size:  # eager only: traced at R
            x = F.interpolate(x, size=self.spec.img_size, mode=self.spec.body.resize)
        x = F.silu(self.stem(x))
        tokens = None  # the TransformerSpec of the stage x is inside, as (B, L, C) tokens; None: x is a map
        for block in self.blocks:
            if isinstance(block, TransformerBlock):
                tokens, x = block.spec, _to_tokens(x, block.spec) if tokens is None else x
            elif tokens is not None:
                x, tokens = _to_map(x, tokens), None
            x = block(x)
        x = _to_map(x, tokens) if tokens is not None else x
        return self.classifier(self.head(x))

    def architecture_table(self, macs_by_module: dict[str, int]) -> Table:
        src, b = self.spec.source, self.spec.body
        cfg = src.get("config") or {}
        table = Table(f"{src.get('family', ARCH)} {src.get('config_id', '')}  {self.spec.img_size}px  stem "
                      f"{b.stem_width}  head {b.head_width}/{b.feature_width}  depth {cfg.get('depth', '?')}",
                      ("block", "kind", "in -> out", "map", "mid / heads", "kernel", "SE", "shortcut", "params",
                       "MMAC"))
        side = (self.spec.img_size - 1) // b.stem_stride + 1
        for i, (s, blk) in enumerate(zip(b.blocks, self.blocks)):
            macs = f"{macs_by_module.get(f'blocks.{i}', 0) / 1e6:.1f}"
            if isinstance(s, MBConvSpec):
                side = (side - 1) // s.stride + 1
                shortcut = "+".join(n for n, on in (("pool", s.shortcut_pool), ("conv", s.shortcut_conv)) if on)
                table.add_row(i, "MBConv", f"{s.c_in} -> {s.c_out}", f"{side}x{side}", s.mid, s.kernel,
                              s.se or "-", shortcut or "identity", f"{count_parameters(blk):,}", macs)
            else:
                table.add_row(i, "transformer", f"{s.dim} -> {s.dim}", f"{s.grid}x{s.grid}", f"{s.heads} x 8",
                              "3 (V)", "-", "residual", f"{count_parameters(blk):,}", macs)
        return table


ARCHS.register(ARCH, NASViT)
