"""The relative-position kernels: the separable form (used) and the gather/scatter form (the previous lowering)
against the reference (N, N, D) form, at every grid and R the spaces allow, clipping (G > R + 1) included."""
from __future__ import annotations

import pytest
import torch

from deploy_nas.kernels import relpos

GRIDS = [(14, 14), (4, 2), (7, 3), (2, 14), (14, 2), (1, 1), (9, 4), (16, 14)]


def _inputs(grid: int, R: int, d: int = 16):
    g = torch.Generator().manual_seed(grid * 100 + R)
    N, K = grid * grid + 1, 2 * R + 2
    tv, th = torch.randn(K, d, generator=g), torch.randn(K, d, generator=g)
    q = torch.randn(2, 3, N, d, generator=g)
    attn = torch.randn(2, 3, N, N, generator=g).softmax(-1)
    return q, attn, tv, th


@pytest.mark.parametrize("grid, R", GRIDS)
def test_separable_forms_equal_the_reference(grid, R):
    q, attn, tv, th = _inputs(grid, R)
    iv, ih = relpos.relative_position_index(grid, R)
    idx = relpos.offset_index(grid, R)
    torch.testing.assert_close(relpos.key_logits(q, tv, th, idx), relpos.key_logits_reference(q, tv, th, iv, ih),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(relpos.value_term(attn, tv, th, idx),
                               relpos.value_term_reference(attn, tv, th, iv, ih), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("grid, R", GRIDS)
def test_augmented_attention_equals_the_reference(grid, R):
    q, attn_in, tv, th = _inputs(grid, R)
    g = torch.Generator().manual_seed(7)
    k, v = torch.randn(q.shape, generator=g), torch.randn(q.shape, generator=g)
    values = (torch.randn(tv.shape, generator=g), torch.randn(th.shape, generator=g))
    iv, ih = relpos.relative_position_index(grid, R)
    attn = (q @ k.transpose(-2, -1) + relpos.key_logits_reference(q, tv, th, iv, ih)).softmax(-1)
    ref = attn @ v + relpos.value_term_reference(attn, *values, iv, ih)
    out = relpos.attention(q, k, v, (tv, th), values, relpos.offset_index(grid, R), relpos.indicator_features(grid))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("grid, R", GRIDS[:4])
def test_gather_forms_equal_the_reference(grid, R):
    q, attn, tv, th = _inputs(grid, R)
    iv, ih = relpos.relative_position_index(grid, R)
    torch.testing.assert_close(relpos.key_logits_gather(q, tv, th, iv, ih),
                               relpos.key_logits_reference(q, tv, th, iv, ih), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(relpos.value_term_scatter(attn, tv, th, iv, ih),
                               relpos.value_term_reference(attn, tv, th, iv, ih), rtol=1e-5, atol=1e-6)


def test_index_layout_matches_the_official_definition():
    iv, ih = relpos.relative_position_index(3, 1)
    # cls row and column are 0; patch n=(0,0) vs m=(2,1): row offset +2 clipped to +1 -> 1+1+1 = 3; col +1 -> 3
    assert iv[0].eq(0).all() and iv[:, 0].eq(0).all()
    n, m = 1 + 0, 1 + 2 * 3 + 1
    assert (iv[n, m].item(), ih[n, m].item()) == (3, 3)
    assert (iv[m, n].item(), ih[m, n].item()) == (1, 1)
    assert iv[1:, 1:].min() >= 1 and iv.max() <= 2 * 1 + 1
    assert relpos.offset_index(3, 1).tolist() == [[2, 3, 3], [1, 2, 3], [1, 1, 2]]


def test_the_separable_graph_has_no_gather_or_scatter_on_activations(tmp_path):
    """Exported, the separable forms run MatMuls, reductions and reshapes; their only Gather reads constants."""
    import onnx

    class Keys(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tv, self.th = torch.nn.Parameter(torch.randn(6, 8)), torch.nn.Parameter(torch.randn(6, 8))
            self.register_buffer("idx", relpos.offset_index(4, 2))
            self.register_buffer("features", relpos.indicator_features(4))

        def forward(self, q, attn):
            tables = (self.tv, self.th)
            return (relpos.key_logits(q, *tables, self.idx), relpos.value_term(attn, *tables, self.idx),
                    relpos.attention(q, q, q, tables, tables[::-1], self.idx, self.features))

    path = tmp_path / "k.onnx"
    q, attn = torch.randn(1, 2, 17, 8), torch.randn(1, 2, 17, 17).softmax(-1)
    torch.onnx.export(Keys(), (q, attn), str(path), dynamo=False, opset_version=17, do_constant_folding=True)
    graph = onnx.load(str(path)).graph
    constants = {t.name for t in graph.initializer}
    ops = {n.op_type for n in graph.node}
    assert not ops & {"GatherElements", "ScatterElements", "ScatterND"} and "MatMul" in ops, ops
    assert all(set(n.input) <= constants for n in graph.node if n.op_type == "Gather")  # folded at export
