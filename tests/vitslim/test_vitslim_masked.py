"""The masked model: equal to timm's DeiT with the same weights, the official mask semantics, budgets to masks as
`calculate_search_threshold` + `compress(_patch)`, and the importers (DeiT file, timm state dict and model object,
ViT-Slim checkpoints with each mask variant and their stored budgets)."""
from __future__ import annotations

import argparse
import math

import pytest
import torch

from deploy_nas.errors import CheckpointError, InvalidSubnetConfig
from deploy_nas.family import FAMILIES
from deploy_nas.spaces.vitslim import SlimConfig
from deploy_nas.supernets import load_official
from deploy_nas.supernets.vitslim import SlimImportOptions, _keep, prune_config
from tests.vitslim.helpers import arch, images, random_masked

timm = pytest.importorskip("timm")
FAMILY = FAMILIES.get("vitslim")


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "deit_small_patch16_224"])
def test_unpruned_model_equals_timm_deit(name):
    reference = timm.create_model(name, pretrained=False).eval()
    model, space = FAMILY.from_checkpoint({"model": reference.state_dict()}, SlimImportOptions())
    assert space.name == f"vitslim-{name[:-len('_patch16_224')].replace('_', '-')}"
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(x)
        got = model(x, SlimConfig())  # budgets 1: every mask 1
        from_object = FAMILY.from_checkpoint(reference, SlimImportOptions())[0](x, SlimConfig())
    assert (got - expected).abs().max().item() <= 1e-5
    assert torch.equal(got, from_object)


def test_masks_sit_after_the_qkv_bias_shared_by_q_k_v_and_after_gelu():
    a = arch("deit-tiny", img_size=32)
    model = random_masked(a, seed=1)
    x = images(a)
    masks = model.soft_masks()
    with torch.no_grad():
        for b in model.blocks:
            b.attn.patch_zeta.fill_(50.0)  # tanh = 1: tokens unmasked
        masks = model.soft_masks()
        channel, mlp_unit = (0, 5), 7
        masks[0][0].fill_(1.0)
        masks[0][0][0, 0, channel[0], 0, channel[1]] = 0.0
        masks[0][2].fill_(1.0)
        masks[0][2][0, 0, mlp_unit] = 0.0
        for i in range(1, a.depth):
            masks[i][0].fill_(1.0)
            masks[i][2].fill_(1.0)
        got = model.forward_masked(x, model.soft_masks())
        # the same by weight surgery: zero rows (and biases) of q, k and v at (head 0, channel 5), zero fc2 column 7
        row = channel[0] * a.head_dim + channel[1]
        for part in range(3):
            model.blocks[0].attn.qkv.weight[part * a.embed_dim + row] = 0
            model.blocks[0].attn.qkv.bias[part * a.embed_dim + row] = 0
        model.blocks[0].mlp.fc2.weight[:, mlp_unit] = 0
        model.blocks[0].attn.zeta.fill_(1.0)
        model.blocks[0].mlp.zeta.fill_(1.0)
        expected = model.forward_masked(x, model.soft_masks())
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_a_fully_masked_token_keeps_its_residual_and_still_is_a_bias_only_key():
    a = arch("deit-tiny", img_size=32, depth=1)
    model = random_masked(a, seed=2)
    with torch.no_grad():
        model.blocks[0].attn.patch_zeta.fill_(50.0)
        model.blocks[0].attn.patch_zeta[0, 3, 0] = 0.0  # tanh(0) = 0: token 3 masked
        x = images(a)
        masks = model.soft_masks()
        tokens = masks[0][1]
        assert tokens[0, 3, 0] == 0 and tokens[0, 2, 0] == 1
        captured = {}
        model.blocks[0].register_forward_hook(lambda m, i, o: captured.update(out=(i[0], o)) and None)
        model.forward_masked(x, masks)
        inp, out = captured["out"]
        attn = model.blocks[0].attn
        E = a.embed_dim
        # token 3: its normalized input is 0, so its own query is the q bias; attention output and MLP as such
        zeta = attn.zeta.expand(1, 1, a.num_heads, 1, a.head_dim).reshape(a.num_heads, a.head_dim)
        q = attn.qkv.bias[:E].reshape(a.num_heads, a.head_dim) * zeta
        h = model.blocks[0].norm1(inp) * tokens
        kv = attn.qkv(h).reshape(2, -1, 3, a.num_heads, a.head_dim)[:, :, 1:] * zeta  # (B, N, k|v, H, d)
        k, v = kv[..., 0, :, :], kv[..., 1, :, :]
        logits = torch.einsum("hd,bnhd->bhn", q, k) * attn.scale
        o = torch.einsum("bhn,bnhd->bhd", logits.softmax(-1), v).reshape(2, E)
        after_attn = inp[:, 3] + attn.proj(o)
        mlp = model.blocks[0].mlp
        expected = after_attn + mlp.fc2(torch.nn.functional.gelu(mlp.fc1.bias) * model.blocks[0].mlp.zeta[0, 0])
    torch.testing.assert_close(out[:, 3], expected, rtol=0, atol=1e-5)


def test_budgets_threshold_globally_at_the_official_index_with_ties_kept():
    layers = [torch.tensor([0.1, 0.9, 0.5, 0.5]), torch.tensor([0.3, 0.5, 0.2, 0.8])]
    # sorted: .1 .2 .3 .5 .5 .5 .8 .9; budget .5 -> index int(0.5 * 8) = 4 -> threshold .5, kept >= .5: 5 values
    kept = _keep(layers, 0.5)
    assert [k.tolist() for k in kept] == [[False, True, True, True], [False, True, False, True]]
    assert sum(int(k.sum()) for k in _keep(layers, 1.0)) == 8
    # budget .3 -> index int(0.7 * 8) = 5 (float: 0.7 * 8 = 5.6): threshold .5 again
    assert int(sum(k.sum() for k in _keep(layers, 0.3))) == 5
    assert int(math.floor((1 - 0.3) * 8)) == 5


def test_token_masks_are_made_monotone_from_the_last_layer_back():
    a = arch("deit-tiny", img_size=64, depth=3)
    model = random_masked(a, seed=3)
    with torch.no_grad():
        for b in model.blocks:
            b.attn.patch_zeta.fill_(-1.0)
        model.blocks[2].attn.patch_zeta[0, 5, 0] = 3.0  # kept at the last layer only by its own mask
        model.blocks[0].attn.patch_zeta[0, 7, 0] = 3.0
    n = a.num_tokens
    masks = model.binary_masks(SlimConfig(budget_patch=1.5 / (3 * n)))  # index int(3n - 1.5): the 2 largest
    kept = [set(torch.nonzero(m[1].reshape(-1)).reshape(-1).tolist()) for m in masks]
    assert kept[2] == {5} and kept[1] == {5} and kept[0] == {5, 7}


@pytest.mark.parametrize("variant, shape", [("channel", (1, 1, 3, 1, 64)), ("head", (1, 1, 3, 1, 1)),
                                            ("uniform", (1, 1, 1, 1, 64))])
def test_official_checkpoints_load_each_mask_variant_with_their_stored_budgets(tmp_path, variant, shape):
    a = arch("deit-tiny", mask=variant)
    model = random_masked(a)
    sd = model.state_dict()
    assert tuple(sd["blocks.0.attn.zeta"].shape) == shape
    args = argparse.Namespace(budget_attn=0.5, budget_mlp=0.6, budget_patch=0.7, head_search=variant == "head")
    torch.save({"model": sd, "optimizer": {}, "epoch": 49, "args": args}, tmp_path / "ckpt.pth")
    loaded, _ = load_official(tmp_path / "ckpt.pth", "vitslim")  # weights_only: argparse.Namespace is allowed
    assert loaded.arch.mask == variant and loaded.budgets == SlimConfig(0.5, 0.6, 0.7)
    assert prune_config(loaded, {"budget_attn": None, "budget_mlp": 0.4, "budget_patch": None}) == \
        SlimConfig(0.5, 0.4, 0.7)
    x = images(a)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, SlimConfig(0.5, 0.5, 0.5)), model(x, SlimConfig(0.5, 0.5, 0.5)),
                                   rtol=0, atol=0)


def test_a_plain_deit_gets_masks_at_their_official_initial_values():
    reference = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    model, _ = FAMILY.from_checkpoint(reference.state_dict(), SlimImportOptions(mask="head"))
    assert model.arch.mask == "head" and model.budgets is None
    assert torch.equal(model.blocks[0].attn.zeta, torch.ones(1, 1, 3, 1, 1))
    assert torch.allclose(torch.tanh(model.blocks[0].attn.patch_zeta), torch.tensor(math.tanh(3.0)))
    with pytest.raises(InvalidSubnetConfig, match="give the budgets"):
        prune_config(model, {"budget_attn": 0.5, "budget_mlp": None, "budget_patch": None})


@pytest.mark.parametrize("change, message", [
    (lambda sd: sd.update({"blocks.0.attn.zeta": torch.ones(1, 1, 5, 1, 7)}), "matches no ViT-Slim mask"),
    (lambda sd: sd.update({"blocks.0.attn.zeta": torch.ones(1, 3, 1, 64)}), "ViT-Slim masks are"),
    (lambda sd: sd.update({"dist_token": torch.zeros(1, 1, 192)}), "distilled DeiT"),
    (lambda sd: sd.pop("cls_token"), "not a ViT"),
    (lambda sd: sd.update({"blocks.1.mlp.zeta": torch.ones(1, 1, 10)}), "misshapen"),
])
def test_bad_checkpoints_get_typed_errors(change, message):
    sd = random_masked(arch("deit-tiny")).state_dict()
    change(sd)
    with pytest.raises(CheckpointError, match=message):
        FAMILY.from_checkpoint({"model": sd}, SlimImportOptions())


@pytest.mark.parametrize("budgets", [(0, 1, 1), (1, 1.5, 1), (1, 1, float("nan")), (-0.1, 1, 1), (True, 1, 1)])
def test_budgets_outside_the_unit_interval_are_refused(budgets):
    with pytest.raises(InvalidSubnetConfig, match="not a budget"):
        SlimConfig(*budgets)
