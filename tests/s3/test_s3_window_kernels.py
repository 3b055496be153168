"""The window kernels (kernels/window.py): every lowered form against its reference form, over maps, windows and
shifts the S3 spaces use (global windows, one window, many windows, shift 0, odd and even windows)."""
from __future__ import annotations

import pytest
import torch

from deploy_nas.kernels import window as win

# (map R, window w, shift s)
CASES = [(8, 4, 2), (8, 2, 1), (4, 4, 0), (12, 4, 2), (6, 3, 1), (14, 7, 3), (8, 8, 0), (4, 1, 0), (16, 4, 0)]


def _x(r: int, c: int = 5, b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, r, r, c, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("r, w, s", CASES)
def test_partition_and_reverse_equal_the_reference_and_invert(r, w, s):
    x = _x(r)
    windows = win.window_partition(x, r, w)
    assert windows.shape == (2 * (r // w) ** 2, w * w, 5)
    assert torch.equal(windows, win.window_partition_reference(x, w))
    assert torch.equal(win.window_reverse(windows, r, w), win.window_reverse_reference(windows, r, w))
    assert torch.equal(win.window_reverse(windows, r, w), x)


@pytest.mark.parametrize("r, w, s", CASES)
def test_shift_is_a_roll(r, w, s):
    x = _x(r)
    for shift in (-s, s, -r - 1, 0):
        assert torch.equal(win.cyclic_shift(x, shift), win.cyclic_shift_reference(x, shift))


@pytest.mark.parametrize("r, w, s", CASES)
def test_mask_equals_the_region_rule(r, w, s):
    mask = win.attention_mask(r, w, s)
    assert torch.equal(mask, win.attention_mask_reference(r, w, s))
    assert set(mask.unique().tolist()) <= {0.0, win.MASK_VALUE}
    if s == 0:
        assert not mask.any()


def test_mask_of_a_known_case():
    """R = 4, w = 2, s = 1: the last window holds tokens of four regions; the first window is one region."""
    mask = win.attention_mask(4, 2, 1)
    assert not mask[0].any()
    last = mask[-1]  # tokens (2,2), (2,3), (3,2), (3,3): regions 4, 5, 7, 8 (all different)
    assert torch.equal(last == 0, torch.eye(4, dtype=torch.bool))


@pytest.mark.parametrize("w, big", [(1, 1), (2, 2), (3, 3), (7, 7), (2, 4), (3, 7), (4, 8)])
def test_relative_index_and_bias(w, big):
    index = win.relative_position_index(w, big)
    assert torch.equal(index, win.relative_position_index_reference(w, big))
    assert int(index.min()) >= 0 and int(index.max()) < (2 * big - 1) ** 2
    table = torch.randn((2 * big - 1) ** 2, 3)
    bias = win.relative_bias(table, w, big)  # (H, N, N)
    assert bias.shape == (3, w * w, w * w)
    assert torch.equal(bias, table[index].permute(2, 0, 1))
    # the diagonal (offset 0) is the table's centre row in every head
    centre = (big - 1) * (2 * big - 1) + big - 1
    assert torch.equal(bias.diagonal(dim1=1, dim2=2), table[centre][:, None].expand(3, w * w))


@pytest.mark.parametrize("r", [2, 4, 8, 14])
def test_patch_merge_order(r):
    x = torch.randn(2, r * r, 3)
    assert torch.equal(win.patch_merge(x, r), win.patch_merge_reference(x, r))


def test_effective_window_follows_the_official_rule():
    assert win.effective_window(56, 7, 0) == (7, 0)
    assert win.effective_window(56, 7, 1) == (7, 3)
    assert win.effective_window(14, 14, 1) == (14, 0)  # window = map: global, no shift
    assert win.effective_window(7, 14, 1) == (7, 0)  # clipped to the map
    assert win.effective_window(8, 1, 1) == (1, 0)  # a shift of 1 // 2 = 0


@pytest.mark.parametrize("r, w, s", [(8, 4, 2), (8, 2, 1), (4, 4, 0), (6, 3, 1), (8, 8, 0)])
def test_shifted_window_attention_equals_the_loop_reference(r, w, s):
    """The lowered chain (shift, partition, batched attention with constant bias and mask, reverse, shift back)
    against attention computed window by window and head by head from the table and the region rule."""
    g = torch.Generator().manual_seed(r * 10 + w)
    c, heads, q = 8, 2, 12
    x = torch.randn(2, r, r, c, generator=g)
    qkv_w, qkv_b = torch.randn(3 * q, c, generator=g) / c ** 0.5, torch.randn(3 * q, generator=g) * 0.1
    proj_w, proj_b = torch.randn(c, q, generator=g) / q ** 0.5, torch.randn(c, generator=g) * 0.1
    table = torch.randn((2 * w - 1) ** 2, heads, generator=g)
    scale = (q // heads) ** -0.5
    mask = win.attention_mask(r, w, s) if s else None
    windows = win.window_partition(win.cyclic_shift(x, -s), r, w)
    out = win.window_attention(windows, qkv_w, qkv_b, proj_w, proj_b, heads, scale, win.relative_bias(table, w),
                               mask)
    lowered = win.cyclic_shift(win.window_reverse(out, r, w), s)
    reference = win.shifted_window_attention_reference(x, r, w, s, qkv_w, qkv_b, proj_w, proj_b, heads, scale, table)
    torch.testing.assert_close(lowered, reference, rtol=1e-5, atol=1e-5)
