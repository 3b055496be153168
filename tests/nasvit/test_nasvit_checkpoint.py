"""The official checkpoint importer: `model_ema` preferred as the official loader does, the BN tracking buffers and
unused tensors of the official layout, the model's own relative-position index, the space found from the shapes
(or given), and typed errors for everything else."""
from __future__ import annotations

import json

import pytest
import torch

from deploy_nas.errors import CheckpointError
from deploy_nas.family import FAMILIES
from deploy_nas.spaces import SPACES
from deploy_nas.supernets import load_official, resolve_family
from deploy_nas.supernets.nasvit import NASViTImportOptions, expected_shapes
from tests.nasvit.nasvit_helpers import images, random_supernet, tiny_space


@pytest.fixture(scope="module")
def pair():
    """(model weights, EMA weights): two different supernets of the tiny space."""
    return random_supernet(seed=1), random_supernet(seed=2)


def _save(path, obj):
    torch.save(obj, path)
    return path


def test_the_official_layout_has_the_reference_keys():
    keys = expected_shapes(tiny_space())
    assert keys["first_conv.conv.conv.weight"] == (16, 3, 3, 3)
    for key in ("first_conv.bn.bn.num_batches_tracked", "first_conv.bn.bn_tracking.1.running_var",
                "blocks.0.mobile_inverted_conv.rescale", "blocks.0.shortcut.conv.conv.weight",
                "blocks.4.mobile_inverted_conv.depth_conv.se.fc.reduce.weight",
                "last_conv.final_expand_layer.bn.bn.running_mean", "last_conv.feature_mix_layer.conv.conv.weight",
                "classifier.linear.linear.bias"):
        assert key in keys, key
    block = "blocks.7."  # mb4: MBConv #6, transformer blocks 7 and 8
    assert keys[block + "attn.relative_position_bias_table"] == (121, 5)  # (2 * 6 - 1)^2 x 40 / 8 heads
    assert keys[block + "attn.relative_position_index"] == (36, 36)
    assert keys[block + "attn.v.linear.weight"] == (160, 40) and keys[block + "attn.vconv.weight"] == (160, 1, 3, 3)
    assert keys[block + "attn.proj_l.linear.weight"] == (5, 5) and keys[block + "rescale_attn"] == (10, 8, 40)
    assert keys[block + "mlp2.linear2.linear.weight"] == (40, 40) and block + "norm3.weight" in keys
    assert "last_conv.feature_mix_layer.conv.conv.bias" not in keys


def test_model_ema_is_preferred_and_model_is_an_option(tmp_path, pair):
    model, ema = pair
    path = _save(tmp_path / "ckpt.pth", {"model": model.state_dict(), "model_ema": ema.state_dict(), "epoch": 399,
                                         "max_accuracy": 80.1, "optimizer": {"state": {}, "param_groups": []}})
    cfg, x = tiny_space().sample(None, "max"), images(2)
    loaded, space = load_official(path, "nasvit")
    assert space.name == "nasvit-tiny"
    with torch.no_grad():
        assert torch.equal(loaded(x, cfg), ema(x, cfg))
        raw, _ = load_official(path, "nasvit", option_pairs=["ema=false"])
        assert torch.equal(raw(x, cfg), model(x, cfg))


def test_the_models_own_index_replaces_the_stored_one(tmp_path, pair):
    sd = {k: v.clone() for k, v in pair[0].state_dict().items()}
    sd["blocks.7.attn.relative_position_index"].zero_()  # ignored by the official loader, as here
    loaded, _ = load_official(_save(tmp_path / "i.pth", {"model": sd}), "nasvit")
    assert torch.equal(loaded.blocks[7].attn.relative_position_index, pair[0].blocks[7].attn.relative_position_index)


def test_legacy_module_prefixes_and_the_family_found_from_the_keys(tmp_path, pair):
    sd = {f"module.{k}": v for k, v in pair[0].state_dict().items()}
    path = _save(tmp_path / "legacy.pth", {"state_dict": sd})
    assert resolve_family(None, torch.load(path, weights_only=True)).name == "nasvit"
    loaded, _ = load_official(path)
    assert torch.equal(loaded.classifier.linear.linear.weight, pair[0].classifier.linear.linear.weight)


def test_the_space_option_names_a_space_file(tmp_path, pair):
    space_file = tmp_path / "tiny.json"
    space_file.write_text(json.dumps(tiny_space().to_dict()))
    path = _save(tmp_path / "s.pth", {"model": pair[0].state_dict()})
    _, space = load_official(path, "nasvit", option_pairs=[f"space={space_file}"])
    assert space == FAMILIES.get("nasvit").space_from_dict(tiny_space().to_dict())
    with pytest.raises(CheckpointError, match="layout of space 'nasvit'.*--import-option space="):
        load_official(path, "nasvit", NASViTImportOptions(space="nasvit"))


def test_other_families_and_broken_checkpoints_are_typed_errors(tmp_path, pair):
    autoformer = FAMILIES.get("autoformer").build_supernet(SPACES.get("autoformer-tiny"))
    path = _save(tmp_path / "af.pth", {"model": autoformer.state_dict()})
    assert not FAMILIES.get("nasvit").claims(autoformer.state_dict())
    with pytest.raises(CheckpointError, match="not a NASViT checkpoint"):
        load_official(path, "nasvit")
    sd = {k: v for k, v in pair[0].state_dict().items() if "blocks.8." not in k}
    with pytest.raises(CheckpointError, match=r"missing: blocks\.8\."):
        load_official(_save(tmp_path / "m.pth", {"model": sd}), "nasvit")
    sd = dict(pair[0].state_dict())
    sd["blocks.7.attn.q.linear.weight"] = torch.zeros(40, 41)
    with pytest.raises(CheckpointError, match=r"misshapen: blocks\.7\.attn\.q\.linear\.weight \(40, 41\)"):
        load_official(_save(tmp_path / "s.pth", {"model": sd}), "nasvit")
