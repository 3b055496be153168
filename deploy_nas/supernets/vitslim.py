"""ViT-Slim: a DeiT with learned soft masks (Arnav0400/ViT-Slim), and its exact dense pruning.

The masked model reproduces the official semantics (`SparseAttention`, `SparseMlp`, `Block`):
* `attn.zeta` multiplies the qkv output reshaped to (3, B, H, N, d) after the bias: one mask shared by q, k and v;
  shapes (1,1,H,1,d) "channel", (1,1,H,1,1) "head" (`--head_search`), (1,1,1,1,d) "uniform" (`--uniform_search`);
* `mlp.zeta` multiplies the hidden units after GELU;
* `tanh(attn.patch_zeta)` (1, N, 1) multiplies the normalized input of the attention and of the MLP of its block;
  the residual stream itself is not masked; the attention scale stays 64**-0.5 (the original head dim).
A config's budgets become binary masks as `calculate_search_threshold` + `compress`: per mask family, all layers'
values sorted, the threshold at index int((1 - b) * n), kept where value >= threshold; token masks are thresholded
on tanh(patch_zeta) and made monotone from the last layer back (a token kept later is kept earlier).

Dense pruning (`subnet_state`): q/k/v channels and proj columns of the kept (head, channel) positions; heads of
different widths padded with zero channels to the widest (or grouped by width, `head_layout`); a pruned-away
attention or MLP is its constant output bias; per block a constant gather keeps its tokens, and the masked tokens,
which still act as bias-only keys and values (their normalized input is zeroed, their qkv is the bias), are one
extra key/value per block whose logit carries log(the number of masked tokens): exact. A masked CLS token (the
official code does not protect it) stays in the gather with its normalized input scaled by 0: its bias-only query
still attends and its state still reaches the head, as in the masked model. Soft masks (`soft`) fold into the qkv
rows and fc2 columns (ScaleFold); soft token masks stay as a per-token scale.
"""
from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deploy_nas.dense.layers import PatchEmbed
from deploy_nas.dense.spec import DenseSpec
from deploy_nas.dense.vit import ViTBlockSpec, ViTSpec
from deploy_nas.errors import CheckpointError, InvalidSubnetConfig, brief, check_fields, check_params
from deploy_nas.family import FAMILIES, FixedConfig, SubnetState
from deploy_nas.folding import ScaleFold
from deploy_nas.spaces import SPACES, check_config_type
from deploy_nas.spaces.vitslim import BUDGETS as BUDGET_KEYS
from deploy_nas.spaces.vitslim import FAMILY, SlimConfig, SlimSpace, check_budget
from deploy_nas.supernets.checkpoint import check_state_dict, extract_state_dict, read_checkpoint, stored_args

PATCH_ZETA_INIT = 3.0  # official: tanh(3) = 0.995
MAX_DEPTH = 1024  # deeper than any DeiT: a larger depth is refused before anything is sized by it
MAX_PAD_TO = 256  # `--pad-to`'s range: a padded head is at most this much wider than its kept channels
DEIT_HEAD_DIM = 64  # the head width every DeiT has: the head count assumed for a checkpoint that does not tell it


@dataclass(frozen=True)
class SlimArch:
    """The base DeiT and the mask variant, plus how the dense model lays out ragged heads."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_hidden: int
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    mask: str = "channel"
    norm_eps: float = 1e-6
    head_layout: str = "padded"  # "padded" (zero channels up to the widest kept head) or "grouped" (by width)
    pad_to: int = 1  # padded widths rounded up to a multiple of this (8 for TensorRT's fused attention)

    def __post_init__(self) -> None:
        """Checked where it is read (supernet.json, a checkpoint's shapes), not at the first forward pass."""
        owner = "ViT-Slim supernet arch"
        check_fields(owner, CheckpointError, self)
        choices = {"mask": ("channel", "head", "uniform"), "head_layout": ("padded", "grouped")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise CheckpointError(f"{owner}: {name} = {brief(getattr(self, name))} (one of {', '.join(allowed)})")
        if self.embed_dim % self.num_heads:
            raise CheckpointError(f"{owner}: embed_dim {self.embed_dim} is not a multiple of num_heads "
                                  f"{self.num_heads}")
        if self.patch_size > self.img_size:
            raise CheckpointError(f"{owner}: patch_size {self.patch_size} > img_size {self.img_size}")
        too_large = [f"{name} = {value} (1..{high})" for name, value, high in (
            ("depth", self.depth, MAX_DEPTH), ("pad_to", self.pad_to, MAX_PAD_TO)) if value > high]
        if too_large:
            raise CheckpointError(f"{owner}: {'; '.join(too_large)}")
        # pad_to with the grouped layout is refused where a user gives it (check_layout); a supernet.json written
        # with both before that refusal still loads (the grouped layout ignores pad_to, as it always did)
        check_params(owner, CheckpointError, self.params_bound(), f"embed_dim {self.embed_dim}, depth {self.depth}, "
                     f"mlp_hidden {self.mlp_hidden}, {self.num_tokens} tokens, {self.num_classes} classes", "DeiT")

    def params_bound(self) -> int:
        """An upper bound of the masked model's parameter count, from the sizes alone (nothing allocated)."""
        E, h, N = self.embed_dim, self.mlp_hidden, self.num_tokens
        block = 4 * E * E + 2 * E * h + N + 2 * h + 10 * E  # q/k/v, proj, MLP, norms, biases, masks
        return self.depth * block + E * (self.in_chans * self.patch_size ** 2 + N + self.num_classes + 4) \
            + self.num_classes

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def num_tokens(self) -> int:
        return (self.img_size // self.patch_size) ** 2 + 1

    @classmethod
    def from_space(cls, space: SlimSpace, **layout: Any) -> SlimArch:
        return cls(space.embed_dim, space.depth, space.num_heads, space.mlp_hidden, space.img_size,
                   space.patch_size, space.in_chans, space.num_classes, space.mask, space.norm_eps, **layout)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SlimArch:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def zeta_shape(arch: SlimArch) -> tuple[int, ...]:
    H, d = arch.num_heads, arch.head_dim
    return {"channel": (1, 1, H, 1, d), "head": (1, 1, H, 1, 1), "uniform": (1, 1, 1, 1, d)}[arch.mask]


class SlimAttention(nn.Module):
    def __init__(self, arch: SlimArch):
        super().__init__()
        E = arch.embed_dim
        self.num_heads, self.head_dim = arch.num_heads, arch.head_dim
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(E, 3 * E)
        self.proj = nn.Linear(E, E)
        self.zeta = nn.Parameter(torch.ones(zeta_shape(arch)))
        self.patch_zeta = nn.Parameter(torch.full((1, arch.num_tokens, 1), PATCH_ZETA_INIT))

    def forward(self, h: Tensor, channel_mask: Tensor) -> Tensor:
        """h: the masked normalized input (B, N, E); channel_mask broadcasts to (3, B, H, N, d)."""
        B, N, E = h.shape
        qkv = self.qkv(h).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4) * channel_mask
        q, k, v = qkv.unbind(0)  # (B, H, N, d): the mask sits after the bias, shared by q, k and v
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, E))


class SlimMlp(nn.Module):
    def __init__(self, arch: SlimArch):
        super().__init__()
        self.fc1 = nn.Linear(arch.embed_dim, arch.mlp_hidden)
        self.fc2 = nn.Linear(arch.mlp_hidden, arch.embed_dim)
        self.zeta = nn.Parameter(torch.ones(1, 1, arch.mlp_hidden))

    def forward(self, h: Tensor, unit_mask: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(h)) * unit_mask)


class SlimBlock(nn.Module):
    def __init__(self, arch: SlimArch):
        super().__init__()
        self.norm1 = nn.LayerNorm(arch.embed_dim, eps=arch.norm_eps)
        self.attn = SlimAttention(arch)
        self.norm2 = nn.LayerNorm(arch.embed_dim, eps=arch.norm_eps)
        self.mlp = SlimMlp(arch)

    def forward(self, x: Tensor, masks: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        channels, tokens, units = masks  # attn.zeta-shaped, (1, N, 1), (1, 1, hidden)
        x = x + self.attn(self.norm1(x) * tokens, channels)
        return x + self.mlp(self.norm2(x) * tokens, units)


Masks = list[tuple[Tensor, Tensor, Tensor]]


class SlimViT(nn.Module):
    """The masked DeiT, in the official ViT-Slim key layout (timm keys plus `*.zeta`, `*.patch_zeta`)."""

    family = FAMILY

    def __init__(self, arch: SlimArch):
        super().__init__()
        self.arch = arch
        E = arch.embed_dim
        self.patch_embed = PatchEmbed(arch.patch_size, arch.in_chans, E)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, E))
        self.pos_embed = nn.Parameter(torch.zeros(1, arch.num_tokens, E))
        self.blocks = nn.ModuleList(SlimBlock(arch) for _ in range(arch.depth))
        self.norm = nn.LayerNorm(E, eps=arch.norm_eps)
        self.head = nn.Linear(E, arch.num_classes)
        self.budgets: SlimConfig | None = None  # the budgets a searched checkpoint was made for (its `args`)
        self.stored_budgets: dict[str, float] = {}  # those of them its args store, when they store fewer than three

    # --- masks ----------------------------------------------------------------------------------------------------
    def soft_masks(self) -> Masks:
        """The learned masks as they are (the search's forward)."""
        return [(b.attn.zeta, torch.tanh(b.attn.patch_zeta), b.mlp.zeta) for b in self.blocks]

    @torch.no_grad()
    def binary_masks(self, cfg: SlimConfig) -> Masks:
        """Budgets -> 0/1 masks, exactly as the official calculate_search_threshold + compress(_patch)."""
        attn = [b.attn.zeta for b in self.blocks]
        mlp = [b.mlp.zeta for b in self.blocks]
        tokens = [torch.tanh(b.attn.patch_zeta) for b in self.blocks]
        keep_attn = _keep(attn, cfg.budget_attn)
        keep_mlp = _keep(mlp, cfg.budget_mlp)
        keep_tok = _keep(tokens, cfg.budget_patch)
        for i in range(len(keep_tok) - 2, -1, -1):  # monotone: kept at a later layer -> kept here too
            keep_tok[i] = keep_tok[i] | keep_tok[i + 1]
        return [(a.float(), t.float(), m.float()) for a, t, m in zip(keep_attn, keep_tok, keep_mlp)]

    def masks(self, cfg: SlimConfig) -> Masks:
        return self.soft_masks() if cfg.soft else self.binary_masks(cfg)

    # --- forward --------------------------------------------------------------------------------------------------
    def check_config(self, cfg: Any) -> SlimConfig:
        check_config_type(cfg, FAMILY, f"the {FAMILY} supernet")
        return cfg

    def forward(self, x: Tensor, cfg: SlimConfig) -> Tensor:
        return self.forward_masked(x, self.masks(self.check_config(cfg)))

    def forward_masked(self, x: Tensor, masks: Masks) -> Tensor:
        x = self.patch_embed(x)  # (B, N-1, E)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block, m in zip(self.blocks, masks):
            x = block(x, m)
        return self.head(self.norm(x)[:, 0])

    def sparsity(self) -> tuple[Tensor, Tensor, Tensor]:
        """The official L1 terms: sums of |zeta_attn|, |zeta_mlp| and |tanh(patch_zeta)| over all layers."""
        attn = sum(b.attn.zeta.abs().sum() for b in self.blocks)
        mlp = sum(b.mlp.zeta.abs().sum() for b in self.blocks)
        patch = sum(torch.tanh(b.attn.patch_zeta).abs().sum() for b in self.blocks)
        return attn, mlp, patch

    # --- protocol ------------------------------------------------------------------------------------------------
    def fixed(self, cfg: Any, calib: Any = None) -> nn.Module:
        return FixedConfig(self, self.check_config(cfg)).eval()

    def no_weight_decay(self) -> set[str]:
        """Masks, norms, biases, cls and position embeddings (timm's and ViT-Slim's choice)."""
        return {n for n, p in self.named_parameters() if p.dim() <= 1 or "zeta" in n
                or n in ("cls_token", "pos_embed")}

    def meta(self) -> dict[str, Any]:
        return {"family": FAMILY, "arch": self.arch.to_dict(),
                "budgets": self.budgets.to_dict() if self.budgets is not None else None}

    def param_count(self, cfg: SlimConfig) -> int:
        """Parameters of the pruned model at its kept widths (padding, when the layout adds it, not counted)."""
        a, E = self.arch, self.arch.embed_dim
        total = E * a.in_chans * a.patch_size ** 2 + E + E + a.num_tokens * E + 2 * E + (E + 1) * a.num_classes
        for channels, _, units in self._plan(cfg):
            q = int(channels.sum())
            total += 4 * E + (3 * q * E + 3 * q + q * E + E if q else E)
            h = int(units.sum())
            total += 2 * E * h + h + E if h else E
        return total

    def macs(self, cfg: SlimConfig) -> int:
        """Multiply-accumulates of the pruned model at batch 1, at the kept widths (padding not counted): the patch
        embedding; per block over its tokens n, q/k/v and proj at the kept channels q, q k^T and attn v over the n
        keys plus the masked tokens' one key, the MLP at the kept width; the head."""
        a, E = self.arch, self.arch.embed_dim
        total = (a.num_tokens - 1) * E * a.in_chans * a.patch_size ** 2 + E * a.num_classes
        for channels, tokens, units in self._plan(cfg):
            n, q, h = int(tokens[1:].sum()) + 1, int(channels.sum()), int(units.sum())  # a masked CLS stays
            keys = n + (n < a.num_tokens and q > 0)
            total += n * E * 3 * q + 2 * n * keys * q + n * q * E + 2 * n * E * h
        return total

    def _plan(self, cfg: SlimConfig) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per block: kept (H, d) channels, kept tokens (N,), kept hidden units (hidden,), as booleans."""
        H, d = self.arch.num_heads, self.arch.head_dim
        return [(c.expand(1, 1, H, 1, d).reshape(H, d).bool(), t.reshape(-1).bool(), u.reshape(-1).bool())
                for c, t, u in self.binary_masks(cfg)]

    @torch.no_grad()
    def subnet_state(self, cfg: SlimConfig, calib: Any = None) -> SubnetState:
        cfg = self.check_config(cfg)
        if cfg.soft:
            return self._soft_state(cfg)
        sd: dict[str, Tensor] = self._stem()
        blocks, prev = [], torch.arange(self.arch.num_tokens)
        for i, (channels, tokens, units) in enumerate(self._plan(cfg)):
            cls_masked = not bool(tokens[0])
            tokens[0] = True  # a masked CLS stays (its state reaches the head): kept, its normalized input zeroed
            kept = torch.nonzero(tokens).reshape(-1)
            positions = torch.searchsorted(prev, kept)  # kept tokens among the previous block's
            spec, state = self._block(i, channels, units, positions, self.arch.num_tokens - len(kept), len(prev))
            if cls_masked:
                spec = replace(spec, token_scale=True)
                state[f"blocks.{i}.token_scale"] = (torch.arange(len(kept)) > 0).float().reshape(-1, 1)
            blocks.append(spec)
            sd.update(state)
            prev = kept
        return SubnetState(self._spec(cfg, tuple(blocks)), _fresh(sd))

    def _stem(self) -> dict[str, Tensor]:
        return {"patch_embed.proj.weight": self.patch_embed.proj.weight, "patch_embed.proj.bias":
                self.patch_embed.proj.bias, "cls_token": self.cls_token, "pos_embed": self.pos_embed,
                "norm.weight": self.norm.weight, "norm.bias": self.norm.bias, "head.weight": self.head.weight,
                "head.bias": self.head.bias}

    def _spec(self, cfg: SlimConfig, blocks: tuple[ViTBlockSpec, ...]) -> DenseSpec:
        a = self.arch
        body = ViTSpec(patch_size=a.patch_size, embed_dim=a.embed_dim, blocks=blocks, pos_embed=True, pool="cls",
                       pre_norm=True, norm_eps=a.norm_eps, activation="gelu_erf")
        return DenseSpec("vit", a.img_size, a.in_chans, a.num_classes, body,
                         source={"family": FAMILY, "config": cfg.to_dict(), "config_id": cfg.id, "base": a.to_dict()})

    def _block(self, i: int, channels: Tensor, units: Tensor, positions: Tensor, masked: int,
               previous: int) -> tuple[ViTBlockSpec, dict[str, Tensor]]:
        b, p = self.blocks[i], f"blocks.{i}."
        sd = {p + "norm1.weight": b.norm1.weight, p + "norm1.bias": b.norm1.bias,
              p + "norm2.weight": b.norm2.weight, p + "norm2.bias": b.norm2.bias}
        heads = _heads(channels, self.arch.head_layout, self.arch.pad_to)
        if heads:
            sd.update(_attention_weights(b.attn, heads, p, self.arch.embed_dim))
        else:
            sd[p + "attn.bias"] = b.attn.proj.bias
        hidden = torch.nonzero(units).reshape(-1)
        if len(hidden):
            sd.update({p + "mlp.fc1.weight": b.mlp.fc1.weight[hidden], p + "mlp.fc1.bias": b.mlp.fc1.bias[hidden],
                       p + "mlp.fc2.weight": b.mlp.fc2.weight[:, hidden], p + "mlp.fc2.bias": b.mlp.fc2.bias})
        else:
            sd[p + "mlp.bias"] = b.mlp.fc2.bias
        tokens = None if len(positions) == previous else tuple(positions.tolist())
        widths = tuple(int((c >= 0).sum()) for _, c in heads)  # kept channels (padding excluded)
        spec = ViTBlockSpec(num_heads=len(heads), head_dim=max((len(c) for _, c in heads), default=0),
                            attn_scale=self.arch.head_dim ** -0.5, mlp_hidden=len(hidden), head_widths=widths or None,
                            head_groups=_groups(heads) if self.arch.head_layout == "grouped" else None,
                            tokens=tokens, masked_tokens=masked if heads else 0)
        return spec, sd

    def _soft_state(self, cfg: SlimConfig) -> SubnetState:
        """Soft masks: nothing pruned; attn.zeta and mlp.zeta fold into weights, tanh(patch_zeta) stays a scale."""
        a, sd, folds, blocks = self.arch, self._stem(), [], []
        for i, (b, (channels, tokens, units)) in enumerate(zip(self.blocks, self.soft_masks())):
            p = f"blocks.{i}."
            for name in ("norm1", "norm2"):
                sd[p + f"{name}.weight"], sd[p + f"{name}.bias"] = getattr(b, name).weight, getattr(b, name).bias
            sd.update({p + "attn.qkv.weight": b.attn.qkv.weight, p + "attn.qkv.bias": b.attn.qkv.bias,
                       p + "attn.proj.weight": b.attn.proj.weight, p + "attn.proj.bias": b.attn.proj.bias,
                       p + "mlp.fc1.weight": b.mlp.fc1.weight, p + "mlp.fc1.bias": b.mlp.fc1.bias,
                       p + "mlp.fc2.weight": b.mlp.fc2.weight, p + "mlp.fc2.bias": b.mlp.fc2.bias,
                       p + "token_scale": tokens.reshape(-1, 1)})
            per_row = channels.expand(1, 1, a.num_heads, 1, a.head_dim).reshape(-1).repeat(3)  # q, k, v rows
            folds += [ScaleFold(p + "attn.qkv", per_row), ScaleFold(p + "mlp.fc2", units.reshape(-1), axis="in")]
            blocks.append(ViTBlockSpec(a.num_heads, a.head_dim, a.head_dim ** -0.5, a.mlp_hidden, token_scale=True))
        return SubnetState(self._spec(cfg, tuple(blocks)), _fresh(sd), tuple(folds))


def _keep(values: list[Tensor], budget: float) -> list[Tensor]:
    """One global threshold over every layer's values: the sorted value at int((1 - budget) * n); keep >= it."""
    flat = torch.cat([v.detach().reshape(-1) for v in values]).sort().values
    threshold = flat[min(int((1.0 - budget) * len(flat)), len(flat) - 1)]
    return [v.detach() >= threshold for v in values]


def _heads(channels: Tensor, layout: str, pad_to: int) -> list[tuple[int, Tensor]]:
    """(head, kept channel indices) for every head keeping a channel; grouped layout: widest first, stable."""
    heads = [(h, torch.nonzero(channels[h]).reshape(-1)) for h in range(channels.shape[0]) if channels[h].any()]
    if layout == "grouped":
        heads.sort(key=lambda hc: -len(hc[1]))
    elif layout != "padded":
        raise InvalidSubnetConfig(f"head_layout = {brief(layout)}; choose padded or grouped")
    return [(h, c) for h, c in heads] if layout == "grouped" else _pad(heads, pad_to)


def _pad(heads: list[tuple[int, Tensor]], pad_to: int) -> list[tuple[int, Tensor]]:
    width = math.ceil(max(len(c) for _, c in heads) / pad_to) * pad_to if heads else 0
    return [(h, F.pad(c, (0, width - len(c)), value=-1)) for h, c in heads]  # -1: a zero (padding) channel


def _groups(heads: list[tuple[int, Tensor]]) -> tuple[tuple[int, int], ...]:
    groups: list[list[int]] = []
    for _, c in heads:
        if groups and groups[-1][1] == len(c):
            groups[-1][0] += 1
        else:
            groups.append([1, len(c)])
    return tuple((n, w) for n, w in groups)


def _attention_weights(attn: SlimAttention, heads: list[tuple[int, Tensor]], p: str, E: int) -> dict[str, Tensor]:
    """qkv rows and proj columns of the kept channels, in the dense layout: per group of equal width [q | k | v],
    heads side by side; a channel index -1 is zero padding (zero rows, zero bias, zero proj column)."""
    d = attn.head_dim
    rows, bias, cols = [], [], []
    for group in _group_slices(heads):
        for part in range(3):
            for h, c in group:
                index = part * E + h * d + c.clamp(min=0)
                keep = (c >= 0).to(attn.qkv.weight.dtype)
                rows.append(attn.qkv.weight[index] * keep[:, None])
                bias.append(attn.qkv.bias[index] * keep)
        for h, c in group:
            cols.append(attn.proj.weight[:, h * d + c.clamp(min=0)] * (c >= 0).to(attn.proj.weight.dtype))
    return {p + "attn.qkv.weight": torch.cat(rows), p + "attn.qkv.bias": torch.cat(bias),
            p + "attn.proj.weight": torch.cat(cols, dim=1), p + "attn.proj.bias": attn.proj.bias}


def _group_slices(heads: list[tuple[int, Tensor]]) -> list[list[tuple[int, Tensor]]]:
    """Consecutive heads of equal width (padded heads all share one width: one group)."""
    groups: list[list[tuple[int, Tensor]]] = []
    for h, c in heads:
        if groups and len(groups[-1][0][1]) == len(c):
            groups[-1].append((h, c))
        else:
            groups.append([(h, c)])
    return groups


def _fresh(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


# --- the official checkpoint format -----------------------------------------------------------------------------
def mask_kind(shape: tuple[int, ...], embed_dim: int) -> tuple[str, int]:
    """(variant, heads) from the shape of blocks.0.attn.zeta: (1,1,H,1,d) channel, (1,1,H,1,1) head, (1,1,1,1,d)
    uniform (heads then from E / d)."""
    if len(shape) != 5 or shape[:2] != (1, 1) or shape[3] != 1:
        raise CheckpointError(f"attn.zeta has shape {shape}; ViT-Slim masks are (1,1,H,1,d), (1,1,H,1,1) or "
                              "(1,1,1,1,d)")
    H, d = shape[2], shape[4]
    if H > 1 and d > 1 and H * d == embed_dim:
        return "channel", H
    if d == 1 and H > 1 and embed_dim % H == 0:
        return "head", H
    if H == 1 and d > 1 and embed_dim % d == 0:
        return "uniform", embed_dim // d
    if H == 1 and d == 1:
        return "head", 1
    raise CheckpointError(f"attn.zeta has shape {shape}, which matches no ViT-Slim mask of an embed dim of "
                          f"{embed_dim} (channel (1,1,H,1,E/H), head (1,1,H,1,1), uniform (1,1,1,1,E/H))")


def arch_from_state_dict(sd: dict[str, Tensor], num_heads: int | None = None, mask: str | None = None,
                         **layout: Any) -> SlimArch:
    """Sizes from the shapes of a timm-layout DeiT state dict (with or without the ViT-Slim masks; without, the
    `mask` variant, default channel)."""
    needed = ["patch_embed.proj.weight", "cls_token", "pos_embed", "blocks.0.attn.qkv.weight",
              "blocks.0.mlp.fc1.weight", "head.weight"]
    missing = [k for k in needed if k not in sd]
    if missing:
        raise CheckpointError(f"not a ViT (timm/DeiT layout) state dict: missing {', '.join(missing)} (found "
                              f"{len(sd)} keys, e.g. {', '.join(brief(k, 50) for k in list(sd)[:3])})")
    if "dist_token" in sd or "head_dist.weight" in sd:
        raise CheckpointError("a distilled DeiT (dist_token, two class tokens): ViT-Slim's token masks assume one "
                              "class token (its patch_zeta has 1 + patches positions); use the non-distilled model")
    conv, pos = tuple(sd["patch_embed.proj.weight"].shape), tuple(sd["pos_embed"].shape)
    E, patch = conv[0], conv[-1]
    grid = math.isqrt(pos[1] - 1) if len(pos) == 3 and pos[1] > 1 else 0
    if len(conv) != 4 or grid * grid != pos[1] - 1 or pos[2] != E:
        raise CheckpointError(f"patch_embed.proj.weight {conv} and pos_embed {pos} are not a ViT with a class token")
    blocks = {k.split(".")[1] for k in sd if k.startswith("blocks.")}
    deep = sorted((b for b in blocks if b.isdecimal() and (len(b) > 5 or int(b) >= MAX_DEPTH)), key=len)
    if deep:  # read as a length before int(): a number of thousands of digits is refused, not parsed
        raise CheckpointError(f"the checkpoint has a block numbered {brief(deep[-1], 40)}; a ViT has at most "
                              f"{MAX_DEPTH} blocks (0..{MAX_DEPTH - 1})")
    # the blocks that hold a ViT block's own tensors: a stray key (blocks.99.extra.weight) is an unexpected key,
    # named as such by the load, not a block 99 that makes every block in between missing
    depth = 1 + max(int(b) for b in blocks if b.isdecimal() and any(f"blocks.{b}.{k}" in sd for k in BLOCK_KEYS))
    kind, heads = mask or "channel", num_heads or E // DEIT_HEAD_DIM  # DeiT heads are 64 wide
    if "blocks.0.attn.zeta" not in sd and num_heads is None and E % DEIT_HEAD_DIM:
        raise CheckpointError(f"embed dim {E} is not a multiple of {DEIT_HEAD_DIM} (a DeiT's head width), and the "
                              "checkpoint has no masks or args that tell its head count: give it with "
                              f"--import-option num_heads=N (N divides {E})")
    if "blocks.0.attn.zeta" in sd:
        kind, heads = mask_kind(tuple(sd["blocks.0.attn.zeta"].shape), E)
        if mask is not None and mask != kind:
            raise CheckpointError(f"the checkpoint's masks are the {kind!r} variant, not {mask!r}")
    if num_heads is not None and num_heads != heads:
        raise CheckpointError(f"the masks say {heads} heads, the import option num_heads {num_heads}")
    if E % heads:
        raise CheckpointError(f"embed dim {E} does not split into {heads} heads; pass --import-option num_heads=N")
    return SlimArch(E, depth, heads, sd["blocks.0.mlp.fc1.weight"].shape[0], grid * patch, patch, conv[1],
                    sd["head.weight"].shape[0], kind, **layout)


MASK_KEYS = ("attn.zeta", "attn.patch_zeta", "mlp.zeta")
BLOCK_KEYS = ("norm1.weight", "attn.qkv.weight", "attn.proj.weight", "norm2.weight", "mlp.fc1.weight",
              "mlp.fc2.weight", *MASK_KEYS)


def with_masks(sd: dict[str, Tensor], arch: SlimArch) -> dict[str, Tensor]:
    """A plain DeiT state dict (no mask at all) gets the masks at their official initial values (zeta 1, patch_zeta
    3); one with masks must have every block's three (a mask filled in would prune the wrong channels)."""
    names = [f"blocks.{i}.{k}" for i in range(arch.depth) for k in MASK_KEYS]
    missing = [k for k in names if k not in sd]
    if missing and len(missing) < len(names):
        more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
        raise CheckpointError(f"the checkpoint has ViT-Slim masks but not {', '.join(missing[:6])}{more}; a searched "
                              f"checkpoint holds {', '.join(MASK_KEYS)} for every block (a plain DeiT none)")
    if not missing:
        return sd
    sd = dict(sd)
    for i in range(arch.depth):
        sd[f"blocks.{i}.attn.zeta"] = torch.ones(zeta_shape(arch))
        sd[f"blocks.{i}.attn.patch_zeta"] = torch.full((1, arch.num_tokens, 1), PATCH_ZETA_INIT)
        sd[f"blocks.{i}.mlp.zeta"] = torch.ones(1, 1, arch.mlp_hidden)
    return sd


def stored_budgets(obj: Any) -> dict[str, float]:
    """The budgets a checkpoint's `args` store (search.py/retrain.py's, or our own dict), all three or fewer; each
    checked."""
    values = stored_args(obj)
    try:
        return {k: check_budget(values[k], k) for k in BUDGET_KEYS if k in values}
    except InvalidSubnetConfig as err:
        raise CheckpointError(f"the checkpoint's stored budgets are invalid: {err}") from None


def head_count_note(sd: dict[str, Tensor], arch: SlimArch, options_heads: int | None, source: str) -> str | None:
    """The note for a DeiT whose head count nothing tells (no masks, no num_heads option or stored arg): the count
    assumed from DeiT's 64-wide heads, and how to give another."""
    if options_heads is not None or "blocks.0.attn.zeta" in sd:
        return None
    return (f"note: {source} does not record its head count: assumed {arch.num_heads} heads of {arch.head_dim} "
            f"channels (a DeiT's); if the model has others, give them with --import-option num_heads=N")


def args_heads(obj: Any) -> int | None:
    """A head count stored in the checkpoint's args (`num_heads`), if one is there and is a positive integer."""
    heads = stored_args(obj).get("num_heads")
    return heads if isinstance(heads, int) and not isinstance(heads, bool) and heads > 0 else None


def unpruned(model: SlimViT, cfg: SlimConfig) -> str | None:
    """A warning when a budget below 1 removed nothing of its mask family: ties at the threshold are kept, and on
    masks at their initial values (a DeiT never searched: every value equal) every budget keeps everything."""
    if cfg.soft:
        return None
    families = (("attention channels", cfg.budget_attn, [b.attn.zeta for b in model.blocks], 0),
                ("MLP units", cfg.budget_mlp, [b.mlp.zeta for b in model.blocks], 2),
                ("tokens", cfg.budget_patch, [torch.tanh(b.attn.patch_zeta) for b in model.blocks], 1))
    masks = model.binary_masks(cfg)
    whole, equal = [], True
    for name, budget, values, index in families:
        kept = [m[index].expand_as(v) for m, v in zip(masks, values)]
        if budget < 1 and all(bool(k.all()) for k in kept):
            whole.append(f"{name} (budget {budget:g})")
            flat = torch.cat([v.detach().reshape(-1) for v in values])
            equal = equal and bool((flat == flat[0]).all())
    if not whole:
        return None
    why = ("every value of those masks is equal (untrained: at their initial values, as in a DeiT never searched) "
           "and ties are kept" if equal else "their values tie at the threshold, and ties are kept")
    return (f"warning: the budgets removed nothing of the {', '.join(whole)}: {why}, so those stay unpruned; search "
            "the masks first (`deploy-nas slim search --base CHECKPOINT`)")


def with_layout(model: SlimViT, head_layout: str | None = None, pad_to: int | None = None) -> SlimViT:
    """The same masked model with another dense layout of ragged heads (None: keep; the grouped layout pads
    nothing, so it takes no `pad_to` and drops a stored one)."""
    layout = {k: v for k, v in (("head_layout", head_layout), ("pad_to", pad_to)) if v is not None}
    if head_layout or pad_to is not None:
        check_layout(head_layout or model.arch.head_layout, pad_to)
    if head_layout == "grouped":
        layout["pad_to"] = 1
    if layout:
        model.arch = replace(model.arch, **layout)
    return model


def check_layout(head_layout: str, pad_to: int | None) -> None:
    """InvalidSubnetConfig for a pad_to next to the grouped layout (it would change nothing)."""
    if head_layout == "grouped" and pad_to not in (None, 1):
        raise InvalidSubnetConfig(f"pad_to {brief(pad_to)} rounds up padded head widths, and the grouped head layout "
                                  "pads nothing (one attention per width): drop pad_to (--pad-to) or use the padded "
                                  "layout")


def prune_config(model: SlimViT, budgets: dict[str, float | None], soft: bool = False) -> SlimConfig:
    """The config `slim prune` materializes: the budgets given, the rest from those the checkpoint stores."""
    given = {k: v for k, v in budgets.items() if v is not None}
    if soft:
        if given:
            raise InvalidSubnetConfig("--soft folds the soft masks as they are; give no budgets with it")
        return SlimConfig(soft=True)
    stored = model.budgets.to_dict() if model.budgets is not None else dict(getattr(model, "stored_budgets", {}))
    missing = [k for k in BUDGET_KEYS if k not in given and k not in stored]
    if missing:
        has = [k for k in BUDGET_KEYS if k in stored]
        what = f"its args store only {', '.join(has)}" if has else "the checkpoint stores none in its args"
        raise InvalidSubnetConfig(f"no {', '.join('--' + k.replace('_', '-') for k in missing)}: give the budgets "
                                  f"({what}), or --soft")
    return SlimConfig(**{k: given.get(k, stored.get(k)) for k in ("budget_attn", "budget_mlp", "budget_patch")})


def space_for(arch: SlimArch) -> SlimSpace:
    """The registered space of this base if there is one, else one made from its sizes."""
    for name in SPACES:
        s = SPACES.get(name)
        if s.family == FAMILY and SlimArch.from_space(s, head_layout=arch.head_layout, pad_to=arch.pad_to) == arch:
            return s
    return SlimSpace(f"vitslim-{arch.embed_dim}x{arch.depth}", arch.embed_dim, arch.depth, arch.num_heads,
                     arch.mlp_hidden, arch.img_size, arch.patch_size, arch.in_chans, arch.num_classes, arch.mask,
                     norm_eps=arch.norm_eps)


@dataclass(frozen=True)
class SlimImportOptions:
    """What a DeiT checkpoint cannot tell: its head count and mask variant when it carries no masks (DeiT heads
    are 64 wide; channel masks), and how the dense model lays out heads of different widths (padded: zero channels
    up to the widest, rounded to `pad_to`, 8 for TensorRT; grouped: one attention per width)."""

    num_heads: int | None = None
    head_layout: str = "padded"
    pad_to: int = 1
    mask: str | None = None  # channel | head | uniform: the masks a DeiT without them gets (checked when it has them)


class ViTSlimFamily:
    name = FAMILY
    config_type = SlimConfig
    space_type = SlimSpace
    import_options = SlimImportOptions
    train_rule = "slim"
    tiny_space = "vitslim-tiny"
    default_space = "vitslim-tiny"
    # search.py's recipe: a constant learning rate (`--sched none`; min_lr follows a --lr given alone)
    train_defaults = {"lr": 5e-4, "min_lr": 5e-4, "weight_decay": 1e-3, "warmup_epochs": 0.0, "label_smoothing": 0.1}

    def config_from_dict(self, obj: Any) -> SlimConfig:
        return SlimConfig.from_dict(obj)

    def config_warning(self, supernet: SlimViT, config: SlimConfig) -> str | None:
        return unpruned(supernet, config)

    def commands(self) -> tuple[Any, ...]:
        from deploy_nas.cli_slim import slim

        return (slim,)

    def space_from_dict(self, obj: Any, name: str | None = None) -> SlimSpace:
        return SlimSpace.from_dict(obj, name=name)

    def claims(self, state_dict: dict[str, Tensor]) -> bool:
        return "blocks.0.attn.qkv.weight" in state_dict and "cls_token" in state_dict \
            and "blocks.0.norm1.weight" in state_dict

    def from_checkpoint(self, obj: Any, options: SlimImportOptions, source: str = "checkpoint") -> tuple[SlimViT, Any]:
        if options.head_layout not in ("padded", "grouped") or not 1 <= options.pad_to <= MAX_PAD_TO \
                or options.mask not in (None, "channel", "head", "uniform"):
            raise InvalidSubnetConfig(f"import options head_layout={brief(options.head_layout)} (padded or grouped), "
                                      f"pad_to={options.pad_to} (1..{MAX_PAD_TO}), mask={brief(options.mask)} "
                                      "(channel, head or uniform)")
        check_layout(options.head_layout, options.pad_to)
        if isinstance(obj, nn.Module):  # a timm model object
            obj = obj.state_dict()
        sd = extract_state_dict(obj, source)
        heads = options.num_heads if options.num_heads is not None or "blocks.0.attn.zeta" in sd else args_heads(obj)
        arch = arch_from_state_dict(sd, heads, options.mask, head_layout=options.head_layout,
                                    pad_to=options.pad_to)
        note = head_count_note(sd, arch, heads, source)
        sd = with_masks(sd, arch)
        model = SlimViT(arch)
        check_state_dict(model, sd, FAMILY, "check the file is a DeiT/ViT-Slim checkpoint (timm layout)")
        model.load_state_dict(sd, strict=True)
        model.stored_budgets = stored_budgets(obj)  # the budgets a searched checkpoint was made for, when all three
        model.budgets = SlimConfig(**model.stored_budgets) if len(model.stored_budgets) == len(BUDGET_KEYS) else None
        if note:
            print(note, file=sys.stderr)
        return model.eval(), space_for(arch)

    def load_official(self, path: Any, options: SlimImportOptions) -> tuple[SlimViT, Any]:
        """A DeiT file ({'model': ...}), a plain timm state dict, or a ViT-Slim search/retrain checkpoint."""
        return self.from_checkpoint(read_checkpoint(path), options, str(path))

    def build_supernet(self, space: SlimSpace, seed: int | None = 0) -> SlimViT:
        """A DeiT of the space's sizes in timm's initialisation (truncated normal .02, zero biases, unit norms)."""
        model = SlimViT(SlimArch.from_space(space))
        g = torch.Generator().manual_seed(seed or 0)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "zeta" in name:
                    continue
                if p.dim() == 1:
                    p.fill_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
                else:
                    nn.init.trunc_normal_(p, std=0.02, generator=g)
        return model.eval()

    def supernet_from_meta(self, meta: dict[str, Any]) -> SlimViT:
        model = SlimViT(SlimArch.from_dict(meta["arch"]))
        if meta.get("budgets"):
            model.budgets = SlimConfig.from_dict(meta["budgets"])
        return model

    def cost_features(self, space: SlimSpace, cfg: SlimConfig) -> dict[str, float]:
        """Per-image MACs (millions) of the GEMMs and attention maps at the budgets' kept fractions."""
        n, E, L = space.num_tokens * cfg.budget_patch, space.embed_dim, space.depth
        q, h = E * cfg.budget_attn, space.mlp_hidden * cfg.budget_mlp
        return {"const": 1.0, "depth": float(L), "attn_macs": L * n * E * 4 * q / 1e6,
                "mlp_macs": L * 2 * n * E * h / 1e6, "attn_map": L * 2 * n * n * q / 1e6}

    def tolerances(self) -> dict:
        return {}


FAMILIES.register(FAMILY, ViTSlimFamily())
