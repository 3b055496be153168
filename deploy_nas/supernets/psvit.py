"""The PSViT supernet (Chen et al., arXiv 2108.03428): stages of cells with three paths each, token pooling between
stages, weight sharing across the widths a space allows, trained single-path one-shot (`train/spos.py`).

PSViT has no public code or checkpoint: this module is the reference, and its state-dict layout is the family's
"official" one. Choices the article leaves open (see docs/psvit.md for the reasons):
* every path of a cell has weights of its own (SPOS): `cells.<c>.layer` (one layer), `cells.<c>.shared.0` (a layer)
  and `cells.<c>.shared.1` (the layer reusing `shared.0`'s map: norms, `attn.v`, `attn.proj` and the MLP, no q/k);
* the shared map is the post-softmax attention A = softmax(q k^T / sqrt(d)), per head; the consumer computes A v'
  with its own v' (from its own input), then its own projection;
* widths are prefix slices of the stage's widest choice (q, k, v, proj, MLP, norms, pooling convolution); the head
  dim is fixed by the space, so the head count is width / head_dim;
* pooling: 1D a pointwise Conv1d (kernel 1) on every token, CLS included, then MaxPool1d (kernel = stride) on the
  patch tokens; 2D a 3x3 Conv2d, padding 1, the stride that gives the config's token count; no norm around it;
* a learned position embedding at the input only (over CLS + patches in 1D); pre-norm layers, LayerNorm eps 1e-6,
  exact (erf) GELU, MLP width int(width * mlp_ratio); head: final norm, then CLS (1D) or the token mean (2D);
* initialisation as timm's DeiT: truncated normal (std .02) for linear weights, CLS and position, zero biases, unit
  norms, and PyTorch's default for the convolutions (patch embedding, pooling).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deploy_nas.dense import psvit as dense
from deploy_nas.dense.layers import merge_heads, split_heads
from deploy_nas.dense.spec import DenseSpec
from deploy_nas.errors import CheckpointError, InvalidSubnetConfig, brief, check_params, check_sizes
from deploy_nas.family import FAMILIES, FixedConfig, SubnetState
from deploy_nas.spaces import SPACES, check_config_type
from deploy_nas.spaces.psvit import (
    CHOICES,
    FAMILY,
    IDENTITY,
    LAYER,
    MAX_CELLS,
    MAX_STAGES,
    SHARED,
    PSViTConfig,
    PSViTSpace,
    pool_stride,
)
from deploy_nas.supernets.checkpoint import check_state_dict, extract_state_dict, majority, read_checkpoint
from deploy_nas.supernets.elastic import ElasticLayerNorm, ElasticLinear, ElasticPatchEmbed

NORM_EPS = 1e-6


@dataclass(frozen=True)
class PSViTArch:
    """The super sizes: per stage the widest width and the number of cells, the paths the cells hold, the input."""

    pooling: str
    widths: tuple[int, ...]
    cells: tuple[int, ...]
    head_dim: int
    mlp_ratio: float
    img_size: int
    patch_size: int
    in_chans: int
    num_classes: int
    choices: tuple[str, ...] = CHOICES

    def __post_init__(self) -> None:
        """Checked where it is read (supernet.json, a checkpoint's shapes), before any layer is sized by it."""
        owner = "PSViT supernet arch"
        check_sizes(owner, CheckpointError, {}, integers=True, widths=self.widths, cells=self.cells,
                    head_dim=self.head_dim, img_size=self.img_size, patch_size=self.patch_size,
                    in_chans=self.in_chans, num_classes=self.num_classes)
        check_sizes(owner, CheckpointError, {}, mlp_ratio=self.mlp_ratio)
        if self.pooling not in ("1d", "2d") or len(self.widths) != len(self.cells) or self.patch_size > self.img_size:
            raise CheckpointError(f"{owner}: pooling {brief(self.pooling)} (1d or 2d), {len(self.widths)} widths "
                                  f"for {len(self.cells)} stages of cells, patch_size {self.patch_size} within "
                                  f"img_size {self.img_size}: one of these does not hold")
        if len(self.cells) > MAX_STAGES or max(self.cells) > MAX_CELLS:
            raise CheckpointError(f"{owner}: cells = {brief(self.cells)} (1 to {MAX_CELLS} cells per stage, 1 to "
                                  f"{MAX_STAGES} stages)")
        object.__setattr__(self, "widths", tuple(self.widths))
        object.__setattr__(self, "cells", tuple(self.cells))
        object.__setattr__(self, "choices", tuple(c for c in CHOICES if c in self.choices))
        check_params(owner, CheckpointError, self.params_bound(), f"widths {brief(list(self.widths))}, cells "
                     f"{brief(list(self.cells))}, mlp_ratio {self.mlp_ratio:g}, {self.num_patches} patches, "
                     f"{self.num_classes} classes", "PSViT")

    def params_bound(self) -> int:
        """An upper bound of the supernet's parameter count, from the sizes alone (nothing allocated)."""
        layers = (LAYER in self.choices) + 2 * (SHARED in self.choices)  # per cell
        w0, wl = self.widths[0], self.widths[-1]
        total = w0 * (self.in_chans * self.patch_size ** 2 + self.num_patches + 3) + (wl + 2) * self.num_classes
        for s, (w, n) in enumerate(zip(self.widths, self.cells)):
            total += n * layers * (4 * w * w + 2 * w * self.hidden(w) + self.hidden(w) + 10 * w)
            total += 9 * self.widths[s - 1] * w + w if s else 0
        return total

    @classmethod
    def from_space(cls, space: PSViTSpace) -> PSViTArch:
        return cls(space.pooling, tuple(max(w) for w in space.widths), space.cells, space.head_dim, space.mlp_ratio,
                   space.img_size, space.patch_size, space.in_chans, space.num_classes, space.choices)

    @property
    def cls_token(self) -> bool:
        return self.pooling == "1d"

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    def hidden(self, width: int) -> int:
        return int(width * self.mlp_ratio)  # truncation, as AutoFormer's int(E * ratio)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PSViTArch:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# ------------------------------------------------------------------------------------------ elastic modules


class ElasticAttention(nn.Module):
    """Attention over the first `width` channels (heads of `head_dim`). A producer (`own_map`) has q, k, v and
    returns its post-softmax map; a consumer has v only and takes the producer's map."""

    def __init__(self, dim: int, head_dim: int, own_map: bool):
        super().__init__()
        self.head_dim, self.scale, self.own_map = head_dim, head_dim ** -0.5, own_map
        if own_map:
            self.q, self.k = ElasticLinear(dim, dim), ElasticLinear(dim, dim)
        self.v = ElasticLinear(dim, dim)
        self.proj = ElasticLinear(dim, dim)

    def forward(self, h: Tensor, shared: Tensor | None = None) -> tuple[Tensor, Tensor]:
        w = h.shape[-1]
        heads = w // self.head_dim
        (v,) = split_heads(self.v(h, w), 1, heads, self.head_dim)  # (B, H, N, d)
        attn = shared
        if self.own_map:
            (q,) = split_heads(self.q(h, w), 1, heads, self.head_dim)
            (k,) = split_heads(self.k(h, w), 1, heads, self.head_dim)
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, N, N)
        return self.proj(merge_heads(attn @ v), w), attn

    def dense_state(self, w: int, p: str) -> dict[str, Tensor]:
        """Dense keys under prefix `p`: a producer's fused qkv rows [q | k | v], a consumer's v."""
        v, bv = self.v.sliced(w, w)
        sd = {}
        if self.own_map:
            (q, bq), (k, bk) = self.q.sliced(w, w), self.k.sliced(w, w)
            sd[p + "qkv.weight"], sd[p + "qkv.bias"] = torch.cat([q, k, v]), torch.cat([bq, bk, bv])
        else:
            sd[p + "v.weight"], sd[p + "v.bias"] = v, bv
        sd[p + "proj.weight"], sd[p + "proj.bias"] = self.proj.sliced(w, w)
        return sd


class ElasticLayer(nn.Module):
    """A pre-norm transformer layer over the first `width` channels."""

    def __init__(self, dim: int, hidden: int, head_dim: int, own_map: bool):
        super().__init__()
        self.norm1 = ElasticLayerNorm(dim, eps=NORM_EPS)
        self.attn = ElasticAttention(dim, head_dim, own_map)
        self.norm2 = ElasticLayerNorm(dim, eps=NORM_EPS)
        self.fc1 = ElasticLinear(dim, hidden)
        self.fc2 = ElasticLinear(hidden, dim)

    def forward(self, x: Tensor, hidden: int, shared: Tensor | None = None) -> tuple[Tensor, Tensor]:
        out, attn = self.attn(self.norm1(x), shared)
        x = x + out
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x), hidden)), x.shape[-1]), attn

    def dense_state(self, w: int, hidden: int, p: str) -> dict[str, Tensor]:
        sd = {p + "norm1.weight": self.norm1.sliced(w)[0], p + "norm1.bias": self.norm1.sliced(w)[1],
              p + "norm2.weight": self.norm2.sliced(w)[0], p + "norm2.bias": self.norm2.sliced(w)[1]}
        sd.update(self.attn.dense_state(w, p + "attn."))
        sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"] = self.fc1.sliced(w, hidden)
        sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"] = self.fc2.sliced(hidden, w)
        return sd


class Cell(nn.Module):
    """One cell: the paths its space allows (`layer`: one layer; `shared`: a producer and its consumer)."""

    def __init__(self, dim: int, hidden: int, head_dim: int, choices: tuple[str, ...]):
        super().__init__()
        if LAYER in choices:
            self.layer = ElasticLayer(dim, hidden, head_dim, own_map=True)
        if SHARED in choices:
            self.shared = nn.ModuleList([ElasticLayer(dim, hidden, head_dim, own_map=True),
                                         ElasticLayer(dim, hidden, head_dim, own_map=False)])

    def paths(self, choice: str) -> list[ElasticLayer]:
        """The layers `choice` runs, in order (a consumer right after its producer)."""
        if choice == LAYER:
            return [self.layer]
        return list(self.shared) if choice == SHARED else []

    def forward(self, x: Tensor, choice: str, hidden: int) -> Tensor:
        attn = None
        for layer in self.paths(choice):
            x, attn = layer(x, hidden, attn)  # the consumer (shared.1) gets shared.0's map
        return x


class ElasticTokenPool(nn.Module):
    """The pooling between two stages, on prefix slices of the convolution: see the module doc."""

    def __init__(self, pooling: str, dim_in: int, dim_out: int):
        super().__init__()
        self.pooling = pooling
        self.conv = nn.Conv1d(dim_in, dim_out, 1) if pooling == "1d" else nn.Conv2d(dim_in, dim_out, 3, padding=1)

    def sliced(self, dim_in: int, dim_out: int) -> tuple[Tensor, Tensor]:
        return self.conv.weight[:dim_out, :dim_in], self.conv.bias[:dim_out]

    def forward(self, x: Tensor, dim_out: int, stride: int) -> Tensor:
        weight, bias = self.sliced(x.shape[-1], dim_out)
        if self.pooling == "1d":  # (B, 1 + N, C_in) -> (B, 1 + N / s, C_out)
            y = F.conv1d(x.transpose(1, 2), weight, bias)  # (B, C_out, 1 + N)
            return torch.cat([y[..., :1], F.max_pool1d(y[..., 1:], stride, stride)], dim=-1).transpose(1, 2)
        grid = math.isqrt(x.shape[1])  # (B, g*g, C_in) -> (B, ceil(g / s)^2, C_out)
        t = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], grid, grid)
        return F.conv2d(t, weight, bias, stride=stride, padding=1).flatten(2).transpose(1, 2)


class Stage(nn.Module):
    def __init__(self, arch: PSViTArch, s: int):
        super().__init__()
        w = arch.widths[s]
        self.cells = nn.ModuleList(Cell(w, arch.hidden(w), arch.head_dim, arch.choices) for _ in range(arch.cells[s]))


# ------------------------------------------------------------------------------------------------ supernet


class PSViTSupernet(nn.Module):
    family = FAMILY

    def __init__(self, arch: PSViTArch):
        super().__init__()
        self.arch = a = arch
        self.patch_embed = ElasticPatchEmbed(a.img_size, a.patch_size, a.in_chans, a.widths[0])
        if a.cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, a.widths[0]))
        self.pos_embed = nn.Parameter(torch.zeros(1, a.num_patches + a.cls_token, a.widths[0]))
        self.stages = nn.ModuleList(Stage(a, s) for s in range(len(a.widths)))
        self.pools = nn.ModuleList(ElasticTokenPool(a.pooling, a.widths[s - 1], a.widths[s])
                                   for s in range(1, len(a.widths)))
        self.norm = ElasticLayerNorm(a.widths[-1], eps=NORM_EPS)
        self.head = ElasticLinear(a.widths[-1], a.num_classes)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """timm's DeiT initialisation: linear weights, CLS and position truncated normal (std .02), biases 0, norms
        1; the convolutions (patch embedding, pooling) PyTorch's default, kaiming-uniform(a=sqrt 5) weights and
        uniform(+-1/sqrt fan_in) biases, as timm leaves its patch embedding. (Pooling convolutions at std .02 would
        shrink the residual stream ~6x at each pooling: measured, the all-shared path of psvit-tiny-1d then stays at
        chance after 200 steps, 84% val top-1 with the default.)"""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02, generator=generator)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                bound = m.weight[0].numel() ** -0.5
                nn.init.uniform_(m.bias, -bound, bound, generator=generator)
        for p in (self.pos_embed, getattr(self, "cls_token", None)):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02, generator=generator)

    # --- config handling --------------------------------------------------------------------------------------
    def check_config(self, cfg: Any) -> PSViTConfig:
        """`cfg` if it is a PSViT config that fits this supernet (stages, cells, paths, widths, token counts)."""
        check_config_type(cfg, FAMILY, f"the {FAMILY} supernet")
        a = self.arch
        if [len(c) for c in cfg.cells] != list(a.cells):
            raise InvalidSubnetConfig(f"config has {[len(c) for c in cfg.cells]} cells per stage; this supernet has "
                                      f"{list(a.cells)}")
        missing = sorted({c for stage in cfg.cells for c in stage} - set(a.choices))
        if missing:
            raise InvalidSubnetConfig(f"cell choice {missing[0]!r} has no path in this supernet (its cells hold "
                                      f"{', '.join(a.choices)})")
        for s, (w, top) in enumerate(zip(cfg.widths, a.widths)):
            if w > top or w % a.head_dim:
                raise InvalidSubnetConfig(f"widths[{s}] = {w} does not fit the supernet (a multiple of the head dim "
                                          f"{a.head_dim}, at most {top})")
        self.strides(cfg)
        return cfg

    def strides(self, cfg: PSViTConfig) -> list[int]:
        """The pooling stride into each stage (stage 0: 1), or InvalidSubnetConfig for unreachable token counts."""
        a = self.arch
        if cfg.tokens[0] != a.num_patches:
            raise InvalidSubnetConfig(f"tokens[0] = {cfg.tokens[0]}: stage 0 holds every patch, {a.num_patches} "
                                      f"for {a.img_size} px in {a.patch_size} px patches")
        out = [1]
        for s in range(1, len(cfg.tokens)):
            stride = pool_stride(a.pooling, cfg.tokens[s - 1], cfg.tokens[s])
            if stride is None:
                raise InvalidSubnetConfig(f"tokens {list(cfg.tokens)}: {a.pooling} pooling cannot take "
                                          f"{cfg.tokens[s - 1]} tokens to {cfg.tokens[s]} (stage {s})")
            out.append(stride)
        return out

    # --- forward ----------------------------------------------------------------------------------------------
    def forward(self, x: Tensor, cfg: PSViTConfig) -> Tensor:
        strides = self.strides(self.check_config(cfg))
        x = self.embed(x, cfg.widths[0])
        for s, (stage, w) in enumerate(zip(self.stages, cfg.widths)):
            if s:
                x = self.pools[s - 1](x, w, strides[s])
            for cell, choice in zip(stage.cells, cfg.cells[s]):
                x = cell(x, choice, self.arch.hidden(w))
        x = self.norm(x)
        x = x[:, 0] if self.arch.cls_token else x.mean(dim=1)  # (B, C)
        return self.head(x, self.arch.num_classes)

    def embed(self, x: Tensor, w: int) -> Tensor:
        x = self.patch_embed(x, w)  # (B, N, w)
        if self.arch.cls_token:
            x = torch.cat([self.cls_token[..., :w].expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + N, w)
        return x + self.pos_embed[..., :w]

    # --- materialization --------------------------------------------------------------------------------------
    def dense_spec(self, cfg: PSViTConfig) -> DenseSpec:
        return dense_spec(self.arch, self.check_config(cfg), self.strides(cfg))

    @torch.no_grad()
    def subnet_state(self, cfg: PSViTConfig, calib: Any = None) -> SubnetState:
        """The dense spec and a state dict in the dense `psvit` layout (fresh copies); no folds, no BatchNorm."""
        spec = self.dense_spec(cfg)
        w0 = cfg.widths[0]
        sd = dict(zip(("patch_embed.proj.weight", "patch_embed.proj.bias"), self.patch_embed.sliced(w0)))
        sd["pos_embed"] = self.pos_embed[..., :w0]
        if self.arch.cls_token:
            sd["cls_token"] = self.cls_token[..., :w0]
        for s, (stage, w) in enumerate(zip(self.stages, cfg.widths)):
            if s:
                sd[f"stages.{s}.pool.conv.weight"], sd[f"stages.{s}.pool.conv.bias"] = \
                    self.pools[s - 1].sliced(cfg.widths[s - 1], w)
            layers = [layer for cell, choice in zip(stage.cells, cfg.cells[s]) for layer in cell.paths(choice)]
            for i, layer in enumerate(layers):
                sd.update(layer.dense_state(w, self.arch.hidden(w), f"stages.{s}.layers.{i}."))
        sd["norm.weight"], sd["norm.bias"] = self.norm.sliced(cfg.widths[-1])
        sd["head.weight"], sd["head.bias"] = self.head.sliced(cfg.widths[-1], self.arch.num_classes)
        return SubnetState(spec, {k: v.detach().clone().contiguous() for k, v in sd.items()})

    # --- the rest of the supernet protocol --------------------------------------------------------------------
    def param_count(self, cfg: PSViTConfig) -> int:
        """Parameters of the subnet: what its dense model holds (identity cells none, a consumer no q/k)."""
        b, a = self.dense_spec(cfg).body, self.arch
        w0, wl = b.stages[0].width, b.stages[-1].width
        total = w0 * (a.in_chans * a.patch_size ** 2 + 1) + w0 * (a.num_patches + 2 * a.cls_token)  # embed, pos, CLS
        total += 2 * wl + (wl + 1) * a.num_classes  # final norm, head
        for s, stage in enumerate(b.stages):
            w = stage.width
            if s:
                total += w * b.stages[s - 1].width * (1 if a.cls_token else 9) + w  # pooling convolution
            for layer in stage.layers:  # norms, qkv + proj (a consumer: v + proj), MLP
                total += 4 * w + (4 if layer.attn_from is None else 2) * (w * w + w) + 2 * w * layer.mlp_hidden \
                    + layer.mlp_hidden + w
        return total

    def macs(self, cfg: PSViTConfig) -> int:
        """Multiply-accumulates of one image (matmuls and convolutions), from the dense spec."""
        return dense.macs(self.dense_spec(cfg))

    def no_weight_decay(self) -> set[str]:
        """Biases, norms, CLS and position embedding (timm's DeiT choice)."""
        return {n for n, p in self.named_parameters() if p.dim() <= 1 or n in ("cls_token", "pos_embed")}

    def fixed(self, cfg: PSViTConfig, calib: Any = None) -> nn.Module:
        return FixedConfig(self, self.check_config(cfg)).eval()

    def meta(self) -> dict[str, Any]:
        return {"family": FAMILY, "arch": self.arch.to_dict()}


def dense_spec(arch: PSViTArch, cfg: PSViTConfig, strides: list[int]) -> DenseSpec:
    """The DenseSpec of a config (needs no weights): identity cells vanish, a shared cell is a producer followed by
    a consumer naming it."""
    stages = []
    for s, (w, n) in enumerate(zip(cfg.widths, cfg.tokens)):
        layers: list[dense.PSViTLayerSpec] = []
        for choice in cfg.cells[s]:
            if choice in (LAYER, SHARED):
                layers.append(dense.PSViTLayerSpec(w // arch.head_dim, arch.hidden(w)))
            if choice == SHARED:
                layers.append(dense.PSViTLayerSpec(w // arch.head_dim, arch.hidden(w), attn_from=len(layers) - 1))
        stages.append(dense.PSViTStageSpec(w, n, strides[s], tuple(layers)))
    body = dense.PSViTSpec(arch.patch_size, arch.pooling, arch.head_dim, arch.head_dim ** -0.5, tuple(stages),
                           norm_eps=NORM_EPS, activation="gelu_erf")
    return DenseSpec(dense.ARCH, arch.img_size, arch.in_chans, arch.num_classes, body,
                     source={"family": FAMILY, "config": cfg.to_dict(), "config_id": cfg.id,
                             "layers": cfg.layer_string(), "supernet": arch.to_dict()})


# ------------------------------------------------------------------------------------------------ checkpoints
# PSViT has no published checkpoint: the layout above (what `deploy-nas train` writes into weights.safetensors) is
# the one every importer reads. The head dim is the one size the weights cannot tell (q/k/v are width x width).


def arch_from_state_dict(sd: dict[str, Tensor], head_dim: int | None = None) -> tuple[PSViTArch, PSViTSpace | None]:
    """The super sizes from tensor shapes (each size by the majority of the tensors that carry it, so that one bad
    tensor is reported by check_state_dict instead of resizing the model), and the registered space it matches."""
    needed = ["patch_embed.proj.weight", "pos_embed", "norm.weight", "head.weight"]
    missing = [k for k in needed if k not in sd]
    cells = _cells_per_stage(sd)
    if missing or not cells:
        raise CheckpointError(f"not a {FAMILY} supernet state dict: missing {', '.join(missing) or 'stages.*.cells.*'}"
                              f" (found {len(sd)} keys, e.g. {', '.join(brief(k, 50) for k in list(sd)[:3])})")
    conv, pos, head = (tuple(sd[k].shape) for k in ("patch_embed.proj.weight", "pos_embed", "head.weight"))
    cls = "cls_token" in sd
    grid = math.isqrt(max(pos[1] - cls, 0)) if len(pos) == 3 else 0
    if len(conv) != 4 or conv[2] != conv[3] or grid < 1 or grid * grid != pos[1] - cls or len(head) != 2:
        raise CheckpointError(f"patch_embed.proj.weight {conv}, pos_embed {pos} and head.weight {head} are not a "
                              f"{FAMILY} stem and head ((C0, 3, P, P), (1, {'1 + ' if cls else ''}g*g, C0), (classes, "
                              "C))")
    widths = tuple(majority([sd[k].shape[-1] for k in sd if k.startswith(f"stages.{s}.") and k.endswith(
        "norm1.weight")], f"the width of stage {s}") for s in range(len(cells)))
    hidden = majority([sd[k].shape[0] for k in sd if k.startswith("stages.0.") and k.endswith("fc1.weight")],
                      "the MLP width")
    choices = tuple(c for c in CHOICES if c == IDENTITY or any(f".{c}." in k for k in sd))
    arch = PSViTArch("1d" if cls else "2d", widths, tuple(cells), head_dim or 1, hidden / widths[0], grid * conv[-1],
                     conv[-1], conv[1], head[0], choices)
    return _with_head_dim(arch, head_dim)


def _cells_per_stage(sd: dict[str, Tensor]) -> list[int]:
    found: dict[int, set[int]] = {}
    for k in sd:
        parts = k.split(".")
        if len(parts) > 4 and parts[0] == "stages" and parts[2] == "cells" and parts[1].isdecimal() \
                and parts[3].isdecimal():
            if len(parts[1]) + len(parts[3]) > 8:  # read as a length before int(): thousands of digits are not parsed
                raise CheckpointError(f"{brief(k, 80)} numbers a stage or cell beyond any {FAMILY} supernet (at most "
                                      f"{MAX_STAGES} stages of {MAX_CELLS} cells)")
            found.setdefault(int(parts[1]), set()).add(int(parts[3]))
    if sorted(found) != list(range(len(found))) or any(sorted(c) != list(range(len(c))) for c in found.values()):
        raise CheckpointError(f"stages/cells are numbered {brief({s: sorted(c) for s, c in found.items()}, 120)}; "
                              "expected 0..n-1 each")
    return [len(found[s]) for s in range(len(found))]


def _with_head_dim(arch: PSViTArch, head_dim: int | None) -> tuple[PSViTArch, PSViTSpace | None]:
    for name in SPACES:
        space = SPACES.get(name)
        if space.family == FAMILY and head_dim in (None, space.head_dim) and \
                PSViTArch.from_space(space) == PSViTArch(**{**asdict(arch), "head_dim": space.head_dim}):
            return PSViTArch.from_space(space), space
    if head_dim is None:
        raise CheckpointError(f"the weights do not tell the head dim and match no registered {FAMILY} space; pass "
                              f"--import-option head_dim=N (N divides every width: {list(arch.widths)})")
    if any(w % head_dim for w in arch.widths):
        raise CheckpointError(f"head_dim {head_dim} does not divide the widths {list(arch.widths)}")
    return arch, None


def space_for(arch: PSViTArch) -> PSViTSpace:
    """A space of one width per stage (the supernet's) with stride-2 pooling where the tokens allow it."""
    tokens = [arch.num_patches]
    for _ in arch.widths[1:]:
        n = dense.pooled_tokens(arch.pooling, tokens[-1], 2)
        tokens.append(n if n is not None else tokens[-1])
    rising = all(a < b for a, b in zip(arch.widths, arch.widths[1:])) and all(
        a > b for a, b in zip(tokens, tokens[1:]))
    return PSViTSpace(f"psvit-{arch.pooling}-{'x'.join(map(str, arch.widths))}", arch.pooling,
                      tuple((w,) for w in arch.widths), tuple((n,) for n in tokens), arch.cells, arch.choices,
                      arch.head_dim, arch.mlp_ratio, arch.img_size, arch.patch_size, arch.in_chans, arch.num_classes,
                      increasing=rising)


@dataclass(frozen=True)
class PSViTImportOptions:
    """What the weights cannot tell: the head dim (default: that of the registered space the sizes match)."""

    head_dim: int | None = None


class PSViTFamily:
    name = FAMILY
    config_type = PSViTConfig
    space_type = PSViTSpace
    import_options = PSViTImportOptions
    train_rule = "spos"
    tiny_space = "psvit-tiny-1d"
    # what `train --family psvit` trains without --space: the 2D form learns several times faster on the small
    # embedded task (its 3x3 pooling convolutions are the only spatial mixing outside attention); see docs/psvit.md
    default_space = "psvit-tiny-2d"
    # SPOS: one uniformly sampled path per step, on the labels alone (no max subnet to distil from)
    train_defaults = {"distill": False, "num_random": 0}

    def config_from_dict(self, obj: Any) -> PSViTConfig:
        return PSViTConfig.from_dict(obj)

    def space_from_dict(self, obj: Any, name: str | None = None) -> PSViTSpace:
        return PSViTSpace.from_dict(obj, name=name)

    def claims(self, state_dict: dict[str, Tensor]) -> bool:
        """Our layout: stages of cells (no other family's keys have `.cells.`)."""
        return "patch_embed.proj.weight" in state_dict and any(k.startswith("stages.0.cells.") for k in state_dict)

    def from_checkpoint(self, obj: Any, options: PSViTImportOptions, source: str = "checkpoint"
                        ) -> tuple[PSViTSupernet, PSViTSpace]:
        if options.head_dim is not None and not 1 <= options.head_dim <= 4096:
            raise InvalidSubnetConfig(f"import option head_dim={options.head_dim}: expected 1..4096")
        sd = extract_state_dict(obj, source)
        arch, space = arch_from_state_dict(sd, options.head_dim)
        model = PSViTSupernet(arch)
        check_state_dict(model, sd, FAMILY, "check the file is a psvit supernet (`deploy-nas train --family psvit` "
                                            "writes one) and the head_dim import option")
        model.load_state_dict(sd, strict=True)
        return model.eval(), space or space_for(arch)

    def load_official(self, path: Any, options: PSViTImportOptions) -> tuple[PSViTSupernet, PSViTSpace]:
        """A supernet state dict in our layout (safetensors, or a torch file with {'model': ...})."""
        return self.from_checkpoint(read_checkpoint(path), options, str(path))

    def build_supernet(self, space: PSViTSpace, seed: int | None = 0) -> PSViTSupernet:
        model = PSViTSupernet(PSViTArch.from_space(space))
        model.reset_parameters(torch.Generator().manual_seed(seed or 0))
        return model.eval()

    def supernet_from_meta(self, meta: dict[str, Any]) -> PSViTSupernet:
        return PSViTSupernet(PSViTArch.from_dict(meta["arch"]))

    def cost_features(self, space: PSViTSpace, cfg: PSViTConfig) -> dict[str, float]:
        """Per-image costs (millions): GEMM MACs (q/k/v, proj, MLP), attention-map MACs (q k^T for producers, A v
        for all), softmax elements (producers only), pooling MACs; and the layer and attention-map counts."""
        arch = PSViTArch.from_space(space)
        strides = [1] + [pool_stride(space.pooling, a, b) or 1 for a, b in zip(cfg.tokens, cfg.tokens[1:])]
        body = dense_spec(arch, cfg, strides).body
        out = dict.fromkeys(("gemm_macs", "attn_macs", "softmax", "pool_macs", "layers", "maps"), 0.0)
        for s, stage in enumerate(body.stages):
            n, w = stage.tokens + body.cls_token, stage.width
            out["pool_macs"] += dense.pool_macs(body, s, body.stages[s - 1]) / 1e6 if s else 0.0
            for layer in stage.layers:
                own = layer.attn_from is None
                out["gemm_macs"] += (n * w * w * (4 if own else 2) + 2 * n * w * layer.mlp_hidden) / 1e6
                out["attn_macs"] += n * n * w * (2 if own else 1) / 1e6
                out["softmax"] += n * n * layer.num_heads * own / 1e6
                out["layers"] += 1.0
                out["maps"] += float(own)
        return {"const": 1.0, **out}

    def tolerances(self) -> dict:
        return {}


FAMILIES.register(FAMILY, PSViTFamily())

__all__ = ["PSViTArch", "PSViTFamily", "PSViTImportOptions", "PSViTSupernet", "arch_from_state_dict", "dense_spec",
           "space_for"]
