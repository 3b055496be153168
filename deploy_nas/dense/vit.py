"""The dense `vit` arch: a standalone ViT with a cls token, an explicit attention scale per block and, optionally,
AutoFormer's 2D relative-position terms (lowered through `deploy_nas.kernels.relpos`, never as (N, N, D) tensors).
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
    def __init__(self, dim: int, spec: ViTBlockSpec, rel_rows: int | None):
        super().__init__()
        self.num_heads, self.head_dim, self.scale = spec.num_heads, spec.head_dim, spec.attn_scale
        inner = spec.num_heads * spec.head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=spec.qkv_bias)
        self.proj = nn.Linear(inner, dim)
        self.relative_position = spec.relative_position
        if self.relative_position:
            self.rel_pos_k = RelativePosition(rel_rows, spec.head_dim)
            self.rel_pos_v = RelativePosition(rel_rows, spec.head_dim)

    def forward(self, x: Tensor, iv: Tensor, ih: Tensor) -> Tensor:
        q, k, v = split_heads(self.qkv(x), 3, self.num_heads, self.head_dim)  # each (B, H, N, d)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        if self.relative_position:
            attn = attn + relpos.key_logits(q, self.rel_pos_k.table_v, self.rel_pos_k.table_h, iv, ih) * self.scale
        attn = attn.softmax(dim=-1)
        out = attn @ v
        if self.relative_position:
            out = out + relpos.value_term(attn, self.rel_pos_v.table_v, self.rel_pos_v.table_h, iv, ih)
        return self.proj(merge_heads(out))


class Block(nn.Module):
    def __init__(self, dim: int, spec: ViTBlockSpec, body: ViTSpec, rel_rows: int | None):
        super().__init__()
        self.pre_norm = body.pre_norm
        self.norm1 = nn.LayerNorm(dim, eps=body.norm_eps)
        self.norm2 = nn.LayerNorm(dim, eps=body.norm_eps)
        self.attn = Attention(dim, spec, rel_rows)
        self.mlp = Mlp(dim, spec.mlp_hidden, body.activation)

    def forward(self, x: Tensor, iv: Tensor, ih: Tensor) -> Tensor:
        if self.pre_norm:
            x = x + self.attn(self.norm1(x), iv, ih)
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x, iv, ih))
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
        # One pair of (N, N) index constants shared by every block (not weights: rebuilt from the spec).
        iv, ih = relpos.relative_position_index(grid, b.max_relative_position or 0)
        self.register_buffer("rel_index_v", iv, persistent=False)
        self.register_buffer("rel_index_h", ih, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, N, E)
        if self.spec.body.pos_embed:
            x = x + self.pos_embed
        for block in self.blocks:
            x = block(x, self.rel_index_v, self.rel_index_h)
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
