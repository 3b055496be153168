"""Materialization is exact: load_dense(save(materialize(supernet, cfg)))(x) == supernet(x, cfg) to 1e-5 in fp32.

The supernets here use the reference relative-position form (the official (N, N, D) tensors), the dense models the
lowered kernels (the compact form by default; every lowering in the grid/range test), so these tests also check the
kernels end to end.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from deploy_nas import PRESETS, SPACES, load_dense, materialize, save_dense
from deploy_nas.dense import build_dense
from deploy_nas.dense.vit import LOWERINGS
from deploy_nas.flops import count_params
from tests.conftest import make_supernet, narrow_space, seeded_configs

TOL = 1e-5
WORST: dict[str, float] = {}


def _max_abs_error(supernet, cfg, x, tmp_path) -> float:
    with torch.no_grad():
        ref = supernet(x, cfg)
        dense = load_dense(save_dense(materialize(supernet, cfg), tmp_path / cfg.id, force=True))
        out = dense(x)
    assert out.shape == ref.shape
    assert ref.abs().max() > 0.1, "logits too small for a meaningful 1e-5 check"
    # The official count always adds E * (2 + patches) for cls + pos, even without a position embedding.
    pos_quirk = 0 if supernet.arch.abs_pos else cfg.embed_dim * (1 + supernet.arch.num_patches)
    assert count_params(dense) == supernet.official_param_count(cfg) - pos_quirk
    return (out - ref).abs().max().item()


@pytest.mark.slow
def test_real_T_space_min_max_preset_and_50_random(tmp_path):
    space = SPACES.get("autoformer-T")
    supernet = make_supernet(space, seed=1)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    configs = seeded_configs(space, 50, seed=1) + [PRESETS.get("autoformer-t").config]
    errors = [_max_abs_error(supernet, cfg, x, tmp_path) for cfg in configs]
    WORST["T"] = max(errors)
    print(f"\nautoformer-T (real sizes): {len(errors)} configs, worst max abs error {max(errors):.3g}")
    assert max(errors) <= TOL


@pytest.mark.parametrize("name", ["autoformer-S", "autoformer-B", "autoformer-tiny"])
def test_narrow_spaces_min_max_and_50_random(name, tmp_path):
    space = narrow_space(name) if name != "autoformer-tiny" else SPACES.get(name)
    supernet = make_supernet(space, seed=2)
    x = torch.randn(4, 3, space.img_size, space.img_size, generator=torch.Generator().manual_seed(0))
    errors = [_max_abs_error(supernet, cfg, x, tmp_path) for cfg in seeded_configs(space, 50, seed=2)]
    print(f"\n{name}: {len(errors)} configs, worst max abs error {max(errors):.3g}")
    assert max(errors) <= TOL


@pytest.mark.parametrize("preset", ["autoformer-s", "autoformer-b"])
def test_published_presets_on_narrowed_supernets(preset, tmp_path):
    space = narrow_space({"autoformer-s": "autoformer-S", "autoformer-b": "autoformer-B"}[preset])
    supernet = make_supernet(space, seed=3)
    cfg = PRESETS.get(preset).config
    # Same depth/heads/ratios as published, embed dim narrowed like the space.
    cfg = type(cfg)(cfg.depth, cfg.embed_dim // 8, cfg.mlp_ratio, cfg.num_heads)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert _max_abs_error(supernet, cfg, x, tmp_path) <= TOL


# Legacy mode (change_qkv off): head dim = E_sup / heads, so only head counts dividing E_sup fit, and with
# relative position the tables must be that wide; the official code has the same constraint.
@pytest.mark.parametrize("flags", [dict(gp=False), dict(pre_norm=False), dict(abs_pos=False),
                                   dict(change_qkv=False, relative_position=False),
                                   dict(relative_position=False), dict(qkv_bias=False)])
def test_import_flag_variants_are_exact(flags, tmp_path):
    space = SPACES.get("autoformer-tiny")
    supernet = make_supernet(space, seed=4, **flags)
    configs = [c for c in seeded_configs(space, 12, seed=4)
               if flags.get("change_qkv", True) or all(space.super_embed_dim % h == 0 for h in c.num_heads)]
    assert len(configs) >= 3
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for cfg in configs:
        assert _max_abs_error(supernet, cfg, x, tmp_path) <= TOL


# (img size, patch, R): grids of 1 to 8 tokens a side, with and without clipping (a grid larger than R + 1 clips
# offsets), the demo's 6 x 6 grid at R = 3 among them.
@pytest.mark.parametrize("img_size, patch, R", [(32, 8, 2), (48, 8, 3), (32, 4, 2), (64, 8, 14), (16, 16, 1),
                                                (40, 8, 1), (32, 16, 3)])
def test_every_lowering_is_exact_at_every_grid_and_range(img_size, patch, R):
    space = dataclasses.replace(SPACES.get("autoformer-tiny"), img_size=img_size, patch_size=patch,
                                max_relative_position=R)
    supernet = make_supernet(space, seed=5)
    x = torch.randn(2, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    for cfg in seeded_configs(space, 4, seed=5):
        dense = materialize(supernet, cfg)
        assert dense.spec.body.relpos_lowering == "compact"
        with torch.no_grad():
            ref = supernet(x, cfg)
            for lowering in LOWERINGS:
                body = dataclasses.replace(dense.spec.body, relpos_lowering=lowering)
                model = build_dense(dataclasses.replace(dense.spec, body=body), dense.state_dict())
                err = (model(x) - ref).abs().max().item()
                assert err <= TOL, f"{lowering} at {img_size} px / {patch} (grid {img_size // patch}, R {R}): {err:.3g}"


def test_materialize_leaves_supernet_untouched(tiny_supernet, tiny_space):
    before = {k: v.clone() for k, v in tiny_supernet.state_dict().items()}
    dense = materialize(tiny_supernet, tiny_space.sample(__import__("random").Random(0), "max"))
    with torch.no_grad():
        for p in dense.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in tiny_supernet.state_dict().items())


def test_roundtrip_is_bit_identical(tiny_supernet, tiny_space, tmp_path):
    cfg = tiny_space.sample(__import__("random").Random(5))
    dense = materialize(tiny_supernet, cfg)
    again = load_dense(save_dense(dense, tmp_path / "d"))
    assert again.spec == dense.spec
    a, b = dense.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(dense(x), again(x))
    assert again.spec.body.blocks[0].attn_scale == dense.spec.body.blocks[0].attn_scale


def test_the_attention_scale_is_folded_into_the_q_rows(tiny_supernet, tiny_space, tmp_path):
    """AutoFormer's dense blocks carry their scale in the q rows of qkv (k and v rows as sliced), `attn_scale` 1.0, and
    the exported graph has no op between the projections and the QK matmul that multiplies or divides."""
    import onnx

    from deploy_nas.export.onnx import export_onnx

    cfg = tiny_space.sample(__import__("random").Random(3), "max")
    sub, dense = tiny_supernet.subnet_state(cfg), materialize(tiny_supernet, cfg)
    for i, (raw, folded) in enumerate(zip(tiny_supernet.dense_spec(cfg).body.blocks, dense.spec.body.blocks)):
        assert raw.attn_scale == tiny_supernet.blocks[i].attn.dims(cfg.embed_dim, cfg.num_heads[i])[2] != 1.0
        assert folded.attn_scale == 1.0
        q = raw.num_heads * raw.head_dim
        for part in ("weight", "bias"):
            before, after = sub.state[f"blocks.{i}.attn.qkv.{part}"], getattr(dense.blocks[i].attn.qkv, part)
            torch.testing.assert_close(after[:q], before[:q] * raw.attn_scale, rtol=1e-6, atol=0)
            assert torch.equal(after[q:], before[q:])
    graph = onnx.load(str(export_onnx(dense, tmp_path / "m.onnx").path)).graph
    producer = {o: n for n in graph.node for o in n.output}

    def upstream(name, depth=4):  # the ops feeding `name`, a few levels up (shape plumbing in between)
        node = producer.get(name)
        if node is None or depth == 0:
            return []
        return [node.op_type] + [t for i in node.input for t in upstream(i, depth - 1)]

    qk = [producer[n.input[0]] for n in graph.node if n.op_type == "Softmax"]
    assert len(qk) == cfg.depth and all(m.op_type == "MatMul" for m in qk)
    assert not {"Mul", "Div"} & {t for m in qk for i in m.input for t in upstream(i)}
