"""The relative-position kernels: the compact form (the dense models'), the augmented and separable forms and the
gather/scatter form (earlier lowerings) against the reference (N, N, D) form, at every grid and R the spaces allow,
clipping (G > R + 1) included."""
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


@pytest.mark.parametrize("grid, R", GRIDS + [(6, 3), (3, 1)])
@pytest.mark.parametrize("dv", [16, 8])
def test_compact_attention_equals_the_reference(grid, R, dv):
    q, _, tv, th = _inputs(grid, R)
    g = torch.Generator().manual_seed(11)
    k, v = torch.randn(q.shape, generator=g), torch.randn(*q.shape[:3], dv, generator=g)
    values = (torch.randn(tv.shape[0], dv, generator=g), torch.randn(th.shape[0], dv, generator=g))
    iv, ih = relpos.relative_position_index(grid, R)
    scale = 0.3
    attn = ((q @ k.transpose(-2, -1) + relpos.key_logits_reference(q, tv, th, iv, ih)) * scale).softmax(-1)
    ref = attn @ v + relpos.value_term_reference(attn, *values, iv, ih)
    out = relpos.compact_attention(q, k, v, scale, (tv, th), values, relpos.compact_index(grid, R))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=2e-5)


def test_compact_index_layout():
    """A 3 x 3 grid at R = 1: the offset tables clip, each query reads its own window of offsets, and every key
    row / column of a patch query lands in exactly one slot of the values table."""
    c = relpos.compact_index(3, 1)
    assert c.offsets.tolist() == [1, 1, 2, 3, 3]  # offsets -2..2 clipped to -1..1, shifted by R + 1
    L = 5
    # query (row 1, col 2) = token 1 + 1 * 3 + 2: key rows 0..2 are offsets -1..1 -> u columns 1..3; key columns
    # 0..2 are offsets -2..0 -> columns L + 1 + 0..2; then the cls-key column
    assert c.query[6].tolist() == [1, 2, 3, L + 1, L + 2, L + 3, 2 * L + 2]
    assert c.query[0].tolist() == [L] * 3 + [2 * L + 1] * 3 + [2 * L + 2]
    assert c.keys[0].tolist() == [0] * 6 + [1] and c.keys[1 + 3 + 2].tolist() == [0, 1, 0, 0, 0, 1, 0]
    slots = c.value_slots[6]  # row offsets -2..2 hold key rows -1(none), 0, 1, 2, 3(none): the zero column 8
    assert slots[:L].tolist() == [8, 0, 1, 2, 8] and slots[L:2 * L].tolist() == [3, 4, 5, 8, 8]
    assert slots[-1] == 6 and c.value_slots[0].tolist() == [8] * 2 * L + [7]


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


def test_the_compact_graph_gathers_only_small_tensors(tmp_path):
    """Exported, the compact form's only index ops on activations are two GatherElements per layer, on
    (B, H, N, 4G + 1) and (B, H, N, 2G + 3) tensors, never on (N, N) ones; nothing is scattered."""
    import onnx

    grid, R, d = 4, 2, 8
    N = grid * grid + 1

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tables = torch.nn.ParameterList(torch.nn.Parameter(torch.randn(2 * R + 2, d)) for _ in range(4))
            for name, value in relpos.compact_index(grid, R)._asdict().items():
                self.register_buffer(name, value)

        def forward(self, q):
            index = relpos.CompactIndex(*(getattr(self, n) for n in relpos.CompactIndex._fields))
            return relpos.compact_attention(q, q, q, 0.5, tuple(self.tables[:2]), tuple(self.tables[2:]), index)

    path = tmp_path / "c.onnx"
    torch.onnx.export(Layer(), (torch.randn(1, 2, N, d),), str(path), dynamo=False, opset_version=17,
                      input_names=["q"], dynamic_axes={"q": {0: "batch"}})
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = {v.name: [x.dim_value for x in v.type.tensor_type.shape.dim] for v in model.graph.value_info}
    constants = {t.name for t in model.graph.initializer}
    ops = [n.op_type for n in model.graph.node]
    assert not {"ScatterElements", "ScatterND"} & set(ops) and ops.count("GatherElements") == 2, ops
    widths = sorted(shapes[n.input[0]][-1] for n in model.graph.node if n.op_type == "GatherElements")
    assert widths == [4 * grid + 1, d + 2 * grid + 3] and all(shapes[n.output[0]][-2] == N for n in model.graph.node
                                                                if n.op_type == "GatherElements")
    shape_ops = {o for n in model.graph.node if n.op_type == "Shape" for o in n.output}
    assert all(set(n.input) <= constants for n in model.graph.node  # tables: folded; batch-size gathers aside
               if n.op_type == "Gather" and n.input[0] not in shape_ops)
