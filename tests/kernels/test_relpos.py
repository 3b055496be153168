from __future__ import annotations

import pytest
import torch

from deploy_nas.kernels import relpos


@pytest.mark.parametrize("grid, R", [(14, 14), (4, 2), (7, 3), (2, 14)])
def test_fast_forms_equal_reference(grid, R):
    g = torch.Generator().manual_seed(grid * 100 + R)
    iv, ih = relpos.relative_position_index(grid, R)
    N, K = grid * grid + 1, 2 * R + 2
    tv, th = torch.randn(K, 16, generator=g), torch.randn(K, 16, generator=g)
    q = torch.randn(2, 3, N, 16, generator=g)
    attn = torch.randn(2, 3, N, N, generator=g).softmax(-1)
    torch.testing.assert_close(relpos.key_logits(q, tv, th, iv, ih), relpos.key_logits_reference(q, tv, th, iv, ih),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(relpos.value_term(attn, tv, th, iv, ih),
                               relpos.value_term_reference(attn, tv, th, iv, ih), rtol=1e-5, atol=1e-6)


def test_index_layout_matches_the_official_definition():
    iv, ih = relpos.relative_position_index(3, 1)
    # cls row and column are 0; patch n=(0,0) vs m=(2,1): row offset +2 clipped to +1 -> 1+1+1 = 3; col +1 -> 3
    assert iv[0].eq(0).all() and iv[:, 0].eq(0).all()
    n, m = 1 + 0, 1 + 2 * 3 + 1
    assert (iv[n, m].item(), ih[n, m].item()) == (3, 3)
    assert (iv[m, n].item(), ih[m, n].item()) == (1, 1)
    assert iv[1:, 1:].min() >= 1 and iv.max() <= 2 * 1 + 1
