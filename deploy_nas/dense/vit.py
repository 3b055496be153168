"""The dense ViT rebuilt from a DenseSpec: plain modules, explicit attention scale, relative position via kernels."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from deploy_nas.dense.spec import BlockSpec, DenseSpec
from deploy_nas.kernels import relpos


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, E, h, w) -> (B, N, E)


class RelativePosition(nn.Module):
    """The two (2R+2, head_dim) tables of one relative-position term (shared by the heads)."""

    def __init__(self, rows: int, head_dim: int):
        super().__init__()
        self.table_v = nn.Parameter(torch.zeros(rows, head_dim))
        self.table_h = nn.Parameter(torch.zeros(rows, head_dim))


class Attention(nn.Module):
    def __init__(self, dim: int, spec: BlockSpec, rel_rows: int | None):
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
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, N, d)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        if self.relative_position:
            attn = attn + relpos.key_logits(q, self.rel_pos_k.table_v, self.rel_pos_k.table_h, iv, ih) * self.scale
        attn = attn.softmax(dim=-1)
        out = attn @ v
        if self.relative_position:
            out = out + relpos.value_term(attn, self.rel_pos_v.table_v, self.rel_pos_v.table_h, iv, ih)
        return self.proj(out.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, approximate: str):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.act = nn.GELU(approximate=approximate)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, spec: BlockSpec, pre_norm: bool, eps: float, approximate: str,
                 rel_rows: int | None):
        super().__init__()
        self.pre_norm = pre_norm
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, spec, rel_rows)
        self.mlp = Mlp(dim, spec.mlp_hidden, approximate)

    def forward(self, x: Tensor, iv: Tensor, ih: Tensor) -> Tensor:
        if self.pre_norm:
            x = x + self.attn(self.norm1(x), iv, ih)
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x, iv, ih))
        return self.norm2(x + self.mlp(x))


class VisionTransformer(nn.Module):
    """A standalone ViT. Input (B, C, H, W) float32, output (B, num_classes) logits."""

    def __init__(self, spec: DenseSpec):
        super().__init__()
        self.spec = spec
        E = spec.embed_dim
        self.patch_embed = PatchEmbed(spec.patch_size, spec.in_chans, E)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, E))
        if spec.pos_embed:
            self.pos_embed = nn.Parameter(torch.zeros(1, spec.num_tokens, E))
        rows = None
        if any(b.relative_position for b in spec.blocks):
            rows = 2 * spec.max_relative_position + 2
        approximate = "none" if spec.activation == "gelu_erf" else "tanh"
        self.blocks = nn.ModuleList(Block(E, b, spec.pre_norm, spec.norm_eps, approximate, rows) for b in spec.blocks)
        self.norm = nn.LayerNorm(E, eps=spec.norm_eps) if spec.pre_norm else nn.Identity()
        self.head = nn.Linear(E, spec.num_classes)
        # One pair of (N, N) index constants shared by every block (not weights: rebuilt from the spec).
        grid = spec.img_size // spec.patch_size
        iv, ih = relpos.relative_position_index(grid, spec.max_relative_position or 0)
        self.register_buffer("rel_index_v", iv, persistent=False)
        self.register_buffer("rel_index_h", ih, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, N, E)
        if self.spec.pos_embed:
            x = x + self.pos_embed
        for block in self.blocks:
            x = block(x, self.rel_index_v, self.rel_index_h)
        x = self.norm(x)
        x = x[:, 1:].mean(dim=1) if self.spec.pool == "mean" else x[:, 0]
        return self.head(x)
