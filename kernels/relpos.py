"""AutoFormer's 2D relative position attention terms: the reference form and the lowerings of the dense models.

Two tables per term, `table_v` and `table_h` of shape (K, D) with K = 2R + 2, are shared by all heads. For tokens
n, m (index 0 is the cls token, patch tokens sit on a G x G grid) the relative embedding is
r[n, m] = table_v[iv[n, m]] + table_h[ih[n, m]], where `iv`/`ih` are the clipped row/column offsets of m relative
to n shifted into 1..2R+1, and 0 for any cls pair. The keys term adds q . r[n, m] to the logits; the values term
adds sum_m attn[n, m] r[n, m] to the output.

* reference: builds r as an (N, N, D) tensor.
* gather/scatter (the lowering until 2026-12): (q @ table^T) is (B, H, N, K), gathered along K with the (N, N)
  index broadcast to (B, H, N, N) [ONNX GatherElements]; values bin the attention by index with a scatter-add
  over (B, H, N, N) [ONNX ScatterElements]. Exact, but on OpenVINO 26% of AutoFormer-T's time moved indices.
* separable (the supernet's form): the index is separable: iv[n, m] depends only on the grid rows of n and m, ih
  only on their columns. So each table is first gathered into per-row tables T_rows[a, b] = table[idx(a, b)] of
  shape (G, G, D) (a constant gather of weights: folded into a constant at export), and then
    keys:   for queries of grid row a, q @ T_rows[a]^T gives (G_cols, G) logits over key rows, broadcast over key
            columns (and likewise for columns): batched MatMuls of (G, D) x (D, G) and one broadcast add;
    values: the attention summed over key columns (rows) is (B, H, N, G), multiplied by T_rows[a]: batched MatMuls;
  the cls row and column (index 0) are one dot product each, concatenated around. No gather or scatter runs per
  inference. Exact up to fp32 summation order; offsets beyond R clip inside `idx`, so any G works.
* augmented (the dense models' form in 2026-12): the separable terms folded into one q' k'^T and one attn @ v'
  matmul (`attention`); about 27 small nodes per layer around them.
* compact (the dense models' form since): the same two augmented matmuls, with everything around them reduced to
  one small MatMul and one constant-index gather per side (`compact_attention`, `compact_index`).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def offset_index(grid: int, max_relative_position: int) -> Tensor:
    """idx[a, b] = clip(b - a, -R, R) + R + 1 for grid rows (or columns) a of the query and b of the key: (G, G)."""
    pos = torch.arange(grid)
    r = max_relative_position
    return (pos[None, :] - pos[:, None]).clamp(-r, r) + r + 1


def relative_position_index(grid: int, max_relative_position: int) -> tuple[Tensor, Tensor]:
    """(iv, ih), each (N, N) int64 with N = grid**2 + 1, following the official RelativePosition2D_super."""
    idx = offset_index(grid, max_relative_position)
    rows = torch.arange(grid * grid) // grid
    cols = torch.arange(grid * grid) % grid
    iv = idx[rows[:, None], rows[None, :]]
    ih = idx[cols[:, None], cols[None, :]]
    return F.pad(iv, (1, 0, 1, 0), value=0), F.pad(ih, (1, 0, 1, 0), value=0)


# ----------------------------------------------------------------------------------------------------- reference


def relative_embeddings(table_v: Tensor, table_h: Tensor, iv: Tensor, ih: Tensor) -> Tensor:
    """The (N, N, D) tensor r of the reference form."""
    return table_v[iv] + table_h[ih]


def key_logits_reference(q: Tensor, table_v: Tensor, table_h: Tensor, iv: Tensor, ih: Tensor) -> Tensor:
    """q: (B, H, N, D) -> (B, H, N, N), q[n] . r[n, m]."""
    return torch.einsum("bhnd,nmd->bhnm", q, relative_embeddings(table_v, table_h, iv, ih))


def value_term_reference(attn: Tensor, table_v: Tensor, table_h: Tensor, iv: Tensor, ih: Tensor) -> Tensor:
    """attn: (B, H, N, N) -> (B, H, N, D), sum_m attn[n, m] r[n, m]."""
    return torch.einsum("bhnm,nmd->bhnd", attn, relative_embeddings(table_v, table_h, iv, ih))


# ------------------------------------------------------------------------------------------------ gather/scatter


def key_logits_gather(q: Tensor, table_v: Tensor, table_h: Tensor, iv: Tensor, ih: Tensor) -> Tensor:
    """Gather form: project q on the small tables, then gather with the (N, N) index."""
    B, H, N, _ = q.shape
    shape = (B, H, N, N)
    lv = torch.matmul(q, table_v.t())  # (B, H, N, K)
    lh = torch.matmul(q, table_h.t())
    return torch.gather(lv, 3, iv.expand(shape)) + torch.gather(lh, 3, ih.expand(shape))


def value_term_scatter(attn: Tensor, table_v: Tensor, table_h: Tensor, iv: Tensor, ih: Tensor) -> Tensor:
    """Scatter form: bin the attention weights by index, then one small matmul per table."""
    B, H, N, _ = attn.shape
    bins = (B, H, N, table_v.shape[0])
    bv = attn.new_zeros(bins).scatter_add(3, iv.expand(attn.shape), attn)  # (B, H, N, K)
    bh = attn.new_zeros(bins).scatter_add(3, ih.expand(attn.shape), attn)
    return torch.matmul(bv, table_v) + torch.matmul(bh, table_h)


# ----------------------------------------------------------------------------------------------------- separable


def row_tables(table: Tensor, idx: Tensor) -> Tensor:
    """(K, D) table and (G, G) offset index -> (G, G, D): the table rows a query row (column) a sees for key row
    (column) b. A gather of weights by a constant: the exporter folds it into a constant."""
    return table[idx]


def key_logits(q: Tensor, table_v: Tensor, table_h: Tensor, idx: Tensor) -> Tensor:
    """Separable form of `key_logits_reference`; `idx` = offset_index(G, R). q: (B, H, 1 + G*G, D) -> (B, H, N, N)."""
    B, H, N, D = q.shape
    G = idx.shape[0]
    tv, th = row_tables(table_v, idx), row_tables(table_h, idx)  # (G, G, D): [query row/col, key row/col, d]
    t0 = table_v[0] + table_h[0]  # every cls pair
    q0, qp = q[:, :, :1], q[:, :, 1:]
    qg = qp.reshape(B, H, G, G, D)  # [query row a, query col c]
    by_row = torch.matmul(qg, tv.transpose(1, 2))  # (B, H, a, c, key row b): (c, D) @ (D, b) per a
    by_col = torch.matmul(qg.transpose(2, 3), th.transpose(1, 2)).transpose(2, 3)  # (B, H, a, c, key col e)
    patches = (by_row.unsqueeze(-1) + by_col.unsqueeze(-2)).reshape(B, H, G * G, G * G)  # keys (b, e) row-major
    cls_key = torch.matmul(qp, t0.unsqueeze(-1))  # (B, H, G*G, 1)
    cls_query = torch.matmul(q0, t0.unsqueeze(-1)).expand(B, H, 1, N)
    return torch.cat([cls_query, torch.cat([cls_key, patches], dim=-1)], dim=2)


def value_term(attn: Tensor, table_v: Tensor, table_h: Tensor, idx: Tensor) -> Tensor:
    """Separable form of `value_term_reference`. attn: (B, H, 1 + G*G, 1 + G*G) -> (B, H, N, D)."""
    B, H, N, _ = attn.shape
    G = idx.shape[0]
    tv, th = row_tables(table_v, idx), row_tables(table_h, idx)
    t0 = table_v[0] + table_h[0]
    a0, ap = attn[:, :, :1], attn[:, :, 1:]
    grid = ap[..., 1:].reshape(B, H, G, G, G, G)  # [query row a, query col c, key row b, key col e]
    per_row = torch.matmul(grid.sum(dim=-1), tv)  # (B, H, a, c, b) @ (a: b, D) -> (B, H, a, c, D)
    per_col = torch.matmul(grid.sum(dim=-2).transpose(2, 3), th).transpose(2, 3)  # by query column
    patches = (per_row + per_col).reshape(B, H, G * G, -1) + ap[..., :1] * t0
    cls = a0.sum(dim=-1, keepdim=True) * t0  # (B, H, 1, D): every key of the cls query is a cls pair
    return torch.cat([cls, patches], dim=2)


# ----------------------------------------------------------------------------------------------------- augmented


def indicator_features(grid: int) -> Tensor:
    """(N, 2G + 2) constants per key m: one-hot of its grid row (G), of its grid column (G), [m is cls], 1."""
    N = grid * grid + 1
    rows = F.one_hot(torch.arange(grid * grid) // grid, grid).float()
    cols = F.one_hot(torch.arange(grid * grid) % grid, grid).float()
    patch = torch.cat([rows, cols, torch.zeros(grid * grid, 1), torch.ones(grid * grid, 1)], dim=1)
    cls = torch.zeros(1, 2 * grid + 2)
    cls[0, 2 * grid:] = 1.0
    assert patch.shape[0] + 1 == N
    return torch.cat([cls, patch], dim=0)


def attention(q: Tensor, k: Tensor, v: Tensor, keys: tuple[Tensor, Tensor], values: tuple[Tensor, Tensor],
              idx: Tensor, features: Tensor) -> Tensor:
    """softmax(q k^T + keys term) v + values term, in one QK matmul and one AV matmul (q already scaled).

    Augmented form: the keys term is u[n, row(m)] + w[n, col(m)] (plus the cls cases), so appending to each query
    its per-row and per-column logits u, w (G each, batched MatMuls with the per-row tables), its cls-key logit and
    (for the cls query) its logit for every key, and to each key the constant one-hot of its row and column,
    [m is cls] and 1 (`features`), makes q' k'^T the whole logit matrix. Likewise attn @ [v, one-hot rows,
    one-hot cols, [m is cls], 1] yields, besides attn @ v, the attention summed per key row and column, which the
    per-row tables turn into the values term. What remains outside the two matmuls acts on (B, H, N, G) tensors.
    This keeps the MatMul -> Softmax -> MatMul pattern that runtimes fuse (OpenVINO does, into one kernel per
    layer) and that TensorRT's fused attention needs, with q scaled first.
    q, k, v: (B, H, 1 + G*G, D), `features` = indicator_features(G) -> (B, H, N, Dv)."""
    B, H, N, D = q.shape
    G = idx.shape[0]
    width = features.shape[1]  # 2G + 2
    is_cls = features[:, 2 * G:2 * G + 1]  # (N, 1)
    kv, kh = row_tables(keys[0], idx), row_tables(keys[1], idx)  # (G, G, D)
    qg = q[:, :, 1:].reshape(B, H, G, G, D)
    u = torch.matmul(qg, kv.transpose(1, 2))  # (B, H, a, c, key row b)
    w = torch.matmul(qg.transpose(2, 3), kh.transpose(1, 2)).transpose(2, 3)  # (B, H, a, c, key col e)
    uw = F.pad(torch.cat([u, w], dim=-1).reshape(B, H, G * G, 2 * G), (0, 0, 1, 0))  # the cls query: zeros
    cls_logits = torch.matmul(q, (keys[0][0] + keys[1][0]).unsqueeze(-1))  # (B, H, N, 1)
    q_aug = torch.cat([q, uw, cls_logits * (1 - is_cls), cls_logits * is_cls], dim=-1)
    k_aug = torch.cat([k, features.expand(B, H, N, width)], dim=-1)
    attn = torch.matmul(q_aug, k_aug.transpose(-2, -1)).softmax(dim=-1)
    Dv = v.shape[-1]
    y = torch.matmul(attn, torch.cat([v, features.expand(B, H, N, width)], dim=-1))  # (B, H, N, Dv + 2G + 2)
    out, rel = y[..., :Dv], y[..., Dv:]
    vv, vh = row_tables(values[0], idx), row_tables(values[1], idx)
    per_row = torch.matmul(rel[:, :, 1:, :G].reshape(B, H, G, G, G), vv)  # (B, H, a, c, Dv)
    per_col = torch.matmul(rel[:, :, 1:, G:2 * G].reshape(B, H, G, G, G).transpose(2, 3), vh).transpose(2, 3)
    patch_term = F.pad((per_row + per_col).reshape(B, H, G * G, Dv), (0, 0, 1, 0))
    # index 0: the cls key for a patch query; every key for the cls query (all of its attention mass)
    on_index0 = rel[..., G:2 * G].sum(dim=-1, keepdim=True) * is_cls + rel[..., 2 * G:2 * G + 1]
    return out + patch_term + on_index0 * (values[0][0] + values[1][0])


# ------------------------------------------------------------------------------------------------------- compact


class CompactIndex(NamedTuple):
    """The constants of `compact_attention` for a G x G grid and range R (`compact_index`); L = 2G - 1 offsets.

    * `offsets` (L,): the table row of each row/column offset -(G-1)..G-1 (clipped to R: clipping lives here).
    * `query` (N, 2G + 1): per query, which columns of u = q @ [T_v[offsets]; T_v[0]; T_h[offsets]; T_h[0];
      T_v[0] + T_h[0]]^T (4G + 1 columns) are its logits for key rows 0..G-1, key columns 0..G-1 and the cls key.
    * `keys` (N, 2G + 1): per key, the one-hot of its row and column, and [key is cls].
    * `values` (N, 2G + 3): `keys` and two more columns, 1 and 0.
    * `value_slots` (N, 2L + 1): per query, which column of attn @ `values` lands in each slot of the values table
      [V_v[offsets]; V_h[offsets]; V_v[0] + V_h[0]] (the 0 column where no key sits at that offset)."""

    offsets: Tensor
    query: Tensor
    keys: Tensor
    values: Tensor
    value_slots: Tensor


def compact_index(grid: int, max_relative_position: int) -> CompactIndex:
    G, R = grid, max_relative_position
    L, N = 2 * G - 1, G * G + 1
    offsets = torch.arange(-(G - 1), G).clamp(-R, R) + R + 1
    a = torch.arange(G * G) // G  # grid row and column of each patch token
    c = torch.arange(G * G) % G
    b = torch.arange(G)
    query = torch.empty(N, 2 * G + 1, dtype=torch.long)
    query[0] = torch.tensor([L] * G + [2 * L + 1] * G + [2 * L + 2])  # the cls query: index 0 for every key
    query[1:, :G] = b[None] - a[:, None] + G - 1
    query[1:, G:2 * G] = L + 1 + b[None] - c[:, None] + G - 1
    query[1:, 2 * G] = 2 * L + 2
    keys = torch.zeros(N, 2 * G + 1)
    keys[1:, :G] = F.one_hot(a, G).float()
    keys[1:, G:2 * G] = F.one_hot(c, G).float()
    keys[0, 2 * G] = 1.0
    values = torch.cat([keys, torch.ones(N, 1), torch.zeros(N, 1)], dim=1)
    zero, ones, is_cls = 2 * G + 2, 2 * G + 1, 2 * G
    slots = torch.full((N, 2 * L + 1), zero, dtype=torch.long)
    slots[0, 2 * L] = ones  # the cls query: all of its attention mass sits on index 0
    p = torch.arange(L)
    row_key = p[None] - (G - 1) + a[:, None]  # the key row at offset p of each patch query
    col_key = p[None] - (G - 1) + c[:, None]
    slots[1:, :L] = torch.where((row_key >= 0) & (row_key < G), row_key, zero)
    slots[1:, L:2 * L] = torch.where((col_key >= 0) & (col_key < G), G + col_key, zero)
    slots[1:, 2 * L] = is_cls
    return CompactIndex(offsets, query, keys, values, slots)


def compact_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, keys: tuple[Tensor, Tensor],
                      values: tuple[Tensor, Tensor], index: CompactIndex) -> Tensor:
    """softmax(scale (q k^T + keys term)) v + values term; q, k, v: (B, H, 1 + G*G, D) -> (B, H, N, Dv).

    The augmented matmuls of `attention`, with what surrounds them reduced to a few nodes: q' = [q, u[query]] *
    scale, where u is one small MatMul of q with the offset tables and `[query]` a gather by a constant (N, 2G + 1)
    index, so that q' k'^T with k' = [k, one-hot rows and columns, is-cls] is the whole logit matrix; then
    y = attn @ [v, the same features, 1, 0], and the values term is y gathered by a constant (N, 4G - 1) index into
    the slots of the offset tables, times those tables (one small MatMul). The scale multiplies q' (q and its
    relative logits alike, as AutoFormer scales both) right before the first batched matmul; a scale of 1.0 (one
    already folded into the weights that produce q, which scales u with it) leaves no op. The gathers act on
    (B, H, N, 4G + 1) and (B, H, N, 2G + 3) tensors (ONNX GatherElements); the tables are gathered from the
    weights by constants, which the exporter folds."""
    B, H, N, _ = q.shape
    Dv = v.shape[-1]
    o = index.offsets
    tq = torch.cat([keys[0][o], keys[0][:1], keys[1][o], keys[1][:1], (keys[0][0] + keys[1][0])[None]])
    u = torch.matmul(q, tq.t())  # (B, H, N, 4G + 1)
    q_aug = torch.cat([q, torch.gather(u, 3, index.query.expand(B, H, N, -1))], dim=-1)
    if scale != 1.0:  # 1.0: the scale is folded into q's weights (AutoFormer's dense models), no op here
        q_aug = q_aug * scale
    k_aug = torch.cat([k, index.keys.expand(B, H, N, -1)], dim=-1)
    attn = torch.matmul(q_aug, k_aug.transpose(-2, -1)).softmax(dim=-1)
    y = torch.matmul(attn, torch.cat([v, index.values.expand(B, H, N, -1)], dim=-1))  # (B, H, N, Dv + 2G + 3)
    z = torch.gather(y, 3, (index.value_slots + Dv).expand(B, H, N, -1))  # (B, H, N, 4G - 1)
    tv = torch.cat([values[0][o], values[1][o], (values[0][0] + values[1][0])[None]])
    return y[..., :Dv] + torch.matmul(z, tv)
