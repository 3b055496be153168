"""AutoFormer's 2D relative position attention terms, in a reference form and a fast, export-friendly form.

Two tables per term, `table_v` and `table_h` of shape (K, D) with K = 2R + 2, are shared by all heads. For tokens
n, m (index 0 is the cls token) the relative embedding is r[n, m] = table_v[iv[n, m]] + table_h[ih[n, m]], where
`iv`/`ih` are the clipped row/column offsets of m relative to n shifted into 1..2R+1, and 0 for any cls pair.

The keys term adds q . r[n, m] to the logits; the values term adds sum_m attn[n, m] r[n, m] to the output.
The reference builds r as an (N, N, D) tensor. The fast form never does:
  keys:   (q @ table^T) is (B, H, N, K); gather along K with the index -> (B, H, N, N)   [ONNX GatherElements]
  values: bin attn by index, (B, H, N, N) -> (B, H, N, K) with scatter-add; then @ table  [ONNX ScatterElements]
Both are exact up to fp32 summation order.
"""
from __future__ import annotations

import torch
from torch import Tensor


def relative_position_index(grid: int, max_relative_position: int) -> tuple[Tensor, Tensor]:
    """(iv, ih), each (N, N) int64 with N = grid**2 + 1, following the official RelativePosition2D_super."""
    pos = torch.arange(grid * grid)
    row, col = pos // grid, pos % grid
    r = max_relative_position
    # Offset of key m relative to query n, clipped to [-R, R], shifted to [1, 2R+1]; 0 is reserved for cls pairs.
    iv = (row[None, :] - row[:, None]).clamp(-r, r) + r + 1
    ih = (col[None, :] - col[:, None]).clamp(-r, r) + r + 1
    pad = torch.nn.functional.pad
    return pad(iv, (1, 0, 1, 0), value=0), pad(ih, (1, 0, 1, 0), value=0)


def relative_embeddings(table_v: Tensor, table_h: Tensor, iv: Tensor, ih: Tensor) -> Tensor:
    """The (N, N, D) tensor r of the reference form."""
    return table_v[iv] + table_h[ih]


def key_logits_reference(q: Tensor, table_v: Tensor, table_h: Tensor, iv: Tensor, ih: Tensor) -> Tensor:
    """q: (B, H, N, D) -> (B, H, N, N), q[n] . r[n, m]."""
    return torch.einsum("bhnd,nmd->bhnm", q, relative_embeddings(table_v, table_h, iv, ih))


def value_term_reference(attn: Tensor, table_v: Tensor, table_h: Tensor, iv: Tensor, ih: Tensor) -> Tensor:
    """attn: (B, H, N, N) -> (B, H, N, D), sum_m attn[n, m] r[n, m]."""
    return torch.einsum("bhnm,nmd->bhnd", attn, relative_embeddings(table_v, table_h, iv, ih))


def key_logits(q: Tensor, table_v: Tensor, table_h: Tensor, iv: Tensor, ih: Tensor) -> Tensor:
    """Fast form of `key_logits_reference`: project q on the small tables, then gather."""
    B, H, N, _ = q.shape
    shape = (B, H, N, N)
    lv = torch.matmul(q, table_v.t())  # (B, H, N, K)
    lh = torch.matmul(q, table_h.t())
    return torch.gather(lv, 3, iv.expand(shape)) + torch.gather(lh, 3, ih.expand(shape))


def value_term(attn: Tensor, table_v: Tensor, table_h: Tensor, iv: Tensor, ih: Tensor) -> Tensor:
    """Fast form of `value_term_reference`: bin the attention weights by index, then one small matmul per table."""
    B, H, N, _ = attn.shape
    bins = (B, H, N, table_v.shape[0])
    bv = attn.new_zeros(bins).scatter_add(3, iv.expand(attn.shape), attn)  # (B, H, N, K)
    bh = attn.new_zeros(bins).scatter_add(3, ih.expand(attn.shape), attn)
    return torch.matmul(bv, table_v) + torch.matmul(bh, table_h)
