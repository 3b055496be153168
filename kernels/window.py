"""Shifted-window attention (Swin, S3): window partition and reverse, the cyclic shift, the shifted-window region
mask, the relative position bias and patch merging, each in a reference form and the lowered form the dense `swin`
arch and the S3 supernet use (installed as `deploy_nas.kernels.window`).

Semantics (Cream AutoFormerV2 `SSSTransformer`, the same as Swin v1):
* A stage works on an R x R token map. A block attends inside w x w windows (row-major over the map, tokens
  row-major inside a window); a block whose window is at least R uses one window of R x R and never shifts.
* Odd blocks of a stage shift the map by s = w // 2 up and left before partitioning (a cyclic roll by -s on both
  axes) and back after. Tokens that the roll brought together from different regions must not attend to each
  other: each axis splits into [0, R - w), [R - w, R - s), [R - s, R); a token's region is (row part, column part);
  pairs in different regions get -100 added to their logits (not -inf: the official value, kept for exactness).
* The relative position bias of a pair (i, j) of window tokens is table[(yi - yj + w - 1) * (2w - 1) + xi - xj
  + w - 1] (one column per head). A table built for a larger window W holds every offset of a smaller window w in
  its centre; `table_window` indexes that centre.
* Patch merging concatenates the four 2 x 2 sub-grids in the order (even row, even col), (odd row, even col),
  (even row, odd col), (odd row, odd col).

Lowered forms: partition/reverse and patch merging are reshapes and transposes with static spatial sizes (the batch
axis stays -1, so it exports as a dynamic axis); the shift is two slices and a concat per axis; the mask and the
bias are constants built once (never gathered per inference). Reference forms spell the same operations out with
loops, `torch.roll` and per-pair index arithmetic; tests/kernels prove them equal.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

MASK_VALUE = -100.0  # the official shifted-window mask value


def effective_window(resolution: int, window: int, block: int) -> tuple[int, int]:
    """(window, shift) a block really uses on an R x R map: a window >= R becomes R with no shift (global
    attention); otherwise odd blocks shift by window // 2."""
    if resolution <= window:
        return resolution, 0
    return window, (window // 2 if block % 2 else 0)


# ----------------------------------------------------------------------------------------------- lowered forms


def window_partition(x: Tensor, resolution: int, window: int, channels: int | None = None) -> Tensor:
    """(B, R, R, C) -> (B * nW, w * w, C), windows row-major, tokens row-major inside each window (`channels`: C
    as a static number, so that an exported graph holds no shape arithmetic)."""
    n, c = resolution // window, channels or x.shape[-1]
    if n == 1:
        return x.reshape(-1, window * window, c)  # one window: the map itself
    x = x.reshape(-1, n, window, n, window, c)  # (B, n, w, n, w, C)
    return x.transpose(2, 3).reshape(-1, window * window, c)  # (B, n, n, w, w, C) -> (B * nW, w * w, C)


def window_reverse(windows: Tensor, resolution: int, window: int, channels: int | None = None) -> Tensor:
    """(B * nW, w * w, C) -> (B, R, R, C); the inverse of `window_partition`."""
    n, c = resolution // window, channels or windows.shape[-1]
    if n == 1:
        return windows.reshape(-1, resolution, resolution, c)
    x = windows.reshape(-1, n, n, window, window, c)  # (B, n, n, w, w, C)
    return x.transpose(2, 3).reshape(-1, resolution, resolution, c)


def cyclic_shift(x: Tensor, shift: int) -> Tensor:
    """(B, R, R, C) rolled by `shift` on both spatial axes (torch.roll semantics: shift -s moves content up and
    left), as two slices and a concat per axis."""
    size = x.shape[1]
    k = shift % size
    if k == 0:
        return x
    x = torch.cat([x[:, size - k:], x[:, :size - k]], dim=1)
    return torch.cat([x[:, :, size - k:], x[:, :, :size - k]], dim=2)


def region_labels(resolution: int, window: int, shift: int) -> Tensor:
    """(R, R) int64: the region of each position of the rolled map (3 parts per axis). Built on the CPU, as every
    constant here (also inside a `torch.device("meta")` block, where the meta device's Python kernels would import
    torch's compiler stack: about two seconds a process)."""
    pos = torch.arange(resolution, device="cpu")
    part = (pos >= resolution - window).long() + (pos >= resolution - shift).long()  # 0, 1 or 2
    return part[:, None] * 3 + part[None, :]


def attention_mask(resolution: int, window: int, shift: int) -> Tensor:
    """(nW, w * w, w * w) float32: 0 within a region, -100 across regions (all zeros when shift is 0)."""
    labels = region_labels(resolution, window, shift)[None, :, :, None].float()  # (1, R, R, 1)
    windows = window_partition(labels, resolution, window)[..., 0]  # (nW, w * w)
    differ = windows[:, None, :] != windows[:, :, None]  # (nW, N, N)
    return torch.zeros(differ.shape, device="cpu").masked_fill(differ, MASK_VALUE)


def relative_position_index(window: int, table_window: int | None = None) -> Tensor:
    """(w * w, w * w) int64 rows of a ((2W - 1)^2, heads) table (W = `table_window`, default w) for each pair."""
    big = table_window or window
    if big < window:
        raise ValueError(f"a table for window {big} cannot hold the offsets of window {window}")
    pos = torch.arange(window, device="cpu")
    y = pos.repeat_interleave(window)  # (N,) rows
    x = pos.repeat(window)  # (N,) columns
    dy = y[:, None] - y[None, :] + big - 1  # (N, N) in [big - w, big + w - 2]
    dx = x[:, None] - x[None, :] + big - 1
    return dy * (2 * big - 1) + dx


def relative_bias(table: Tensor, window: int, table_window: int | None = None) -> Tensor:
    """(heads, w * w, w * w) from a ((2W - 1)^2, heads) table: one gather, done once (a constant of the weights)."""
    index = relative_position_index(window, table_window).to(table.device)
    n = window * window
    return table[index.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)  # (N * N, H) -> (H, N, N)


def add_window_mask(attn: Tensor, mask: Tensor, heads: int) -> Tensor:
    """attn (B * nW, H, N, N) + mask (nW, N, N), window by window; the batch axis stays -1."""
    nw, n = mask.shape[0], mask.shape[-1]
    attn = attn.reshape(-1, nw, heads, n, n) + mask[:, None]  # (B, nW, H, N, N)
    return attn.reshape(-1, heads, n, n)


def window_attention(windows: Tensor, qkv_weight: Tensor, qkv_bias: Tensor | None, proj_weight: Tensor,
                     proj_bias: Tensor | None, heads: int, scale: float, bias: Tensor,
                     mask: Tensor | None) -> Tensor:
    """Multi-head attention inside each window: (B * nW, N, C) -> (B * nW, N, C_out). q is scaled before q @ k^T;
    `bias` (H, N, N) and `mask` (nW, N, N) are constants added to the logits. Sizes come from the weights and the
    bias (constants), the batch axis stays -1."""
    n, q_dim = bias.shape[-1], qkv_weight.shape[0] // 3
    qkv = F.linear(windows, qkv_weight, qkv_bias)  # (B * nW, N, 3Q)
    q, k, v = qkv.reshape(-1, n, 3, heads, q_dim // heads).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B*nW, H, N, d)
    attn = (q * scale) @ k.transpose(-2, -1) + bias  # (B * nW, H, N, N)
    if mask is not None:
        attn = add_window_mask(attn, mask, heads)
    out = attn.softmax(dim=-1) @ v  # (B * nW, H, N, d)
    return F.linear(out.transpose(1, 2).reshape(-1, n, q_dim), proj_weight, proj_bias)


def patch_merge(x: Tensor, resolution: int, channels: int | None = None) -> Tensor:
    """(B, R * R, C) -> (B, R * R / 4, 4C) in the official sub-grid order, as a reshape and a transpose."""
    half, c = resolution // 2, channels or x.shape[-1]
    x = x.reshape(-1, half, 2, half, 2, c)  # (B, row, dy, col, dx, C)
    x = x.permute(0, 1, 3, 4, 2, 5)  # (B, row, col, dx, dy, C): concat index = 2 dx + dy
    return x.reshape(-1, half * half, 4 * c)


# --------------------------------------------------------------------------------------------- reference forms


def window_partition_reference(x: Tensor, window: int) -> Tensor:
    """Windows cut out one by one with slices."""
    b, r, _, c = x.shape
    out = [x[i, y:y + window, z:z + window].reshape(window * window, c)
           for i in range(b) for y in range(0, r, window) for z in range(0, r, window)]
    return torch.stack(out)


def window_reverse_reference(windows: Tensor, resolution: int, window: int) -> Tensor:
    """Windows written back one by one."""
    per = (resolution // window) ** 2
    b, c = windows.shape[0] // per, windows.shape[-1]
    out = windows.new_zeros(b, resolution, resolution, c)
    for k in range(windows.shape[0]):
        i, idx = divmod(k, per)
        y, z = divmod(idx, resolution // window)
        out[i, y * window:(y + 1) * window, z * window:(z + 1) * window] = windows[k].reshape(window, window, c)
    return out


def cyclic_shift_reference(x: Tensor, shift: int) -> Tensor:
    return torch.roll(x, shifts=(shift, shift), dims=(1, 2))


def attention_mask_reference(resolution: int, window: int, shift: int) -> Tensor:
    """Region of every position by explicit comparison, then every window's pairs compared one by one."""
    def part(p: int) -> int:
        return 0 if p < resolution - window else (1 if p < resolution - shift else 2)

    labels = torch.tensor([[3 * part(y) + part(z) for z in range(resolution)] for y in range(resolution)])
    windows = window_partition_reference(labels[None, :, :, None].float(), window)[..., 0]
    n = window * window
    mask = torch.zeros(windows.shape[0], n, n)
    for k in range(windows.shape[0]):
        for i in range(n):
            for j in range(n):
                if windows[k, i] != windows[k, j]:
                    mask[k, i, j] = MASK_VALUE
    return mask


def relative_position_index_reference(window: int, table_window: int | None = None) -> Tensor:
    big = table_window or window
    coords = [(y, z) for y in range(window) for z in range(window)]
    return torch.tensor([[(yi - yj + big - 1) * (2 * big - 1) + (zi - zj + big - 1) for yj, zj in coords]
                         for yi, zi in coords])


def shifted_window_attention_reference(x: Tensor, resolution: int, window: int, shift: int, qkv_weight: Tensor,
                                       qkv_bias: Tensor | None, proj_weight: Tensor, proj_bias: Tensor | None,
                                       heads: int, scale: float, table: Tensor) -> Tensor:
    """(B, R, R, C) -> (B, R, R, C_out): the rolled map attended window by window, each logit built from the
    table by its own index and the region test, then rolled back."""
    rolled = cyclic_shift_reference(x, -shift)
    windows = window_partition_reference(rolled, window)  # (B * nW, N, C)
    index = relative_position_index_reference(window)
    masks = attention_mask_reference(resolution, window, shift)
    out = []
    for k in range(windows.shape[0]):
        qkv = F.linear(windows[k], qkv_weight, qkv_bias)  # (N, 3Q)
        q, kk, v = qkv.chunk(3, dim=-1)
        d = q.shape[-1] // heads
        heads_out = []
        for h in range(heads):
            logits = (q[:, h * d:(h + 1) * d] * scale) @ kk[:, h * d:(h + 1) * d].T
            logits = logits + table[index, h] + masks[k % masks.shape[0]]
            heads_out.append(logits.softmax(-1) @ v[:, h * d:(h + 1) * d])
        out.append(F.linear(torch.cat(heads_out, dim=-1), proj_weight, proj_bias))
    merged = window_reverse_reference(torch.stack(out), resolution, window)
    return cyclic_shift_reference(merged, shift)


def patch_merge_reference(x: Tensor, resolution: int) -> Tensor:
    """The four sub-grids by strided slices, concatenated in the official order."""
    b, _, c = x.shape
    g = x.reshape(b, resolution, resolution, c)
    parts = [g[:, 0::2, 0::2], g[:, 1::2, 0::2], g[:, 0::2, 1::2], g[:, 1::2, 1::2]]
    return torch.cat(parts, dim=-1).reshape(b, -1, 4 * c)


__all__ = ["MASK_VALUE", "add_window_mask", "attention_mask", "attention_mask_reference", "cyclic_shift",
           "cyclic_shift_reference", "effective_window", "patch_merge", "patch_merge_reference", "region_labels",
           "relative_bias", "relative_position_index", "relative_position_index_reference",
           "shifted_window_attention_reference", "window_attention", "window_partition",
           "window_partition_reference", "window_reverse", "window_reverse_reference"]
