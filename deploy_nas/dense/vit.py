"""The dense `vit` arch: a standalone ViT with a cls token, an explicit attention scale per block and, optionally,
AutoFormer's 2D relative-position terms (lowered through `deploy_nas.kernels.relpos`, never as (N, N, D) tensors).

q is scaled before q @ k^T (TensorRT's fused attention needs the scale on Q or K before the first batched matmul;
NVIDIA names stability and speed as the reasons); the scaled q also feeds the relative-position keys term, which
AutoFormer scales by the same factor.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from deploy_nas.console import Table
from deploy_nas.dense.layers import Mlp, PatchEmbed, count_parameters, merge_heads, pool_tokens, split_heads
from deploy_nas.dense.spec import ARCHS, LEGACY_READERS, DenseSpec
from deploy_nas.kernels import relpos

ARCH = "vit"
LOWERINGS = ("augmented", "separable", "gather")


@dataclass(frozen=True)
class ViTBlockSpec:
    num_heads: int
    head_dim: int
    attn_scale: float  # always explicit: pruning heads or head dims must not change it
    mlp_hidden: int
    qkv_bias: bool = True
    relative_position: bool = False


@dataclass(frozen=True)
class ViTSpec:
    """The body of a `vit` spec."""

    patch_size: int
    embed_dim: int
    blocks: tuple[ViTBlockSpec, ...]
    pos_embed: bool = True
    pool: str = "cls"  # "cls" | "mean" (over patch tokens only; the cls token still attends)
    pre_norm: bool = True
    norm_eps: float = 1e-5
    activation: str = "gelu_erf"  # "gelu_erf" | "gelu_tanh"
    max_relative_position: int | None = None
    # how the relative-position terms lower (kernels/relpos.py; all exact): "augmented" (inside one QK and one AV
    # matmul), "separable" (per-row tables, batched MatMuls, broadcast adds) or "gather" (GatherElements and
    # ScatterElements over (N, N) indices: the lowering used before 2026-12, kept to measure against)
    relpos_lowering: str = "augmented"

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViTSpec:
        known = {f.name for f in fields(cls)}
        body = {k: v for k, v in d.items() if k in known}
        body["blocks"] = tuple(ViTBlockSpec(**b) for b in d["blocks"])
        return cls(**body)


def _format1(d: dict[str, Any]) -> DenseSpec:
    """spec.json format 1: one flat ViT spec (the only arch there was)."""
    from deploy_nas.errors import DenseModelError

    if d.get("arch") != ARCH:
        raise DenseModelError(f"spec.json format 1 with arch {str(d.get('arch'))[:20]!r}; format 1 only had 'vit'")
    try:
        return DenseSpec(ARCH, int(d["img_size"]), int(d["in_chans"]), int(d["num_classes"]), ViTSpec.from_dict(d),
                         source=dict(d.get("source") or {}))
    except (TypeError, KeyError, ValueError) as err:
        raise DenseModelError(f"spec.json (format 1) is not a valid vit spec ({type(err).__name__}: "
                              f"{str(err)[:200]}); re-extract the model") from err


LEGACY_READERS[1] = _format1


class RelativePosition(nn.Module):
    """The two (2R+2, head_dim) tables of one relative-position term (shared by the heads)."""

    def __init__(self, rows: int, head_dim: int):
        super().__init__()
        self.table_v = nn.Parameter(torch.zeros(rows, head_dim))
        self.table_h = nn.Parameter(torch.zeros(rows, head_dim))


class Attention(nn.Module):
    def __init__(self, dim: int, spec: ViTBlockSpec, rel_rows: int | None, lowering: str = "separable"):
        super().__init__()
        if lowering not in LOWERINGS:
            raise ValueError(f"unknown relative-position lowering {lowering!r}; choose one of {LOWERINGS}")
        self.lowering = lowering
        self.num_heads, self.head_dim, self.scale = spec.num_heads, spec.head_dim, spec.attn_scale
        inner = spec.num_heads * spec.head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=spec.qkv_bias)
        self.proj = nn.Linear(inner, dim)
        self.relative_position = spec.relative_position
        if self.relative_position:
            self.rel_pos_k = RelativePosition(rel_rows, spec.head_dim)
            self.rel_pos_v = RelativePosition(rel_rows, spec.head_dim)

    def forward(self, x: Tensor, index: tuple[Tensor, ...]) -> Tensor:
        q, k, v = split_heads(self.qkv(x), 3, self.num_heads, self.head_dim)  # each (B, H, N, d)
        q = q * self.scale
        if self.relative_position and self.lowering == "augmented":
            out = relpos.attention(q, k, v, (self.rel_pos_k.table_v, self.rel_pos_k.table_h),
                                   (self.rel_pos_v.table_v, self.rel_pos_v.table_h), index[2], index[3])
            return self.proj(merge_heads(out))
        attn = q @ k.transpose(-2, -1)
        if self.relative_position:
            attn = attn + self._keys(q, index)
        attn = attn.softmax(dim=-1)
        out = attn @ v
        if self.relative_position:
            out = out + self._values(attn, index)
        return self.proj(merge_heads(out))

    def _keys(self, q: Tensor, index: tuple[Tensor, ...]) -> Tensor:
        tables = (self.rel_pos_k.table_v, self.rel_pos_k.table_h)
        if self.lowering == "gather":
            return relpos.key_logits_gather(q, *tables, index[0], index[1])
        return relpos.key_logits(q, *tables, index[2])

    def _values(self, attn: Tensor, index: tuple[Tensor, ...]) -> Tensor:
        tables = (self.rel_pos_v.table_v, self.rel_pos_v.table_h)
        if self.lowering == "gather":
            return relpos.value_term_scatter(attn, *tables, index[0], index[1])
        return relpos.value_term(attn, *tables, index[2])


class Block(nn.Module):
    def __init__(self, dim: int, spec: ViTBlockSpec, body: ViTSpec, rel_rows: int | None):
        super().__init__()
        self.pre_norm = body.pre_norm
        self.norm1 = nn.LayerNorm(dim, eps=body.norm_eps)
        self.norm2 = nn.LayerNorm(dim, eps=body.norm_eps)
        self.attn = Attention(dim, spec, rel_rows, body.relpos_lowering)
        self.mlp = Mlp(dim, spec.mlp_hidden, body.activation)

    def forward(self, x: Tensor, index: tuple[Tensor, ...]) -> Tensor:
        if self.pre_norm:
            x = x + self.attn(self.norm1(x), index)
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x, index))
        return self.norm2(x + self.mlp(x))


class VisionTransformer(nn.Module):
    """A standalone ViT. Input (B, C, H, W) float32, output (B, num_classes) logits."""

    body_type = ViTSpec

    def __init__(self, spec: DenseSpec):
        super().__init__()
        self.spec = spec
        b: ViTSpec = spec.body
        E = b.embed_dim
        self.patch_embed = PatchEmbed(b.patch_size, spec.in_chans, E)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, E))
        grid = spec.img_size // b.patch_size
        if b.pos_embed:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, E))
        rows = 2 * b.max_relative_position + 2 if any(s.relative_position for s in b.blocks) else None
        self.blocks = nn.ModuleList(Block(E, s, b, rows) for s in b.blocks)
        self.norm = nn.LayerNorm(E, eps=b.norm_eps) if b.pre_norm else nn.Identity()
        self.head = nn.Linear(E, spec.num_classes)
        # Index constants shared by every block (not weights: rebuilt from the spec): the (G, G) offsets of the
        # separable form, or the (N, N) indices of the gather form.
        R = b.max_relative_position or 0
        iv, ih = relpos.relative_position_index(grid, R) if b.relpos_lowering == "gather" else (None, None)
        self.register_buffer("rel_index_v", iv, persistent=False)
        self.register_buffer("rel_index_h", ih, persistent=False)
        self.register_buffer("rel_offset", relpos.offset_index(grid, R), persistent=False)
        self.register_buffer("rel_features", relpos.indicator_features(grid), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, N, E)
        if self.spec.body.pos_embed:
            x = x + self.pos_embed
        index = (self.rel_index_v, self.rel_index_h, self.rel_offset, self.rel_features)
        for block in self.blocks:
            x = block(x, index)
        return self.head(pool_tokens(self.norm(x), self.spec.body.pool))

    def architecture_table(self, macs_by_module: dict[str, int]) -> Table:
        b: ViTSpec = self.spec.body
        table = Table(f"{self.spec.source.get('family', ARCH)} {self.spec.source.get('config_id', '')}  "
                      f"{self.spec.img_size}px/{b.patch_size}  embed {b.embed_dim}  depth {b.depth}  pool {b.pool}",
                      ("block", "heads", "head dim", "Q", "scale", "MLP", "rel-pos", "params", "MMAC"))
        for i, (s, blk) in enumerate(zip(b.blocks, self.blocks)):
            table.add_row(i, s.num_heads, s.head_dim, s.num_heads * s.head_dim, f"{s.attn_scale:.4g}", s.mlp_hidden,
                          "yes" if s.relative_position else "no", f"{count_parameters(blk):,}",
                          f"{macs_by_module.get(f'blocks.{i}', 0) / 1e6:.1f}")
        return table


ARCHS.register(ARCH, VisionTransformer)
