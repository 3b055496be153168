"""The dense pruned model equals the masked model (fp32, <= 1e-5 max abs on logits): budgets {1, .7, .5, .3} on each
mask family alone and all combined, DeiT-tiny and DeiT-small widths, random masks; the mask variants, both ragged-head
layouts, padding to 8, a masked CLS, soft masks folded; FLOPs of the dense model = the analytic count; then the
lowering parity with onnxruntime and OpenVINO."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from deploy_nas.dense import load_dense, save_dense
from deploy_nas.flops import count_flops
from deploy_nas.materialize import materialize
from deploy_nas.spaces.vitslim import SlimConfig
from tests.vitslim.helpers import arch, images, random_masked

EXACT = 1e-5
BUDGETS = (1.0, 0.7, 0.5, 0.3)
MATRIX = sorted({(b, 1.0, 1.0) for b in BUDGETS} | {(1.0, b, 1.0) for b in BUDGETS}
                | {(1.0, 1.0, b) for b in BUDGETS} | {(b, b, b) for b in BUDGETS})


def worst_error(model, configs, x) -> tuple[float, list]:
    worst, dense = 0.0, []
    for budgets in configs:
        cfg = SlimConfig(*budgets) if not isinstance(budgets, SlimConfig) else budgets
        d = materialize(model, cfg)
        with torch.no_grad():
            ref = model(x, cfg)
            assert ref.abs().max() > 0.1
            worst = max(worst, (d(x) - ref).abs().max().item())
        dense.append(d)
    return worst, dense


@pytest.mark.parametrize("size", ["deit-tiny", "deit-small"])
def test_budget_matrix_is_exact(size):
    a = arch(size)
    model = random_masked(a, seed=0)
    worst, dense = worst_error(model, MATRIX, images(a))
    print(f"\n{size}: {len(MATRIX)} budget triples, worst max abs error {worst:.3g}")
    assert worst <= EXACT
    pruned = dict(zip(MATRIX, dense))[(0.3, 0.3, 0.3)]
    full = sum(p.numel() for p in dense[MATRIX.index((1.0, 1.0, 1.0))].parameters())
    assert sum(p.numel() for p in pruned.parameters()) < 0.5 * full  # it really is smaller


@pytest.mark.parametrize("mask", ["channel", "head", "uniform"])
@pytest.mark.parametrize("layout", ["padded", "grouped"])
def test_mask_variants_and_head_layouts_are_exact(mask, layout):
    a = arch("deit-tiny", mask=mask, head_layout=layout, pad_to=8 if layout == "padded" else 1)
    model = random_masked(a, seed=1)
    worst, dense = worst_error(model, [(0.5, 0.5, 0.7), (0.3, 1.0, 0.5), (0.7, 0.3, 0.3)], images(a))
    assert worst <= EXACT
    blocks = [b for d in dense for b in d.spec.body.blocks if b.num_heads]
    if layout == "padded":
        assert all(b.head_dim % 8 == 0 and b.head_groups is None for b in blocks)
    elif mask == "channel":
        assert any(len(b.head_groups) > 1 for b in blocks)  # heads of several widths, one attention per width


def test_fully_pruned_attention_and_mlp_become_their_constant_biases():
    a = arch("deit-tiny", depth=3)
    model = random_masked(a, seed=2)
    with torch.no_grad():
        model.blocks[1].attn.zeta.fill_(0.0)  # the lowest values: the first pruned
        model.blocks[2].mlp.zeta.fill_(0.0)
    worst, (d,) = worst_error(model, [(0.6, 0.6, 1.0)], images(a))
    assert worst <= EXACT
    assert d.spec.body.blocks[1].num_heads == 0 and d.spec.body.blocks[2].mlp_hidden == 0


def test_a_masked_cls_token_stays_with_its_input_zeroed():
    a = arch("deit-tiny", depth=3)
    model = random_masked(a, seed=3)
    with torch.no_grad():
        for b in model.blocks[1:]:
            b.attn.patch_zeta[0, 0, 0] = -3.0  # CLS masked from block 1 on
    worst, (d,) = worst_error(model, [(0.7, 0.7, 0.7)], images(a))
    assert worst <= EXACT
    blocks = d.spec.body.blocks
    assert not blocks[0].token_scale and blocks[1].token_scale and blocks[2].token_scale
    assert (blocks[1].tokens is None or blocks[1].tokens[0] == 0) and float(d.blocks[1].token_scale[0]) == 0.0
    assert float(d.blocks[1].token_scale[1:].min()) == 1.0


def test_soft_masks_fold_into_the_weights():
    a = arch("deit-small")
    model = random_masked(a, seed=4)
    worst, (d,) = worst_error(model, [SlimConfig(soft=True)], images(a))
    assert worst <= EXACT
    assert all(b.token_scale and b.head_widths is None for b in d.spec.body.blocks)
    assert not any("zeta" in k for k in d.state_dict())


def test_dense_model_survives_save_and_load(tmp_path):
    a = arch("deit-tiny", head_layout="grouped")
    model = random_masked(a, seed=5)
    cfg = SlimConfig(0.5, 0.5, 0.7)
    d = materialize(model, cfg)
    again = load_dense(save_dense(d, tmp_path / "d"))
    x = images(a)
    with torch.no_grad():
        assert torch.equal(again(x), d(x))
    assert again.spec == d.spec


@pytest.mark.parametrize("budgets", [(1.0, 1.0, 1.0), (0.5, 0.5, 0.7), (0.7, 0.7, 0.7), (0.3, 0.5, 0.5)])
def test_flops_of_the_dense_model_match_the_analytic_count(budgets):
    a = arch("deit-small", img_size=224, head_layout="grouped")  # grouped: exactly the kept widths
    model = random_masked(a, seed=6)
    cfg = SlimConfig(*budgets)
    flops = count_flops(materialize(model, cfg))
    assert not flops.unsupported, flops.unsupported
    gemms = flops.macs - flops.by_operator.get("layer_norm", 0)  # fvcore counts 5 per normalized element; papers 0
    assert gemms == model.macs(cfg), (flops.by_operator, model.macs(cfg))
    if budgets == (1.0, 1.0, 1.0):
        assert abs(flops.gmacs - 4.6) < 0.05  # DeiT-S: 4.6 GFLOPs (MACs) as published


@pytest.mark.openvino
@pytest.mark.parametrize("layout", ["padded", "grouped"])
def test_pruned_deit_deploys_with_parity(tmp_path, layout):
    from deploy_nas.export.pipeline import RunPlan, run

    a = replace(arch("deit-tiny", img_size=96), head_layout=layout)
    model = random_masked(a, seed=7)
    plan = RunPlan(targets=(("onnxruntime", "fp32"), ("openvino", "fp32")), batches=(1,), threads=1, runs=50,
                   warmup=2, cross_check_module=False)
    report = run(materialize(model, SlimConfig(0.5, 0.5, 0.7)), tmp_path / "out", plan)
    assert report.passed, [(p.backend, p.max_abs) for p in report.parity]
    assert report.model["family"] == "vitslim"
