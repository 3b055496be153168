"""The NASViT supernet (facebookresearch/NASViT `AttentiveNasDynamicModel`), in the official state-dict layout.

Semantics reproduced from the official code (see ../shared/reference, section 2 and 6):
* the input is resized (bicubic) to the subnet's resolution when its size differs (the official models do, and the
  official evaluation feeds 224 px crops); first conv, MBConv stages mb1..mb3, then mb4..mb7 as one MBConv and
  `depth - 1` transformer blocks, the MobileNetV3 head (1x1 expand to 6x, pool, 1x1 feature mix, Linear);
* prefix slicing of every channel axis, depth = the first blocks of a stage, kernel 3 = the centre of the 5x5,
  MBConv middle width make_divisible(round(c_in * t), 8), squeeze-excite width make_divisible(mid // 4, 8) with
  ReLU and hard-sigmoid, and the residual of every MBConv (identity, 2x2 average pool padded by one on odd maps
  with the zeros counted, and/or a 1x1 conv);
* transformer blocks: heads of 8, V 4x wide with a 3x3 depthwise conv, the relative bias cropped to the token grid,
  talking heads before and after softmax, the (tokens x channels) norm, two MLPs (mlp2 then mlp1) and the switchable
  scaling `rescale[stage depth, L % 8, :C] * 8 / C` on the attention and both MLP outputs;
* BatchNorm: training mode uses batch statistics and updates the stored slices (momentum 0.1, as the official
  `DynamicBatchNorm2d`); evaluation takes a `BatchNormMode`: the stored statistics, or statistics recalibrated for
  one subnet (cumulative average over batches, as `reset_running_stats_for_calibration` + forward), kept in a
  dict beside the supernet: the supernet's own buffers are never touched by evaluation.

`subnet_state(cfg, calib)` slices a subnet into the dense `nasvit` layout and lists the folds: BatchNorm into every
conv before it, the switchable scaling into `attn.proj` and both `linear2`, the q scale into `attn.q`, and proj_l
into the cropped relative bias (`HeadMixBias`). With no calibration given at all, the stored statistics are used.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deploy_nas.dense import nasvit as dense
from deploy_nas.dense.spec import DenseSpec
from deploy_nas.errors import CheckpointError, DataError, InvalidSubnetConfig, brief
from deploy_nas.family import FAMILIES, Calibration, SubnetState
from deploy_nas.folding import BatchNormFold, ScaleFold
from deploy_nas.kernels import nasvit as kernels
from deploy_nas.spaces import SPACES, check_config_type, load_space
from deploy_nas.spaces.nasvit import (
    FAMILY,
    HEAD_DIM,
    LIMITS,
    MB_STAGES,
    RESCALE_DEPTHS,
    RESCALE_SLOTS,
    WIDTH_STAGES,
    NASViTConfig,
    NASViTSpace,
    make_divisible,
)
from deploy_nas.supernets.checkpoint import check_state_dict, extract_state_dict, read_checkpoint

V_EXPAND = dense.V_EXPAND
BN_MOMENTUM, BN_EPS = 0.1, 1e-5  # model_factory.create_model: bn_momentum 0.1 (config has none), bn_eps 1e-5
CALIBRATION_BATCHES = 64  # misc/config.py: post_bn_calibration_batch_num
INIT_RESCALE = 1e-4  # the official initial value of rescale_attn / rescale_mlp


def swish(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)  # the official MemoryEfficientSwish, forward


# ----------------------------------------------------------------------------------------- BatchNorm modes


class BatchNormMode:
    """How an ElasticBatchNorm normalizes its (B, c, H, W) input: a strategy passed down the forward pass."""

    def __call__(self, bn: ElasticBatchNorm, x: Tensor) -> Tensor:
        raise NotImplementedError


class TrainingStats(BatchNormMode):
    """Official training: batch statistics, and the stored [:c] slices move towards them (momentum 0.1)."""

    def __call__(self, bn: ElasticBatchNorm, x: Tensor) -> Tensor:
        m, c = bn.bn, x.shape[1]
        return F.batch_norm(x, m.running_mean[:c], m.running_var[:c], m.weight[:c], m.bias[:c], True, m.momentum,
                            m.eps)


class StoredStats(BatchNormMode):
    """Evaluation with the statistics the supernet stores (a mixture over the subnets trained)."""

    def __call__(self, bn: ElasticBatchNorm, x: Tensor) -> Tensor:
        m, c = bn.bn, x.shape[1]
        return F.batch_norm(x, m.running_mean[:c], m.running_var[:c], m.weight[:c], m.bias[:c], False, 0.0, m.eps)


@dataclass
class FixedStats(BatchNormMode):
    """Evaluation with given statistics {BN name: (mean, var)} of one subnet."""

    stats: dict[str, tuple[Tensor, Tensor]]

    def __call__(self, bn: ElasticBatchNorm, x: Tensor) -> Tensor:
        mean, var = self.stats[bn.key]
        m, c = bn.bn, x.shape[1]
        assert mean.numel() == c, f"statistics of {bn.key} have {mean.numel()} channels, the input {c}"
        return F.batch_norm(x, mean, var, m.weight[:c], m.bias[:c], False, 0.0, m.eps)


class Recalibration(BatchNormMode):
    """The official recalibration: statistics reset, momentum None (cumulative average over the batches seen),
    each batch normalized with its own statistics. Accumulates into fresh tensors, never the supernet's buffers."""

    def __init__(self) -> None:
        self.running: dict[str, list[Any]] = {}

    def __call__(self, bn: ElasticBatchNorm, x: Tensor) -> Tensor:
        m, c = bn.bn, x.shape[1]
        entry = self.running.setdefault(bn.key, [torch.zeros(c, device=x.device), torch.ones(c, device=x.device), 0])
        entry[2] += 1
        return F.batch_norm(x, entry[0], entry[1], m.weight[:c], m.bias[:c], True, 1.0 / entry[2], m.eps)

    def statistics(self) -> dict[str, tuple[Tensor, Tensor]]:
        return {k: (mean, var) for k, (mean, var, _) in self.running.items()}


STORED, TRAINING = StoredStats(), TrainingStats()


# ------------------------------------------------------------------------------------ elastic building blocks


class ElasticBatchNorm(nn.Module):
    """`DynamicBatchNorm2d`: the shared BN (`bn`) plus two unused affine-free `bn_tracking` BNs (checkpoint keys)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.bn_tracking = nn.ModuleList(nn.BatchNorm2d(channels, affine=False) for _ in range(2))
        self.key = ""  # this module's name in the supernet, set by the supernet (the statistics' key)

    def forward(self, x: Tensor, mode: BatchNormMode) -> Tensor:
        return mode(self, x)

    def sliced(self, c: int, stats: dict[str, tuple[Tensor, Tensor]] | None, prefix: str) -> dict[str, Tensor]:
        """weight, bias, running_mean, running_var of the first c channels (the stored or the given statistics)."""
        mean, var = stats[self.key] if stats is not None else (self.bn.running_mean[:c], self.bn.running_var[:c])
        return {f"{prefix}.weight": self.bn.weight[:c], f"{prefix}.bias": self.bn.bias[:c],
                f"{prefix}.running_mean": mean, f"{prefix}.running_var": var}


class ElasticConv(nn.Module):
    """`DynamicPointConv2d` / `DynamicSeparableConv2d`: `conv` holds the largest kernel; depthwise when
    `depthwise`; a smaller kernel is the centre crop (no transform matrices: KERNEL_TRANSFORM_MODE is None)."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, depthwise: bool = False):
        super().__init__()
        self.stride, self.depthwise = stride, depthwise
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, groups=c_out if depthwise else 1, bias=False)

    def weight_for(self, c_out: int, c_in: int, kernel: int | None = None) -> Tensor:
        w = self.conv.weight
        k = kernel or w.shape[-1]
        start = (w.shape[-1] - k) // 2
        return w[:c_out, :1 if self.depthwise else c_in, start:start + k, start:start + k]

    def forward(self, x: Tensor, c_out: int, kernel: int | None = None) -> Tensor:
        c_in = x.shape[1]
        c_out = c_in if self.depthwise else c_out
        w = self.weight_for(c_out, c_in, kernel)
        return F.conv2d(x, w, None, self.stride, w.shape[-1] // 2, 1, c_in if self.depthwise else 1)


class ElasticLinear(nn.Module):
    """`DynamicLinear`: weight[:out, :in], bias[:out]."""

    def __init__(self, c_in: int, c_out: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(c_in, c_out, bias=bias)

    def sliced(self, c_out: int, c_in: int, prefix: str) -> dict[str, Tensor]:
        out = {f"{prefix}.weight": self.linear.weight[:c_out, :c_in]}
        if self.linear.bias is not None:
            out[f"{prefix}.bias"] = self.linear.bias[:c_out]
        return out

    def forward(self, x: Tensor, c_out: int) -> Tensor:
        bias = self.linear.bias[:c_out] if self.linear.bias is not None else None
        return F.linear(x, self.linear.weight[:c_out, :x.shape[-1]], bias)


class ConvBN(nn.Module):
    """conv (+ BN) (+ swish): the official `DynamicConvBnActLayer` and the Sequentials inside an MBConv."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, depthwise: bool = False,
                 bn: bool = True):
        super().__init__()
        self.conv = ElasticConv(c_in, c_out, kernel, stride, depthwise)
        self.bn = ElasticBatchNorm(c_out) if bn else None

    def forward(self, x: Tensor, c_out: int, mode: BatchNormMode, kernel: int | None = None, act: bool = True
                ) -> Tensor:
        x = self.conv(x, c_out, kernel)
        x = self.bn(x, mode) if self.bn is not None else x
        return swish(x) if act else x


class SqueezeExcite(nn.Module):
    """`DynamicSE`: mid = make_divisible(c // 4, 8); mean, 1x1 conv, ReLU, 1x1 conv, relu6(x + 3) / 6, scale."""

    def __init__(self, channels: int):
        super().__init__()
        mid = make_divisible(channels // 4)
        self.fc = nn.ModuleDict({"reduce": nn.Conv2d(channels, mid, 1), "expand": nn.Conv2d(mid, channels, 1)})

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        mid = make_divisible(c // 4)
        reduce, expand = self.fc["reduce"], self.fc["expand"]
        y = x.mean(3, keepdim=True).mean(2, keepdim=True)  # (B, c, 1, 1)
        y = F.relu(F.conv2d(y, reduce.weight[:mid, :c], reduce.bias[:mid]))
        y = F.conv2d(y, expand.weight[:c, :mid], expand.bias[:c])
        return x * (F.relu6(y + 3.0) / 6.0)


# ----------------------------------------------------------------------------------------------------- MBConv


@dataclass(frozen=True)
class MBChoice:
    """What one MBConv runs: widths, kernel and expand ratio; `mid`/`se` follow from them."""

    c_in: int
    c_out: int
    kernel: int
    mid: int
    se: int


class MBConvLayer(nn.Module):
    """`DynamicMBConvLayer` (module `mobile_inverted_conv`)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, expand: tuple[int, ...], stride: int, se: bool):
        super().__init__()
        widest = round(c_in * max(expand))
        self.inverted_bottleneck = ConvBN(c_in, widest) if max(expand) > 1 else None
        self.depth_conv = ConvBN(widest, widest, kernel, stride, depthwise=True)
        if se:
            self.depth_conv.se = SqueezeExcite(widest)
        self.point_linear = ConvBN(widest, c_out)
        self.rescale = nn.Parameter(torch.ones(c_out), requires_grad=False)  # unused (official key)

    def forward(self, x: Tensor, ch: MBChoice, mode: BatchNormMode) -> Tensor:
        if self.inverted_bottleneck is not None:
            x = self.inverted_bottleneck(x, ch.mid, mode)  # (B, mid, H, W)
        x = self.depth_conv(x, ch.mid, mode, ch.kernel)  # (B, mid, H / s, W / s)
        if getattr(self.depth_conv, "se", None) is not None:
            x = self.depth_conv.se(x)
        return self.point_linear(x, ch.c_out, mode, act=False)


class Shortcut(nn.Module):
    """`DynamicShortcutLayer`: identity; else avg-pool 2 (padding 1 on odd maps) when strided, then a 1x1 conv
    (no BN) when the widths differ (also at stride 1)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = ElasticConv(c_in, c_out)

    def forward(self, x: Tensor, c_out: int) -> Tensor:
        c_in = x.shape[1]
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride, padding=x.shape[-1] % 2)
        return self.conv(x, c_out) if c_in != c_out else x


class MBBlock(nn.Module):
    """`MobileInvertedResidualBlock`: mobile_inverted_conv(x) + shortcut(x)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, expand: tuple[int, ...], stride: int, se: bool):
        super().__init__()
        self.mobile_inverted_conv = MBConvLayer(c_in, c_out, kernel, expand, stride, se)
        self.shortcut = Shortcut(c_in, c_out, stride)
        self.stride = stride

    def forward(self, x: Tensor, ch: MBChoice, mode: BatchNormMode) -> Tensor:
        return self.mobile_inverted_conv(x, ch, mode) + self.shortcut(x, ch.c_out)

    def dense(self, ch: MBChoice, side: int, p: str, stats: dict | None) -> tuple[dense.MBConvSpec, dict, list]:
        """The dense spec, state and BN folds of this block running `ch` on a `side` x `side` input."""
        m = self.mobile_inverted_conv
        spec = dense.MBConvSpec(ch.c_in, ch.c_out, ch.mid, ch.kernel, self.stride, m.inverted_bottleneck is not None,
                                ch.se, side % 2 if self.stride > 1 else 0)
        sd, folds = {}, []
        parts = [("expand", m.inverted_bottleneck, ch.c_in), ("dw", m.depth_conv, ch.mid),
                 ("project", m.point_linear, ch.mid)]
        for name, layer, c_in in parts:
            if layer is None:
                continue
            c_out = ch.c_out if name == "project" else ch.mid
            sd[p + name + ".weight"] = layer.conv.weight_for(c_out, c_in, ch.kernel if name == "dw" else None)
            sd.update(layer.bn.sliced(c_out, stats, p + name + "_bn"))
            folds.append(BatchNormFold(p + name, p + name + "_bn", layer.bn.bn.eps))
        if ch.se:
            se = m.depth_conv.se.fc
            sd.update({p + "se.reduce.weight": se["reduce"].weight[:ch.se, :ch.mid],
                       p + "se.reduce.bias": se["reduce"].bias[:ch.se],
                       p + "se.expand.weight": se["expand"].weight[:ch.mid, :ch.se],
                       p + "se.expand.bias": se["expand"].bias[:ch.mid]})
        if spec.shortcut_conv:
            sd[p + "shortcut.weight"] = self.shortcut.conv.weight_for(ch.c_out, ch.c_in)
        return spec, sd, folds


# ------------------------------------------------------------------------------------------------ transformer


def token_norm(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    """The official (L, C) norm: F.layer_norm over x.shape[1:] with weight/bias [:C] expanded over the tokens."""
    C = x.shape[-1]
    return F.layer_norm(x, x.shape[1:], norm.weight[:C].expand(x.shape[1:]), norm.bias[:C].expand(x.shape[1:]),
                        norm.eps)


class Attention(nn.Module):
    """`DynamicWindowAttention` with the global attention every official block runs (`shift` is hard-wired off)."""

    def __init__(self, dim: int, window: int):
        super().__init__()
        heads = dim // HEAD_DIM
        self.window, self.scale = window, HEAD_DIM ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", kernels.relative_position_index(window))
        self.q, self.k = ElasticLinear(dim, dim), ElasticLinear(dim, dim)
        self.v = ElasticLinear(dim, V_EXPAND * dim)
        self.vconv = nn.Conv2d(V_EXPAND * dim, V_EXPAND * dim, 3, padding=1, groups=V_EXPAND * dim, bias=False)
        self.proj = ElasticLinear(V_EXPAND * dim, dim)
        self.proj_l, self.proj_w = ElasticLinear(heads, heads), ElasticLinear(heads, heads)

    def forward(self, x: Tensor, grid: int) -> Tensor:
        B, L, C = x.shape
        h = C // HEAD_DIM
        q = self.q(x, C).reshape(B, L, h, HEAD_DIM).permute(0, 2, 1, 3)  # (B, h, L, 8)
        k = self.k(x, C).reshape(B, L, h, HEAD_DIM).permute(0, 2, 1, 3)
        v = self.v(x, V_EXPAND * C).permute(0, 2, 1).reshape(B, V_EXPAND * C, grid, grid)
        v = F.conv2d(v, self.vconv.weight[:V_EXPAND * C], None, 1, 1, 1, V_EXPAND * C)  # depthwise 3x3 on V
        v = v.reshape(B, -1, L).permute(0, 2, 1).reshape(B, L, h, -1).permute(0, 2, 1, 3)  # (B, h, L, 32)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, h, L, L)
        attn = attn + kernels.cropped_bias_reference(self.relative_position_bias_table, self.relative_position_index,
                                                     self.window, grid, h).unsqueeze(0)
        attn = kernels.mix_heads_reference(attn, *self._mix(self.proj_l, h)).softmax(dim=-1)
        attn = kernels.mix_heads_reference(attn, *self._mix(self.proj_w, h))
        out = (attn @ v).transpose(1, 2).reshape(B, L, -1)  # (B, L, 4C)
        return self.proj(swish(out), C)

    @staticmethod
    def _mix(layer: ElasticLinear, h: int) -> tuple[Tensor, Tensor]:
        return layer.linear.weight[:h, :h], layer.linear.bias[:h]


class Mlp(nn.Module):
    """`DynamicMlp` with hidden ratio 1: linear1, swish, linear2."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear1, self.linear2 = ElasticLinear(dim, dim), ElasticLinear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        C = x.shape[-1]
        return self.linear2(swish(self.linear1(x, C)), C)


class TransformerBlock(nn.Module):
    """`DynamicSwinTransformerBlock`: (B, C, H, W) in and out, tokens (B, L, C) inside."""

    def __init__(self, dim: int, window: int):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, window)
        self.mlp1, self.mlp2 = Mlp(dim), Mlp(dim)
        self.rescale_mlp = nn.Parameter(torch.full((RESCALE_DEPTHS, RESCALE_SLOTS, dim), INIT_RESCALE))
        self.rescale_attn = nn.Parameter(torch.full((RESCALE_DEPTHS, RESCALE_SLOTS, dim), INIT_RESCALE))

    def scales(self, depth: int, tokens: int, C: int) -> tuple[Tensor, Tensor]:
        """The switchable scaling of a block in a stage of `depth` blocks on `tokens` tokens: (attn, mlp), (C,)."""
        slot, n = tokens % RESCALE_SLOTS, self.rescale_mlp.shape[1]
        return self.rescale_attn[depth, slot, :C] * n / C, self.rescale_mlp[depth, slot, :C] * n / C

    def forward(self, x: Tensor, depth: int) -> Tensor:
        B, C, H, W = x.shape
        t = x.permute(0, 2, 3, 1).reshape(B, H * W, C)  # (B, L, C)
        slot, n = (H * W) % RESCALE_SLOTS, self.rescale_mlp.shape[1]
        t = t + self.attn(token_norm(t, self.norm1), H) * self.rescale_attn[depth, slot, :C] * n / C
        t = t + self.mlp2(token_norm(t, self.norm3)) * self.rescale_mlp[depth, slot, :C] * n / C
        t = t + self.mlp1(token_norm(t, self.norm2)) * self.rescale_mlp[depth, slot, :C] * n / C
        return t.reshape(B, H, W, C).permute(0, 3, 1, 2)

    def dense(self, C: int, grid: int, depth: int, p: str) -> tuple[dense.TransformerSpec, dict, list]:
        """The dense spec, state and folds (q scale, switchable scaling, proj_l into the cropped bias)."""
        h, a = C // HEAD_DIM, self.attn
        sd = {p + f"norm{i}.{n}": getattr(getattr(self, f"norm{i}"), n)[:C] for i in (1, 2, 3)
              for n in ("weight", "bias")}
        for name, layer, (c_out, c_in) in (("q", a.q, (C, C)), ("k", a.k, (C, C)), ("v", a.v, (V_EXPAND * C, C)),
                                           ("proj", a.proj, (C, V_EXPAND * C)), ("proj_w", a.proj_w, (h, h)),
                                           ("proj_l", a.proj_l, (h, h))):
            sd.update(layer.sliced(c_out, c_in, p + "attn." + name))
        sd[p + "attn.vconv.weight"] = a.vconv.weight[:V_EXPAND * C]
        sd[p + "attn.rel_bias"] = kernels.cropped_bias(a.relative_position_bias_table, a.window, grid, h)
        for mlp in ("mlp1", "mlp2"):
            for i in (1, 2):
                sd.update(getattr(getattr(self, mlp), f"linear{i}").sliced(C, C, f"{p}{mlp}.fc{i}"))
        s_attn, s_mlp = (s.detach().clone() for s in self.scales(depth, grid * grid, C))
        folds = [ScaleFold(p + "attn.q", torch.full((C,), a.scale)), ScaleFold(p + "attn.proj", s_attn),
                 ScaleFold(p + "mlp1.fc2", s_mlp), ScaleFold(p + "mlp2.fc2", s_mlp), HeadMixBias(p + "attn")]
        return dense.TransformerSpec(C, grid), sd, folds


@dataclass(frozen=True)
class HeadMixBias:
    """Talking heads before softmax are linear: proj_l(logits + B) = proj_l(logits) + (W_l B + b_l). The cropped
    relative bias `rel_bias` (heads, L, L) and proj_l's bias become one (heads, L, L) weight `bias` (in float64)."""

    layer: str

    def apply(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {k: v for k, v in state.items() if k not in (f"{self.layer}.rel_bias", f"{self.layer}.proj_l.bias")}
        w = state[f"{self.layer}.proj_l.weight"].double().flatten(1)  # (h, h)
        rel, b = state[f"{self.layer}.rel_bias"].double(), state[f"{self.layer}.proj_l.bias"].double()
        mixed = torch.einsum("gh,hnm->gnm", w, rel) + b[:, None, None]
        out[f"{self.layer}.bias"] = mixed.to(state[f"{self.layer}.rel_bias"].dtype).contiguous()
        return out


# ------------------------------------------------------------------------------------------------- the head


class FeatureMix(nn.Module):
    """`feature_mix_layer`: 1x1 conv, no BN, no bias, swish."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = ElasticConv(c_in, c_out)


class LastConv(nn.Module):
    """The v3 head `last_conv`: final_expand_layer (1x1 + BN + swish), pool, feature_mix_layer (1x1 + swish)."""

    def __init__(self, c_in: int, expand: int, c_out: int):
        super().__init__()
        self.final_expand_layer = ConvBN(c_in, expand)
        self.feature_mix_layer = FeatureMix(expand, c_out)

    def forward(self, x: Tensor, expand: int, c_out: int, mode: BatchNormMode) -> Tensor:
        x = self.final_expand_layer(x, expand, mode)
        x = x.mean(dim=(2, 3), keepdim=True)  # AdaptiveAvgPool2d(1): (B, expand, 1, 1)
        return swish(self.feature_mix_layer.conv(x, c_out)).flatten(1)  # flatten, not the official squeeze


class Classifier(nn.Module):
    """`DynamicLinearLayer`: classifier.linear.linear."""

    def __init__(self, c_in: int, classes: int):
        super().__init__()
        self.linear = ElasticLinear(c_in, classes)


# ------------------------------------------------------------------------------------------------ supernet


@dataclass(frozen=True)
class Slot:
    """One block position: stage (0 = mb1), index inside the stage, transformer or MBConv."""

    stage: int
    index: int
    transformer: bool


@dataclass(frozen=True)
class Active:
    """One block a config runs: its index in the supernet, its slot, the MBConv choice (None: transformer), and
    the sides of its input and output maps."""

    block: int
    slot: Slot
    mb: MBChoice | None
    side_in: int
    side_out: int


def slots_of(space: NASViTSpace) -> list[Slot]:
    """Every block position of the supernet of `space`, in the official order (block_group_info)."""
    return [Slot(i, j, space.transformer[i] and j > 0) for i in range(len(MB_STAGES))
            for j in range(max(space.depth[i]))]


def active_blocks(space: NASViTSpace, slots: list[Slot], cfg: NASViTConfig) -> list[Active]:
    """The blocks `cfg` runs (the first `depth` of each stage) with their widths and map sides."""
    out, side, c_in = [], (cfg.resolution - 1) // space.stride[0] + 1, cfg.width[0]
    for b, slot in enumerate(slots):
        i = slot.stage
        if slot.index >= cfg.depth[i]:
            continue
        if slot.transformer:
            out.append(Active(b, slot, None, side, side))
            continue
        stride = space.stride[i + 1] if slot.index == 0 else 1
        mid = space.middle(c_in, cfg.expand_ratio[i], i)
        se = make_divisible(mid // 4) if space.se[i] else 0
        choice = MBChoice(c_in, cfg.width[i + 1], cfg.kernel_size[i], mid, se)
        out.append(Active(b, slot, choice, side, (side - 1) // stride + 1))
        side, c_in = out[-1].side_out, cfg.width[i + 1]
    return out


class NASViTSupernet(nn.Module):
    family = FAMILY

    def __init__(self, space: NASViTSpace):
        super().__init__()
        self.space = s = space
        w = [max(c) for c in s.width]
        self.first_conv = ConvBN(s.in_chans, w[0], 3, s.stride[0])
        self.slots = slots_of(s)
        self.blocks = nn.ModuleList(
            TransformerBlock(w[t.stage + 1], s.window) if t.transformer else
            MBBlock(w[t.stage] if t.index == 0 else w[t.stage + 1], w[t.stage + 1], max(s.kernel_size[t.stage]),
                    s.expand_ratio[t.stage], s.stride[t.stage + 1] if t.index == 0 else 1, s.se[t.stage])
            for t in self.slots)
        self.last_conv = LastConv(w[-2], s.head_expand * w[-2], w[-1])
        self.classifier = Classifier(w[-1], s.num_classes)
        for name, m in self.named_modules():
            if isinstance(m, ElasticBatchNorm):
                m.key = name
        with torch.no_grad():  # the official model calls no init of its own beyond these two
            for block in self.blocks:
                if isinstance(block, MBBlock):  # zero_residual_block_bn_weights
                    block.mobile_inverted_conv.point_linear.bn.bn.weight.zero_()

    # --- configs ------------------------------------------------------------------------------------------------
    def check_config(self, cfg: Any) -> NASViTConfig:
        """`cfg` if it fits inside this supernet (widths, depths, kernels, middle widths, token grids); else
        InvalidSubnetConfig naming the first entry that does not."""
        check_config_type(cfg, FAMILY, f"the {FAMILY} supernet")
        problem = next(self._misfits(cfg), None)
        if problem:
            raise InvalidSubnetConfig(f"{problem}; this supernet holds the choices of space {self.space.name!r}")
        return cfg

    def _misfits(self, cfg: NASViTConfig) -> Iterator[str]:
        s = self.space
        for i, (v, allowed) in enumerate(zip(cfg.width, s.width)):
            if not 1 <= v <= max(allowed):
                yield f"width[{i}] ({WIDTH_STAGES[i]}) = {v} does not fit (1..{max(allowed)})"
        for i, name in enumerate(MB_STAGES):
            d, k, t, c = cfg.depth[i], cfg.kernel_size[i], cfg.expand_ratio[i], cfg.width[i + 1]
            if not 1 <= d <= max(s.depth[i]):
                yield f"depth[{i}] ({name}) = {d} does not fit (1..{max(s.depth[i])})"
            if k % 2 == 0 or not 1 <= k <= max(s.kernel_size[i]):
                yield f"kernel_size[{i}] ({name}) = {k} is not an odd size up to {max(s.kernel_size[i])}"
            if not 1 <= t <= LIMITS["expand_ratio"] or any(
                    s.middle(c_in, t, i) > round(max(ws) * max(s.expand_ratio[i]))
                    for c_in, ws in ((cfg.width[i], s.width[i]), (c, s.width[i + 1]))):
                yield f"expand_ratio[{i}] ({name}) = {t} gives a middle width the supernet does not hold"
            if s.se[i] and any(make_divisible(s.middle(c_in, t, i) // 4) > make_divisible(
                    round(max(ws) * max(s.expand_ratio[i])) // 4) for c_in, ws in ((cfg.width[i], s.width[i]),
                                                                       (c, s.width[i + 1]))):
                yield f"width[{i + 1}] ({name}) = {c} gives a squeeze-excite width the supernet does not hold"
            if s.transformer[i] and c % HEAD_DIM:
                yield f"width[{i + 1}] ({name}) = {c} is not a multiple of the head dim {HEAD_DIM}"
        if not 1 <= cfg.resolution <= LIMITS["resolution"]:
            yield f"resolution = {cfg.resolution} is not in 1..{LIMITS['resolution']}"
        elif any(s.grid(cfg.resolution, i) > s.window for i in range(7) if s.transformer[i]):
            yield f"resolution = {cfg.resolution} gives token grids larger than the {s.window} x {s.window} window"

    def choices(self, cfg: NASViTConfig) -> list[Active]:
        """The active blocks of `cfg`, in order."""
        return active_blocks(self.space, self.slots, cfg)

    # --- forward --------------------------------------------------------------------------------------------------
    def forward(self, x: Tensor, cfg: NASViTConfig, bn: BatchNormMode | None = None) -> Tensor:
        """Logits of `cfg`. `bn`: how BatchNorm normalizes (default: the official training behaviour in training
        mode, the stored statistics in eval mode)."""
        cfg = self.check_config(cfg)
        mode = bn or (TRAINING if self.training else STORED)
        if x.shape[-1] != cfg.resolution:
            x = F.interpolate(x, size=cfg.resolution, mode="bicubic")
        x = self.first_conv(x, cfg.width[0], mode)
        for a in self.choices(cfg):
            block = self.blocks[a.block]
            x = block(x, cfg.depth[a.slot.stage]) if a.mb is None else block(x, a.mb, mode)
        x = self.last_conv(x, self.space.head_expand * cfg.width[-2], cfg.width[-1], mode)
        return self.classifier.linear(x, self.space.num_classes)

    # --- BatchNorm statistics ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def recalibrate(self, cfg: NASViTConfig, calib: Calibration) -> dict[str, tuple[Tensor, Tensor]]:
        """Statistics of `cfg` from the calibration images (official: reset, momentum None, forward the batches)."""
        batches = calibration_batches(calib, self.space)
        recal = Recalibration()
        device = next(self.parameters()).device
        for images in batches:
            self(torch.as_tensor(images, dtype=torch.float32, device=device), cfg, bn=recal)
        return recal.statistics()

    def statistics(self, cfg: NASViTConfig, calib: Any) -> dict[str, tuple[Tensor, Tensor]] | None:
        """The statistics `calib` asks for: recalibrated ones, or None for the stored ones (no calibration given
        at all means the stored ones)."""
        if calib is None:
            return None
        if getattr(calib, "mode", None) not in ("recalibrate", "stored"):
            raise InvalidSubnetConfig(f"BatchNorm calibration mode {brief(getattr(calib, 'mode', calib))}; "
                                      "choose recalibrate or stored")
        return self.recalibrate(cfg, calib) if calib.mode == "recalibrate" else None

    def fixed(self, cfg: Any, calib: Any = None) -> nn.Module:
        """The eval module of `cfg`: its BN statistics recalibrated into a dict beside the supernet (`calib` in
        mode "recalibrate"), or the stored ones (mode "stored", or no calibration given)."""
        cfg = self.check_config(cfg)
        stats = self.statistics(cfg, calib)
        return NASViTFixed(self, cfg, FixedStats(stats) if stats is not None else STORED).eval()

    # --- materialization -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def subnet_state(self, cfg: Any, calib: Any = None) -> SubnetState:
        """The dense `nasvit` spec, the sliced weights (fresh tensors) and the folds of `cfg`."""
        cfg = self.check_config(cfg)
        stats = self.statistics(cfg, calib)
        s, fc = self.space, self.first_conv
        sd = {"stem.weight": fc.conv.weight_for(cfg.width[0], s.in_chans), **fc.bn.sliced(cfg.width[0], stats,
                                                                                           "stem_bn")}
        folds: list[Any] = [BatchNormFold("stem", "stem_bn", fc.bn.bn.eps)]
        blocks = []
        for n, a in enumerate(self.choices(cfg)):
            block, p = self.blocks[a.block], f"blocks.{n}."
            if a.mb is None:
                spec, state, more = block.dense(cfg.width[a.slot.stage + 1], a.side_out, cfg.depth[a.slot.stage], p)
            else:
                spec, state, more = block.dense(a.mb, a.side_in, p, stats)
            blocks.append(spec)
            sd.update(state)
            folds += more
        sd.update(self._head_state(cfg, stats))
        folds.append(BatchNormFold("head.expand", "head.expand_bn", self.last_conv.final_expand_layer.bn.bn.eps))
        spec = self.dense_spec(cfg, tuple(blocks), calib)
        return SubnetState(spec, {k: v.detach().clone().contiguous() for k, v in sd.items()}, tuple(folds))

    def _head_state(self, cfg: NASViTConfig, stats: dict | None) -> dict[str, Tensor]:
        expand, last = self.space.head_expand * cfg.width[-2], cfg.width[-1]
        fe, mix, cls = self.last_conv.final_expand_layer, self.last_conv.feature_mix_layer, self.classifier.linear
        return {"head.expand.weight": fe.conv.weight_for(expand, cfg.width[-2]),
                **fe.bn.sliced(expand, stats, "head.expand_bn"),
                "head.mix.weight": mix.conv.weight_for(last, expand),
                **cls.sliced(self.space.num_classes, last, "classifier")}

    def dense_spec(self, cfg: NASViTConfig, blocks: tuple, calib: Any = None) -> DenseSpec:
        s = self.space
        body = dense.NASViTSpec(stem_width=cfg.width[0], stem_stride=s.stride[0], blocks=blocks,
                                head_width=s.head_expand * cfg.width[-2], feature_width=cfg.width[-1], norm_eps=1e-5)
        return DenseSpec(dense.ARCH, cfg.resolution, s.in_chans, s.num_classes, body, source={
            "family": FAMILY, "config": cfg.to_dict(), "config_id": cfg.id, "space": s.name,
            "bn": _provenance(calib)})

    # --- the rest of the protocol ------------------------------------------------------------------------------------
    def param_count(self, cfg: Any) -> int:
        return param_count(self.space, self.check_config(cfg))

    def macs(self, cfg: Any) -> int:
        return macs(self.space, self.check_config(cfg))

    def no_weight_decay(self) -> set[str]:
        """The official optimizer's exclusions: 1-d tensors, biases, BN parameters and the rescale tables."""
        return {n for n, p in self.named_parameters()
                if p.dim() == 1 or n.endswith(".bias") or "rescale" in n or ".bn." in f".{n}"}

    def meta(self) -> dict[str, Any]:
        return {"family": FAMILY, "arch": self.space.to_dict()}


def calibration_batches(calib: Calibration, space: NASViTSpace) -> list[Any]:
    """The image batches of a recalibration, checked; a trailing batch of one image joins the one before (batch
    statistics of a single image on a 1x1 map do not exist)."""
    images = calib.images
    needed = (f"NASViT recalibrates BatchNorm per subnet on training images: the official evaluation uses "
              f"{CALIBRATION_BATCHES} batches (post_bn_calibration_batch_num), i.e. {CALIBRATION_BATCHES} x "
              f"{calib.batch_size} = {CALIBRATION_BATCHES * calib.batch_size:,} images at batch {calib.batch_size}")
    if images is None or len(images) == 0:
        raise DataError(f"no calibration images: {needed}. Pass --calib-data DIR (an image folder), or --bn stored "
                        "to fold the statistics the checkpoint stores")
    shape = tuple(getattr(images, "shape", ()))
    if len(shape) != 4 or shape[1] != space.in_chans or len(images) < 2:
        raise DataError(f"calibration images of shape {brief(shape)}; expected (N >= 2, {space.in_chans}, H, W). "
                        f"{needed}")
    batches = calib.batches()
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches = batches[:-2] + [np.concatenate(batches[-2:])]
    return batches


def _provenance(calib: Any) -> str:
    if calib is None or calib.mode == "stored":
        return "stored" if calib is not None else "stored (no calibration given)"
    n = len(calib.images)
    return f"recalibrated on {n} images in {math.ceil(n / calib.batch_size)} batches of {calib.batch_size}"


class NASViTFixed(nn.Module):
    """`supernet` running one config with fixed BatchNorm statistics: x -> logits (always the eval semantics)."""

    def __init__(self, supernet: NASViTSupernet, cfg: NASViTConfig, mode: BatchNormMode):
        super().__init__()
        self.supernet, self.cfg, self.mode = supernet, cfg, mode

    def forward(self, x: Tensor) -> Tensor:
        return self.supernet(x, self.cfg, bn=self.mode)


# ------------------------------------------------------------------------------------------ counting


def macs(space: NASViTSpace, cfg: NASViTConfig) -> int:
    """Multiply-accumulates at batch 1 as the official count plus its per-transformer-block formula: convs (the
    squeeze-excite convs, the shortcut convs), linears and the attention matmuls; pooling, norms and elementwise
    ops count 0."""
    stem_side = (cfg.resolution - 1) // space.stride[0] + 1
    total = space.in_chans * cfg.width[0] * 9 * stem_side ** 2
    blocks = active_blocks(space, slots_of(space), cfg)
    for a in blocks:
        if a.mb is None:
            total += transformer_macs(cfg.width[a.slot.stage + 1], a.side_out)
            continue
        ch, side = a.mb, a.side_out
        expand = ch.c_in * ch.mid * a.side_in ** 2 if max(space.expand_ratio[a.slot.stage]) > 1 else 0
        total += expand + ch.mid * ch.kernel ** 2 * side ** 2 + 2 * ch.mid * ch.se + ch.mid * ch.c_out * side ** 2
        total += ch.c_in * ch.c_out * side ** 2 if ch.c_in != ch.c_out else 0
    expand = space.head_expand * cfg.width[-2]
    return total + cfg.width[-2] * expand * blocks[-1].side_out ** 2 + expand * cfg.width[-1] + \
        cfg.width[-1] * space.num_classes


def transformer_macs(C: int, side: int, maps_only: bool = False) -> int:
    """One transformer block on a side x side grid (the official formula in `validate`): q, k, v, proj and the two
    MLPs (14 L C^2), q k^T and attn v (5 L^2 C), the 3x3 conv on V (36 L C), both talking-heads mixes (2 h^2 L^2)."""
    L, h = side * side, C // HEAD_DIM
    maps = 5 * L * L * C + 2 * h * h * L * L
    return maps if maps_only else 14 * L * C * C + 9 * V_EXPAND * C * L + maps


def param_count(space: NASViTSpace, cfg: NASViTConfig) -> int:
    """Parameters the subnet uses, as the official static subnet holds them once the tensors it allocates but never
    uses are left out (identity shortcut convs, the unsliced transformer modules): conv weights with their BN's
    weight and bias, squeeze-excite and shortcut convs; per transformer block q, k, v, proj, proj_l, proj_w with
    their biases, the V conv, three norms, two MLPs and the relative-bias rows its token grid uses ((2G - 1)^2 x
    heads); the head and the classifier. The switchable scales are not counted: they live in the weights."""
    total = space.in_chans * cfg.width[0] * 9 + 2 * cfg.width[0]
    for a in active_blocks(space, slots_of(space), cfg):
        ch = a.mb
        if ch is None:
            C = cfg.width[a.slot.stage + 1]
            total += transformer_params(C, a.side_out)
            continue
        if max(space.expand_ratio[a.slot.stage]) > 1:
            total += ch.c_in * ch.mid + 2 * ch.mid
        total += ch.mid * ch.kernel ** 2 + 2 * ch.mid + ch.mid * ch.c_out + 2 * ch.c_out
        total += 2 * ch.mid * ch.se + ch.se + ch.mid if ch.se else 0
        total += ch.c_in * ch.c_out if ch.c_in != ch.c_out else 0
    expand = space.head_expand * cfg.width[-2]
    return total + cfg.width[-2] * expand + 2 * expand + expand * cfg.width[-1] + (cfg.width[-1] + 1) * \
        space.num_classes


def transformer_params(C: int, side: int) -> int:
    h = C // HEAD_DIM
    qk, v, proj, heads = 2 * (C * C + C), V_EXPAND * C * C + V_EXPAND * C, V_EXPAND * C * C + C, 2 * (h * h + h)
    return qk + v + proj + heads + 9 * V_EXPAND * C + 3 * 2 * C + 2 * 2 * (C * C + C) + (2 * side - 1) ** 2 * h


# ------------------------------------------------------------------------------------ the official checkpoint


@dataclass(frozen=True)
class NASViTImportOptions:
    """What an official checkpoint cannot tell: the space it was trained in (a registered name or a space file;
    default: the registered space whose supernet has exactly the checkpoint's keys and shapes), and which weights to
    take from a training checkpoint (`ema`: `model_ema` as the official loader does; false: `model`)."""

    space: str | None = None
    ema: bool = True


def state_dict_of(obj: Any, ema: bool, source: str) -> dict[str, Tensor]:
    """The weights inside an official checkpoint: `model_ema` (the official `load_checkpoint` replaces `model`
    by it), or `model`, or the legacy `state_dict` with `module.` prefixes, or a bare state dict."""
    if isinstance(obj, dict) and ema and isinstance(obj.get("model_ema"), dict):
        obj = obj["model_ema"]
    return extract_state_dict(obj, source)


def space_for(sd: dict[str, Tensor], named: str | None) -> NASViTSpace:
    """The space given by name/file, else the registered NASViT space whose supernet has the checkpoint's keys and
    shapes (the closest one when none matches exactly, so that the mismatch is reported key by key)."""
    if named is not None:
        space = load_space(named, FAMILY)
        if not isinstance(space, NASViTSpace):
            raise CheckpointError(f"space {brief(named)} is not a NASViT space")
        return space
    candidates = [SPACES.get(n) for n in SPACES.names() if SPACES.get(n).family == FAMILY]
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    return max(candidates, key=lambda s: _agreement(expected_shapes(s), shapes))


def expected_shapes(space: NASViTSpace) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of the supernet of `space` (built on the meta device: no memory, no init)."""
    with torch.device("meta"):
        model = NASViTSupernet(space)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _agreement(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> tuple[int, int]:
    same = sum(1 for k, v in found.items() if expected.get(k) == v)
    return same, -abs(len(expected) - len(found))


class NASViTFamily:
    name = FAMILY
    config_type = NASViTConfig
    space_type = NASViTSpace
    import_options = NASViTImportOptions
    train_rule = "sandwich"
    tiny_space = "nasvit-tiny"
    default_space = "nasvit-tiny"
    batchnorm = True  # subnets recalibrate BatchNorm on --calib-data (--bn) before it is folded
    # The official recipe where TrainConfig has a knob (configs/cfg.yaml + misc/config.py): AdamW at 3e-4 (the base
    # lr for a batch of 512; the tiny space trains at batch 64 with it unscaled), no weight decay, gradient clipping
    # at 1.0, gradient projection (after 100 of 400 epochs officially: from a quarter of the run), label smoothing
    # 0.1, and of the weak augmentation (RandAugment n1 m1, mixup/cutmix/erasing 0.01) the one TrainConfig offers: a
    # random shift of 1 pixel. The teachers and the alpha-divergence loss are replaced by TrainConfig's in-place
    # distillation from the max subnet.
    train_defaults = {"lr": 3e-4, "min_lr": 1e-6, "weight_decay": 0.0, "clip_grad": 1.0, "grad_projection": True,
                      "projection_from_epoch": 0, "label_smoothing": 0.1, "shift": 1, "warmup_epochs": 1.0}
    # The dense model differs from the supernet only by the order of fp32 sums: BN folded in float64 then rounded,
    # q scale and switchable scaling moved into weights, proj_l applied to the bias once. Over ~20 stacked MBConv and
    # transformer blocks (softmax over up to 324 tokens) this reaches a few 1e-6 on O(1) logits, so 1e-5 would leave
    # no margin; 1e-4 is the bound.
    exactness_atol = 1e-4

    def config_from_dict(self, obj: Any) -> NASViTConfig:
        return NASViTConfig.from_dict(obj)

    def space_from_dict(self, obj: Any, name: str | None = None) -> NASViTSpace:
        return NASViTSpace.from_dict(obj, name=name)

    def claims(self, state_dict: dict[str, Tensor]) -> bool:
        """An official NASViT state dict (the first conv and the MBConv/transformer key names)."""
        return "first_conv.conv.conv.weight" in state_dict and any(
            k.endswith("attn.relative_position_bias_table") or ".mobile_inverted_conv." in k for k in state_dict)

    def from_checkpoint(self, obj: Any, options: NASViTImportOptions, source: str = "checkpoint"
                        ) -> tuple[NASViTSupernet, NASViTSpace]:
        sd = state_dict_of(obj, options.ema, source)
        if not self.claims(sd):
            raise CheckpointError(f"{source} is not a NASViT checkpoint: it lacks first_conv.conv.conv.weight and "
                                  "the MBConv / transformer keys (found e.g. "
                                  f"{', '.join(brief(k, 50) for k in list(sd)[:3])}); pass the right --family")
        space = space_for(sd, options.space)
        model = NASViTSupernet(space)
        for key, value in model.state_dict().items():  # the official loader keeps the model's own index
            if key.endswith("relative_position_index") and key in sd:
                sd[key] = value
        check_state_dict(model, sd, FAMILY, f"the checkpoint does not have the layout of space {space.name!r}; pass "
                                            "--import-option space=NAME|FILE for the space it was trained in")
        model.load_state_dict(sd, strict=True)
        return model.eval(), space

    def load_official(self, path: Any, options: NASViTImportOptions) -> tuple[NASViTSupernet, NASViTSpace]:
        """An official training checkpoint (`ckpt.pth`: model, model_ema, ...), or a bare state dict/safetensors."""
        return self.from_checkpoint(read_checkpoint(path), options, str(path))

    def build_supernet(self, space: NASViTSpace, seed: int | None = 0) -> NASViTSupernet:
        """The official initialisation (PyTorch's defaults, the truncated-normal bias tables, zero last BN of every
        MBConv, rescale 1e-4), drawn from `seed` without touching the global random state."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed or 0)
            return NASViTSupernet(space).eval()

    def supernet_from_meta(self, meta: dict[str, Any]) -> NASViTSupernet:
        return NASViTSupernet(NASViTSpace.from_dict(meta["arch"]))

    def cost_features(self, space: NASViTSpace, cfg: NASViTConfig) -> dict[str, float]:
        """Per-image MACs (millions) of the convs and of the transformer GEMMs and attention maps, and counts."""
        blocks = active_blocks(space, slots_of(space), cfg)
        attn_map = sum(transformer_macs(cfg.width[a.slot.stage + 1], a.side_out, maps_only=True)
                       for a in blocks if a.mb is None)
        return {"const": 1.0, "macs": macs(space, cfg) / 1e6, "attn_map": attn_map / 1e6,
                "blocks": float(len(blocks)), "transformer_blocks": float(sum(a.mb is None for a in blocks))}

    def tolerances(self) -> dict:
        return {}


FAMILIES.register(FAMILY, NASViTFamily())
