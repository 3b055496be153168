"""NASViT's operators: each fast form equals the reference (the official semantics)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deploy_nas.kernels import nasvit as k


def test_relative_position_index_is_swin_style():
    idx = k.relative_position_index(3)  # 9 x 9 positions, 5 x 5 table
    assert idx.shape == (9, 9) and idx.min() == 0 and idx.max() == 24
    assert idx[0, 0] == idx[4, 4] == 12  # no offset: the centre of the table
    assert idx[0, 8] == 0 and idx[8, 0] == 24  # key 2 rows/cols after the query, and before it
    assert idx[1, 0] == (0 + 2) * 5 + (1 + 2)  # (dy, dx) = (0, 1)


@pytest.mark.parametrize("window, grid", [(18, 14), (18, 7), (18, 4), (18, 18), (18, 1), (6, 5), (6, 3)])
def test_cropped_bias_equals_the_official_crop(window, grid):
    heads = 5
    table = torch.randn((2 * window - 1) ** 2, 9, generator=torch.Generator().manual_seed(window + grid))
    ref = k.cropped_bias_reference(table, k.relative_position_index(window), window, grid, heads)
    fast = k.cropped_bias(table, window, grid, heads)
    assert fast.shape == (heads, grid * grid, grid * grid) and torch.equal(fast, ref)


def test_a_grid_larger_than_the_window_is_refused():
    with pytest.raises(ValueError, match="does not fit the 6 x 6"):
        k.cropped_index(6, 7)


@pytest.mark.parametrize("bias", [True, False])
def test_mix_heads_equals_the_permuted_linear(bias):
    g = torch.Generator().manual_seed(0)
    attn, w = torch.randn(3, 5, 16, 16, generator=g), torch.randn(5, 5, generator=g)
    b = torch.randn(5, generator=g) if bias else None
    assert torch.allclose(k.mix_heads(attn, w, b, 16), k.mix_heads_reference(attn, w, b), atol=1e-5)


def test_token_norm_is_one_norm_over_tokens_and_channels():
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 25, 16, generator=g) * 3 + 1, torch.randn(16, generator=g), torch.randn(16, generator=g)
    out = k.token_norm(x, w, b, 25)
    assert torch.allclose(out, k.token_norm_reference(x, w, b), atol=1e-5)
    nchw = x.transpose(1, 2).reshape(2, 16, 5, 5)  # GroupNorm with one group on the map: the same statistics
    assert torch.allclose(out, F.group_norm(nchw, 1, w, b).reshape(2, 16, 25).transpose(1, 2), atol=1e-5)
    per_token = F.layer_norm(x, (16,), w, b)
    assert (out - per_token).abs().max() > 0.1  # and not the per-token LayerNorm of a plain ViT
