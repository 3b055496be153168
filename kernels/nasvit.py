"""NASViT's transformer operators: the reference forms (the official `DynamicWindowAttention` and block semantics,
written from its description) and the forms the dense `nasvit` arch and its ONNX graph use.

* Relative position bias. A Swin-style table of (2W - 1)^2 rows x heads for a W x W window (W = 18 officially) and
  a (W^2, W^2) index. The official block gathers the full (W^2, W^2, heads) bias, views it as (W, W, W, W, heads)
  and crops [:G, :G, :G, :G] for a G x G token grid (`cropped_bias_reference`). The crop only keeps pairs of grid
  positions, so the cropped index is rebuilt directly for G (`cropped_index`): (G^2, G^2) rows of the table instead
  of (W^2, W^2). At materialization the cropped (heads, L, L) bias is taken from the table once.
* Talking heads: a Linear over the heads axis of the (B, heads, L, L) logits, before softmax (`proj_l`) and after
  it (`proj_w`). The official code permutes heads last and back (`mix_heads_reference`); on the (B, heads, L, L)
  layout the same map is one (heads x heads) @ (heads x L^2) MatMul per sample (`mix_heads`: no permutes; on
  OpenVINO it needed half the layout reorders of the equivalent 1 x 1 convolution over heads as channels, and
  5-10% less CPU time for a whole NASViT subnet at 224 px).
* Token norm: statistics over all tokens *and* channels of a sample, a per-channel affine broadcast over tokens
  (`F.layer_norm` with normalized_shape (L, C); GroupNorm with one group on NCHW). `token_norm` passes the affine
  expanded to (L, C) into one `layer_norm`, which exports as a single ONNX LayerNormalization over the last two
  axes (axis = -2); `token_norm_reference` spells the statistics out.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def relative_position_index(window: int) -> Tensor:
    """The official (W^2, W^2) int64 index: (dy + W - 1) * (2W - 1) + (dx + W - 1) for row-major positions.
    Always built on the CPU (also inside a `torch.device("meta")` block, where stacking meta tensors would import
    torch's compiler stack: seconds per process)."""
    axis = torch.arange(window, device="cpu")
    pos = torch.stack(torch.meshgrid(axis, axis, indexing="ij")).flatten(1)  # (2, W^2)
    rel = (pos[:, :, None] - pos[:, None, :]).permute(1, 2, 0) + (window - 1)  # (W^2, W^2, 2), each in 0..2W-2
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def cropped_index(window: int, grid: int) -> Tensor:
    """The rows of the table a G x G grid uses: (G^2, G^2), equal to the official index cropped to the grid."""
    if not 1 <= grid <= window:
        raise ValueError(f"a {grid} x {grid} token grid does not fit the {window} x {window} relative-position window")
    pos = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")).flatten(1)  # (2, G^2)
    rel = (pos[:, :, None] - pos[:, None, :]).permute(1, 2, 0) + (window - 1)  # (G^2, G^2, 2)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def cropped_bias_reference(table: Tensor, index: Tensor, window: int, grid: int, heads: int) -> Tensor:
    """The official crop: gather the full bias, view (W, W, W, W, nH), crop to the grid: (heads, L, L)."""
    full = table[index.reshape(-1)].reshape(window, window, window, window, -1)
    cropped = full[:grid, :grid, :grid, :grid].reshape(grid * grid, grid * grid, -1)
    return cropped.permute(2, 0, 1)[:heads]


def cropped_bias(table: Tensor, window: int, grid: int, heads: int) -> Tensor:
    """The same (heads, L, L) bias from the grid's own index: (G^2)^2 rows gathered, not (W^2)^2."""
    return table[:, :heads][cropped_index(window, grid)].permute(2, 0, 1)


def mix_heads_reference(attn: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Talking heads as the official code writes it: heads last, Linear, heads back. (B, h, L, L) -> (B, h, L, L)."""
    return F.linear(attn.permute(0, 2, 3, 1), weight, bias).permute(0, 3, 1, 2)


def mix_heads(attn: Tensor, weight: Tensor, bias: Tensor | None, tokens: int) -> Tensor:
    """The same map as (h, h) @ (B, h, L * L): one MatMul, no permutes. `tokens` is L as a Python int."""
    h = weight.shape[0]
    mixed = weight @ attn.reshape(-1, h, tokens * tokens)  # (B, h, L * L)
    if bias is not None:
        mixed = mixed + bias[:, None]
    return mixed.reshape(-1, h, tokens, tokens)


def token_norm_reference(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """(B, L, C): mean and biased variance over tokens and channels together, then a per-channel affine."""
    mean = x.mean(dim=(1, 2), keepdim=True)
    var = (x - mean).pow(2).mean(dim=(1, 2), keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def token_norm(x: Tensor, weight: Tensor, bias: Tensor, tokens: int, eps: float = 1e-5) -> Tensor:
    """(B, L, C) -> (B, L, C): one layer_norm over the last two axes with the affine expanded to (L, C). `tokens`
    is L as a Python int, so that the traced graph holds constants, not shape arithmetic."""
    shape = (tokens, weight.shape[0])
    return F.layer_norm(x, shape, weight.expand(shape), bias.expand(shape), eps)


__all__ = ["cropped_bias", "cropped_bias_reference", "cropped_index", "mix_heads", "mix_heads_reference",
           "relative_position_index", "token_norm", "token_norm_reference"]
