"""Weight-sharing modules: full-size parameters, sliced per call by explicit sizes (no stored "active subnet").

Each module exposes `sliced(...)`, the exact tensors a subnet uses; `forward` and materialization both call it,
so the supernet and the dense model can only disagree through their compute, never through their slicing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deploy_nas.errors import InvalidSubnetConfig
from deploy_nas.kernels import relpos


class ElasticLinear(nn.Linear):
    """Prefix slicing: weight[:out, :in], bias[:out] (Cream LinearSuper)."""

    def sliced(self, in_features: int, out_features: int) -> tuple[Tensor, Tensor | None]:
        bias = self.bias[:out_features] if self.bias is not None else None
        return self.weight[:out_features, :in_features], bias

    def forward(self, x: Tensor, out_features: int) -> Tensor:  # type: ignore[override]
        return F.linear(x, *self.sliced(x.shape[-1], out_features))


class ElasticQKV(nn.Linear):
    """Fused qkv with AutoFormer's `change_qkv` slicing: interleaved weight rows, contiguous bias prefix.

    q channel j is super row 3j, k channel j is row 3j+1, v channel j is row 3j+2; the bias is b[:3Q] as is.
    The result is laid out [q | k | v], each head-major, like a dense fused qkv.
    """

    def sliced(self, in_features: int, q_dim: int) -> tuple[Tensor, Tensor | None]:
        w = self.weight[:, :in_features]
        w = torch.cat([w[i::3][:q_dim] for i in range(3)], dim=0)  # (3Q, E)
        bias = self.bias[: 3 * q_dim] if self.bias is not None else None
        return w, bias

    def forward(self, x: Tensor, q_dim: int) -> Tensor:  # type: ignore[override]
        return F.linear(x, *self.sliced(x.shape[-1], q_dim))


class ElasticLayerNorm(nn.LayerNorm):
    """LayerNorm over the first C channels (weight[:C], bias[:C]); eps 1e-5 as the official code."""

    def sliced(self, dim: int) -> tuple[Tensor, Tensor]:
        return self.weight[:dim], self.bias[:dim]

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        c = x.shape[-1]
        return F.layer_norm(x, (c,), *self.sliced(c), self.eps)


class ElasticPatchEmbed(nn.Module):
    """Conv patch embedding keeping the first E output channels; (B, C, H, W) -> (B, N, E)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.img_size, self.patch_size = img_size, patch_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def sliced(self, embed_dim: int) -> tuple[Tensor, Tensor]:
        return self.proj.weight[:embed_dim], self.proj.bias[:embed_dim]

    def forward(self, x: Tensor, embed_dim: int) -> Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise InvalidSubnetConfig(f"input is {tuple(x.shape[-2:])}, the supernet takes "
                                      f"{self.img_size}x{self.img_size}")
        x = F.conv2d(x, *self.sliced(embed_dim), stride=self.patch_size)
        return x.flatten(2).transpose(1, 2)  # (B, E, h, w) -> (B, N, E)


class ElasticRelativePosition2D(nn.Module):
    """The two (2R+2, D) tables of one relative-position term, shared across heads; sliced to the head dim."""

    def __init__(self, head_dim: int, max_relative_position: int):
        super().__init__()
        self.max_relative_position = max_relative_position
        rows = 2 * max_relative_position + 2
        self.embeddings_table_v = nn.Parameter(torch.empty(rows, head_dim))
        self.embeddings_table_h = nn.Parameter(torch.empty(rows, head_dim))

    def sliced(self, head_dim: int) -> tuple[Tensor, Tensor]:
        return self.embeddings_table_v[:, :head_dim], self.embeddings_table_h[:, :head_dim]


class ElasticAttention(nn.Module):
    """Cream AttentionSuper. With `change_qkv`, Q = heads * head_dim and the scale is head_dim**-0.5; without it
    (legacy mode) q/k/v keep the full super width, head dim = E_sup / heads and the scale is (E // heads)**-0.5."""

    def __init__(self, super_embed_dim: int, head_dim: int, qkv_bias: bool, change_qkv: bool,
                 relative_position: bool, max_relative_position: int, table_dim: int, reference_relpos: bool):
        super().__init__()
        self.super_embed_dim, self.head_dim, self.change_qkv = super_embed_dim, head_dim, change_qkv
        qkv_cls = ElasticQKV if change_qkv else ElasticLinear
        self.qkv = qkv_cls(super_embed_dim, 3 * super_embed_dim, bias=qkv_bias)
        self.proj = ElasticLinear(super_embed_dim, super_embed_dim)
        self.relative_position = relative_position
        self.reference_relpos = reference_relpos
        if relative_position:
            self.rel_pos_embed_k = ElasticRelativePosition2D(table_dim, max_relative_position)
            self.rel_pos_embed_v = ElasticRelativePosition2D(table_dim, max_relative_position)

    def dims(self, embed_dim: int, num_heads: int) -> tuple[int, int, float]:
        """(Q, head dim, scale) of a block with this embed dim and head count, exactly as the official code."""
        if self.change_qkv:
            q_dim = num_heads * self.head_dim
        else:
            q_dim = self.super_embed_dim
        return q_dim, q_dim // num_heads, float((q_dim if self.change_qkv else embed_dim) // num_heads) ** -0.5

    def sliced_qkv(self, embed_dim: int, q_dim: int) -> tuple[Tensor, Tensor | None]:
        if self.change_qkv:
            return self.qkv.sliced(embed_dim, q_dim)
        return self.qkv.sliced(embed_dim, 3 * q_dim)

    def forward(self, x: Tensor, num_heads: int, rel_index: tuple[Tensor, Tensor, Tensor] | None) -> Tensor:
        """`rel_index`: (iv, ih) for the reference form and the (G, G) offset index for the separable one."""
        B, N, E = x.shape
        q_dim, hd, scale = self.dims(E, num_heads)
        qkv = F.linear(x, *self.sliced_qkv(E, q_dim))
        q, k, v = qkv.reshape(B, N, 3, num_heads, hd).permute(2, 0, 3, 1, 4)  # 3 x (B, H, N, hd)
        attn = (q @ k.transpose(-2, -1)) * scale
        iv, ih, idx = rel_index or (None, None, None)
        if self.relative_position:
            table = self.rel_pos_embed_k.sliced(hd)
            rel = relpos.key_logits_reference(q, *table, iv, ih) if self.reference_relpos else \
                relpos.key_logits(q, *table, idx)
            attn = attn + rel * scale
        attn = attn.softmax(dim=-1)
        out = attn @ v  # (B, H, N, hd)
        if self.relative_position:
            table = self.rel_pos_embed_v.sliced(hd)
            out = out + (relpos.value_term_reference(attn, *table, iv, ih) if self.reference_relpos else
                         relpos.value_term(attn, *table, idx))
        out = out.transpose(1, 2).reshape(B, N, q_dim)
        return F.linear(out, *self.proj.sliced(q_dim, E))


class ElasticBlock(nn.Module):
    """Cream TransformerEncoderLayer: x + attn(LN(x)), then x + fc2(gelu(fc1(LN(x)))) (pre-norm by default)."""

    def __init__(self, super_embed_dim: int, super_hidden: int, attn: ElasticAttention, pre_norm: bool,
                 eps: float = 1e-5):
        super().__init__()
        self.pre_norm = pre_norm
        self.attn = attn
        self.attn_layer_norm = ElasticLayerNorm(super_embed_dim, eps=eps)
        self.ffn_layer_norm = ElasticLayerNorm(super_embed_dim, eps=eps)
        self.fc1 = ElasticLinear(super_embed_dim, super_hidden)
        self.fc2 = ElasticLinear(super_hidden, super_embed_dim)

    def forward(self, x: Tensor, num_heads: int, hidden: int, rel_index: tuple[Tensor, ...] | None) -> Tensor:
        E = x.shape[-1]
        h = self.attn_layer_norm(x) if self.pre_norm else x
        x = x + self.attn(h, num_heads, rel_index)
        if not self.pre_norm:
            x = self.attn_layer_norm(x)
        h = self.ffn_layer_norm(x) if self.pre_norm else x
        h = F.gelu(self.fc1(h, hidden))  # exact (erf) GELU, as the official gelu()
        x = x + self.fc2(h, E)
        if not self.pre_norm:
            x = self.ffn_layer_norm(x)
        return x
