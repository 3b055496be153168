"""The NASViT supernet and its dense subnets: exactness (stored and recalibrated BatchNorm statistics), the
recalibration itself, the switchable scaling's row choice, what the dense module holds, MACs and parameter counts
against the official numbers, and input resizing."""
from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

from deploy_nas.dense import load_dense, save_dense
from deploy_nas.dense import nasvit as dense
from deploy_nas.errors import DataError, InvalidSubnetConfig
from deploy_nas.family import Calibration
from deploy_nas.flops import count_flops
from deploy_nas.materialize import materialize
from deploy_nas.spaces import SPACES
from deploy_nas.supernets.nasvit import ElasticBatchNorm, TransformerBlock, macs, param_count
from tests.nasvit.nasvit_helpers import configs, images, random_supernet, tiny_space

ATOL = 1e-4  # Family.exactness_atol (the bound); measured errors are ~1e-7


@pytest.fixture(scope="module")
def supernet():
    return random_supernet()


@pytest.fixture(scope="module")
def calib():
    return Calibration("recalibrate", images(10, seed=7).numpy(), batch_size=4)


@pytest.mark.slow
@pytest.mark.parametrize("resolution", [32, 40, 48])
def test_dense_equals_the_supernet_for_min_max_and_30_random_configs(supernet, resolution):
    """Each config's statistics recalibrated (one batch of 4 images) for both the supernet and the dense model."""
    x, worst = images(2), 0.0  # the supernet's input size (48 px), resized inside to the resolution
    calib = Calibration("recalibrate", images(4, seed=resolution + 100).numpy(), batch_size=4)
    for cfg in configs(tiny_space(), 30, seed=resolution, resolution=resolution):
        with torch.no_grad():
            ref, out = supernet.fixed(cfg, calib)(x), materialize(supernet, cfg, calib=calib)(x)
        assert ref.abs().max() > 0.1
        worst = max(worst, (out - ref).abs().max().item())
    print(f"\nnasvit-tiny at {resolution} px, recalibrated: worst max abs error {worst:.3g} over 32 configs")
    assert worst <= ATOL


def test_dense_equals_the_supernet_with_recalibrated_statistics_through_save_and_load(supernet, calib, tmp_path):
    x = images(3, seed=1)
    for cfg in configs(tiny_space(), 2, seed=5)[1:]:
        model = load_dense(save_dense(materialize(supernet, cfg, calib=calib), tmp_path / cfg.id))
        with torch.no_grad():
            ref, out = supernet.fixed(cfg, calib)(x), model(x)
            stored = supernet.fixed(cfg)(x)
        assert (out - ref).abs().max() <= ATOL
        assert (ref - stored).abs().max() > 1e-2  # the recalibrated statistics really differ from the stored ones
        assert model.spec.source["bn"] == "recalibrated on 10 images in 3 batches of 4"


def _reference_statistics(supernet, cfg, batches):
    """The official procedure on a copy: each batch normalized with its own statistics, each BN's per-batch mean
    and unbiased variance averaged over the batches (what momentum None accumulates)."""
    model, seen = copy.deepcopy(supernet), {}

    def hook(module, args):
        x = args[0]
        seen.setdefault(module.key, []).append((x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)))

    for m in model.modules():
        if isinstance(m, ElasticBatchNorm):
            m.register_forward_pre_hook(hook)
    model.train()  # batch statistics (the copy's stored statistics move; the original's do not)
    with torch.no_grad():
        for b in batches:
            model(torch.as_tensor(b), cfg)
    return {k: (torch.stack([m for m, _ in s]).mean(0), torch.stack([v for _, v in s]).mean(0))
            for k, s in seen.items()}


def test_recalibration_is_the_cumulative_average_and_leaves_the_supernet_untouched(supernet, calib):
    cfg = tiny_space().sample(None, "max")
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    stats = supernet.recalibrate(cfg, calib)
    reference = _reference_statistics(supernet, cfg, calib.batches())
    assert set(stats) == set(reference) and len(stats) > 20
    for key, (mean, var) in stats.items():
        assert torch.allclose(mean, reference[key][0], atol=1e-5) and torch.allclose(var, reference[key][1], atol=1e-4)
    supernet.fixed(cfg, calib)
    materialize(supernet, cfg, calib=calib)
    assert all(torch.equal(v, before[k]) for k, v in supernet.state_dict().items())


def test_training_mode_moves_only_the_used_slices_of_the_stored_statistics():
    model = random_supernet(seed=3).train()
    cfg = tiny_space().sample(None, "min")
    bn = model.first_conv.bn.bn
    mean = bn.running_mean.clone()
    model(images(4), cfg)
    used = cfg.width[0]
    assert not torch.equal(bn.running_mean[:used], mean[:used]) and torch.equal(bn.running_mean[used:], mean[used:])


def test_stored_statistics_are_the_eval_mode_and_the_default(supernet):
    cfg, x = tiny_space().sample(None, "max"), images(2)
    with torch.no_grad():
        plain = supernet.eval()(x, cfg)
        assert torch.equal(supernet.fixed(cfg)(x), plain)
        assert torch.equal(supernet.fixed(cfg, Calibration("stored"))(x), plain)
    assert materialize(supernet, cfg).spec.source["bn"] == "stored (no calibration given)"


@pytest.mark.parametrize("calib, error, message", [
    (Calibration("recalibrate"), DataError, "official evaluation uses 64 batches .* --calib-data DIR .* --bn stored"),
    (Calibration("recalibrate", torch.zeros(4, 1, 48, 48).numpy()), DataError, r"expected \(N >= 2, 3, H, W\)"),
    (Calibration("recalibrate", torch.zeros(1, 3, 48, 48).numpy()), DataError, r"shape \(1, 3, 48, 48\)"),
    (Calibration("guess"), InvalidSubnetConfig, "choose recalibrate or stored")])
def test_bad_calibration_is_a_typed_error(supernet, calib, error, message):
    cfg = tiny_space().sample(None, "min")
    with pytest.raises(error, match=message):
        materialize(supernet, cfg, calib=calib)


def test_a_single_trailing_image_joins_the_last_batch(supernet):
    calib = Calibration("recalibrate", images(9, seed=2).numpy(), batch_size=4)  # 4 + 4 + 1 -> 4 + 5
    stats = supernet.recalibrate(tiny_space().sample(None, "min"), calib)  # a 1-image batch on a 1x1 map would fail
    assert all(torch.isfinite(m).all() and torch.isfinite(v).all() for m, v in stats.values())


def test_the_switchable_scale_is_chosen_by_stage_depth_and_token_count_mod_8():
    model = random_supernet(seed=4)
    cfg = replace(tiny_space().sample(None, "max"), resolution=40, depth=(2, 2, 2, 3, 3, 3, 3))
    block = next(b for b in model.blocks if isinstance(b, TransformerBlock))  # mb4: 5 x 5 = 25 tokens, slot 1
    x = images(2)
    with torch.no_grad():
        base = model(x, cfg)
        block.rescale_attn[3, 2] += 1.0  # another token-count slot: unused
        block.rescale_mlp[2, 1] += 1.0  # another depth: unused
        assert torch.equal(model(x, cfg), base)
        block.rescale_attn[3, 1, :cfg.width[4]] += 1.0  # depth 3, slot 25 % 8 = 1: used
        changed = model(x, cfg)
    assert (changed - base).abs().max() > 1e-3


def test_the_dense_module_has_no_batchnorm_and_no_scaling_left(supernet):
    cfg = tiny_space().sample(None, "max")
    sub = supernet.subnet_state(cfg)
    folded = [f for f in sub.folds if type(f).__name__ == "ScaleFold"]
    assert len(folded) == 4 * sum(isinstance(b, dense.TransformerSpec) for b in sub.spec.body.blocks)  # q + 3 scales
    model = materialize(supernet, cfg)
    kinds = {type(m) for m in model.modules()}
    assert not any(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in kinds)
    allowed = {dense.NASViT, dense.MBConv, dense.SqueezeExcite, dense.TransformerBlock, dense.TokenNorm,
               dense.Attention, dense.HeadMix, dense.Mlp, dense.Head, nn.Conv2d, nn.Linear, nn.AvgPool2d, nn.ModuleList}
    assert kinds <= allowed, kinds - allowed
    names = [n for n, _ in model.named_parameters()]
    assert not [n for n in names if "rescale" in n or "_bn" in n or "rel_bias" in n or "proj_l.bias" in n]
    assert [b.kind for b in model.spec.body.blocks].count("transformer") == sum(d - 1 for d in cfg.depth[3:])


def test_dense_resizes_other_input_sizes_like_the_supernet(supernet):
    cfg = replace(tiny_space().sample(None, "min"), resolution=40)
    model, x = materialize(supernet, cfg), images(2, size=48)
    resized = torch.nn.functional.interpolate(x, size=40, mode="bicubic")
    with torch.no_grad():
        assert torch.equal(model(x), model(resized))
        assert (model(resized) - supernet(x, cfg)).abs().max() <= ATOL
    assert model.spec.img_size == 40


@pytest.mark.parametrize("kind, resolution, mmacs, params", [
    ("min", 224, 276.16, 8_242_720), ("max", 224, 1040.98, 16_612_670), ("min", 192, 189.79, None),
    ("max", 288, 1881.71, None)])
def test_macs_and_parameters_of_the_official_space(kind, resolution, mmacs, params):
    """The numbers checked against the official code (../shared/reference, section 6)."""
    space = SPACES.get("nasvit")
    cfg = replace(space.sample(None, kind), resolution=resolution)
    assert round(macs(space, cfg) / 1e6, 2) == mmacs
    if params is not None:
        assert param_count(space, cfg) == params


def test_fvcore_counts_the_dense_model_as_the_formula(supernet):
    for cfg in configs(tiny_space(), 2, seed=9):
        report = count_flops(materialize(supernet, cfg))
        counted = sum(report.by_operator.get(op, 0) for op in ("conv", "linear", "matmul"))
        assert counted == supernet.macs(cfg) > 0


def test_config_that_does_not_fit_the_supernet(supernet):
    cfg = tiny_space().sample(None, "max")
    for change, message in (({"width": (16, 16, 24, 32, 48, 48, 56, 64, 96)}, r"width\[4\] \(mb4\) = 48 does not fit"),
                            ({"width": (16, 16, 24, 32, 36, 48, 56, 64, 96)}, "not a multiple of the head dim"),
                            ({"resolution": 64}, "larger than the 6 x 6 window"),
                            ({"depth": (2, 2, 2, 4, 3, 3, 3)}, r"depth\[3\] \(mb4\) = 4 does not fit")):
        with pytest.raises(InvalidSubnetConfig, match=message):
            supernet(images(1), replace(cfg, **change))


def test_no_weight_decay_is_the_official_exclusion_list(supernet):
    skip = supernet.no_weight_decay()
    names = dict(supernet.named_parameters())
    assert {n for n in names if "rescale" in n} <= skip
    assert "blocks.0.mobile_inverted_conv.depth_conv.bn.bn.weight" in skip and "classifier.linear.linear.bias" in skip
    assert "blocks.7.attn.q.linear.weight" not in skip and "first_conv.conv.conv.weight" not in skip


def test_dense_equals_the_supernet_on_the_official_space():
    """A few subnets of the official-size space (the benchmark checks more): the smallest at 192 px, the largest at
    224 px, with 224 px input resized inside as the official models do."""
    space = SPACES.get("nasvit")
    supernet = random_supernet(space, seed=11)
    x = images(1, size=224, seed=4)
    for cfg in (space.sample(None, "min"), replace(space.sample(None, "max"), resolution=224)):
        with torch.no_grad():
            ref, out = supernet.fixed(cfg)(x), materialize(supernet, cfg)(x)
        assert ref.abs().max() > 0.1 and (out - ref).abs().max() <= ATOL
