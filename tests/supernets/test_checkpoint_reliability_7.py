"""A seventh hostile try, of loading checkpoints, spaces and configs in all five families (2026-12-07). Each test
failed on the code before its fix."""
from __future__ import annotations

import argparse
import json
import random
import shutil

import pytest
import torch
from safetensors.torch import save_file

from deploy_nas import load_dense, load_official
from deploy_nas.errors import CheckpointError, InvalidSubnetConfig
from deploy_nas.family import FAMILIES
from deploy_nas.materialize import materialize
from deploy_nas.spaces import SPACES, load_config, load_space
from deploy_nas.supernets.nasvit import NASViTImportOptions
from tests.cli.test_reliability import one_error_line
from tests.cli_runner import run
from tests.conftest import make_supernet
from tests.fuzz.strategies import FAMILY_STRATEGIES


def _save(sd: dict, path, **extra):
    torch.save({"model": sd, **extra}, path)
    return path


def _nasvit_file(path, edit):
    sd = FAMILY_STRATEGIES["nasvit"].checkpoint_base()
    edit(sd)
    return _save(sd, path)


# 1 ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES.names())
def test_1_an_fp64_value_beyond_fp32_is_refused_as_loaded(family, tmp_path):
    """fp64 1e300 passed the finiteness check (run on the file's fp64 values) and became inf in the fp32 model."""
    sd = {k: v.double() if v.is_floating_point() else v for k, v in FAMILY_STRATEGIES[family].checkpoint_base().items()}
    key = next(k for k, v in sd.items() if v.is_floating_point() and v.dim() == 2)
    sd[key].view(-1)[0] = 1e300
    with pytest.raises(CheckpointError, match=rf"non-finite \(NaN or Inf\): {key} \(1\)"):
        load_official(_save(sd, tmp_path / "fp64.pth"), family)


def test_1_extract_writes_nothing_for_an_fp64_overflow(tmp_path):
    sd = {k: v.double() for k, v in make_supernet(SPACES.get("autoformer-tiny")).state_dict().items()}
    sd["blocks.0.fc1.weight"][0, 0] = 1e300
    line = one_error_line(run("extract", "--checkpoint", _save(sd, tmp_path / "c.pth"), "--config", "min",
                              "--out", tmp_path / "o"))
    assert "non-finite (NaN or Inf): blocks.0.fc1.weight (1)" in line and not (tmp_path / "o").exists()


# 2 ---------------------------------------------------------------------------------------------------------------
def test_2_a_negative_batchnorm_variance_is_refused_by_name(tmp_path):
    def negative(sd):
        sd["first_conv.bn.bn.running_var"][0] = -1.0

    ckpt = _nasvit_file(tmp_path / "neg.pth", negative)
    line = one_error_line(run("extract", "--checkpoint", ckpt, "--config", "min", "--bn", "stored",
                              "--out", tmp_path / "o"))
    assert "negative BatchNorm variance: first_conv.bn.bn.running_var (1)" in line
    assert not (tmp_path / "o").exists()


def test_2_a_dense_model_with_non_finite_weights_is_never_built_or_written(tmp_path):
    """Finite stored BN values (a weight of 3e38 over a variance of 0) folded into an inf conv; exit 0."""
    def overflow(sd):
        sd["first_conv.bn.bn.weight"][:] = 3e38
        sd["first_conv.bn.bn.running_var"][:] = 0.0

    ckpt = _nasvit_file(tmp_path / "fold.pth", overflow)
    supernet, space = load_official(ckpt, "nasvit")
    with pytest.raises(CheckpointError, match=r"would hold non-finite weights \(NaN or Inf\): stem.weight"):
        materialize(supernet, space.sample(None, "min"))
    line = one_error_line(run("extract", "--checkpoint", ckpt, "--config", "min", "--out", tmp_path / "o"))
    assert "non-finite weights (NaN or Inf): stem.weight (1)" in line and not (tmp_path / "o").exists()


# 3 ---------------------------------------------------------------------------------------------------------------
def _trained_without_gp(path, **args):
    """A training file as the official supernet_train.py saves it, from a run without --gp."""
    trained = make_supernet(SPACES.get("autoformer-tiny"), seed=5, reference_relpos=False, gp=False)
    recorded = dict(gp=False, change_qkv=True, relative_position=True, max_relative_position=2, post_norm=False,
                    lr=5e-4)
    return trained, _save(trained.state_dict(), path, epoch=9, args=argparse.Namespace(**{**recorded, **args}))


def test_3_autoformer_takes_the_flags_its_args_record(tmp_path):
    """A file whose args say gp=False was imported with gp on: another model, exit 0, spec.json "gp": true."""
    trained, ckpt = _trained_without_gp(tmp_path / "nogp.pth")
    loaded, space = load_official(ckpt)
    assert (loaded.arch.gp, loaded.arch.change_qkv, loaded.arch.pre_norm) == (False, True, True)
    cfg, x = space.sample(random.Random(0)), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x, cfg), trained(x, cfg))
    assert load_official(ckpt, option_pairs=("gp=false",))[0].arch.gp is False  # agreeing with args: fine
    assert run("extract", "--checkpoint", ckpt, "--config", "min", "--out", tmp_path / "d").returncode == 0
    assert load_dense(tmp_path / "d").spec.source["supernet"]["gp"] is False  # what was used is recorded


def test_3_an_option_contradicting_the_args_is_refused_naming_both(tmp_path):
    _, ckpt = _trained_without_gp(tmp_path / "nogp.pth")
    line = one_error_line(run("extract", "--checkpoint", ckpt, "--config", "min", "--gp", "--out", tmp_path / "o"))
    assert "import option gp=true contradicts" in line and "record gp=false" in line
    assert not (tmp_path / "o").exists()
    _, odd = _trained_without_gp(tmp_path / "odd.pth", change_qkv="yes")
    with pytest.raises(CheckpointError, match=r"args record change_qkv = 'yes', not true or false"):
        load_official(odd)
    assert load_official(odd, option_pairs=("change_qkv=true",))[0].arch.change_qkv is True


# 4 ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, shown", [("fp8", "float8_e4m3fn"), ("sparse", "sparse_coo"),
                                         ("meta", "meta device, no data")])
def test_4_odd_tensor_kinds_are_refused_by_name(tmp_path, kind, shown):
    sd = make_supernet(SPACES.get("autoformer-tiny")).state_dict()
    w = sd["head.weight"]
    sd["head.weight"] = {"fp8": lambda: w.to(torch.float8_e4m3fn), "sparse": w.to_sparse,
                         "meta": lambda: torch.empty(w.shape, device="meta")}[kind]()
    with pytest.raises(CheckpointError, match=rf"unsupported tensor kind/dtype: 'head.weight' \({shown}\) \(1\)"):
        load_official(_save(sd, tmp_path / "odd.pth"))


def test_4_an_fp8_safetensors_file_is_one_error_line(tmp_path):
    sd = {k: v.to(torch.float8_e4m3fn) for k, v in make_supernet(SPACES.get("autoformer-tiny")).state_dict().items()}
    save_file(sd, str(tmp_path / "f8.safetensors"))
    line = one_error_line(run("extract", "--checkpoint", tmp_path / "f8.safetensors", "--config", "min",
                              "--out", tmp_path / "o"))
    assert "unsupported tensor kind/dtype" in line and "(float8_e4m3fn)" in line and not (tmp_path / "o").exists()


# 5 ---------------------------------------------------------------------------------------------------------------
def _autoformer_space(**edit) -> dict:
    return {**SPACES.get("autoformer-tiny").to_dict(), "name": "edited", **edit}


def _psvit_space(**edit) -> dict:
    return {**SPACES.get("psvit-tiny-1d").to_dict(), "name": "edited", **edit}


@pytest.mark.parametrize("family, doc, message", [
    ("autoformer", _autoformer_space(num_heads=[2.5, 3, 4]), "num_heads = [2.5, 3, 4] (must be integers"),
    ("autoformer", _autoformer_space(img_size=32.5), "img_size = 32.5 (must be integers"),
    ("autoformer", _autoformer_space(max_relative_position=2.5), "max_relative_position = 2.5 (must be integers"),
    ("autoformer", _autoformer_space(super_num_heads=4.5), "super_num_heads = 4.5 (must be integers"),
    ("autoformer", _autoformer_space(depth=[2, True]), "depth = [2, True] (must be integers"),
    ("psvit", _psvit_space(widths=[[16.9, 24], [32, 40], [48, 64]]), "widths[0][0] = 16.9 is not a positive integer"),
    ("psvit", _psvit_space(tokens=[[64], [16, 32.5], [4, 8]]), "tokens[1][1] = 32.5 is not a positive integer"),
    ("psvit", _psvit_space(cells=[2.5, 2, 2]), "cells[0] = 2.5 is not a positive integer"),
    ("psvit", _psvit_space(mlp_ratio=True), "mlp_ratio True is not a number"),
])
def test_5_space_files_refuse_non_integers_instead_of_truncating(tmp_path, family, doc, message):
    (tmp_path / "space.json").write_text(json.dumps(doc))
    with pytest.raises(InvalidSubnetConfig, match="space 'edited'") as err:
        load_space(tmp_path / "space.json", family)
    assert message in str(err.value)


OFFICIAL_T = {"SUPERNET": {"MLP_RATIO": 4.0, "NUM_HEADS": 4, "EMBED_DIM": 256, "DEPTH": 14},
              "SEARCH_SPACE": {"MLP_RATIO": [3.5, 4.0], "NUM_HEADS": [3, 4], "DEPTH": [12, 13, 14],
                               "EMBED_DIM": [192, 216, 240]}}


@pytest.mark.parametrize("section, key, value, message", [
    ("SUPERNET", "NUM_HEADS", True, "supernet YAML SUPERNET: NUM_HEADS = True (must be integers"),
    ("SUPERNET", "EMBED_DIM", 256.9, "supernet YAML SUPERNET: EMBED_DIM = 256.9 (must be integers"),
    ("SEARCH_SPACE", "NUM_HEADS", [3.5, 4], "supernet YAML SEARCH_SPACE: NUM_HEADS = [3.5, 4] (must be integers"),
    # 8b: type errors, said as such (they read "missing 'int' object is not iterable" / "missing int() argument")
    ("SEARCH_SPACE", "EMBED_DIM", 192, "supernet YAML SEARCH_SPACE: EMBED_DIM = 192 must be a list of choices"),
    ("SUPERNET", "DEPTH", None, "supernet YAML SUPERNET: DEPTH = None (must be integers"),
])
def test_5_and_8b_official_supernet_yaml_values_are_checked_under_their_own_names(tmp_path, section, key, value,
                                                                                 message):
    assert _official_space(tmp_path, OFFICIAL_T).super_embed_dim == 256  # the untouched file loads
    doc = json.loads(json.dumps(OFFICIAL_T))
    doc[section][key] = value
    with pytest.raises(InvalidSubnetConfig) as err:
        _official_space(tmp_path, doc)
    assert message in str(err.value) and "missing" not in str(err.value)


def _official_space(tmp_path, doc):
    import yaml

    (tmp_path / "supernet-T.yaml").write_text(yaml.safe_dump(doc))
    return load_space(tmp_path / "supernet-T.yaml", "autoformer")


# 6, 7 -----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    return _save(make_supernet(SPACES.get("autoformer-tiny")).state_dict(), tmp_path_factory.mktemp("af") / "t.pth")


def test_6_head_dim_0_is_refused_and_none_is_not_given(tiny_file, tmp_path):
    with pytest.raises(InvalidSubnetConfig, match=r"import option head_dim=0: expected 1\.\.4096"):
        load_official(tiny_file, option_pairs=("head_dim=0",))
    assert load_official(tiny_file, option_pairs=("head_dim=none",))[0].arch.head_dim == 16  # the tables' width
    line = one_error_line(run("extract", "--checkpoint", tiny_file, "--import-option", "head_dim=0", "--config", "min",
                              "--out", tmp_path / "o"))
    assert "import option head_dim=0" in line and not (tmp_path / "o").exists()


@pytest.mark.parametrize("options", [NASViTImportOptions(), {"gp": False}])
def test_7_an_options_object_of_another_type_is_a_typed_error(tiny_file, options):
    expected = rf"autoformer .*AutoFormerImportOptions.*got {type(options).__name__}"
    with pytest.raises(InvalidSubnetConfig, match=expected):
        load_official(tiny_file, "autoformer", options=options)


# 8 ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("legacy", [False, True])
def test_8a_a_torch_file_named_safetensors_is_read_by_its_content(tiny_file, tmp_path, legacy):
    named = tmp_path / "w.safetensors"
    if legacy:
        torch.save(torch.load(tiny_file, weights_only=True), named, _use_new_zipfile_serialization=False)
    else:
        shutil.copy(tiny_file, named)
    loaded, _ = load_official(named)
    expected = torch.load(tiny_file, weights_only=True)["model"]
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in expected.items())


S3T = {"MLP_RATIO": [[4.0] * 2, [4.0] * 2, [4.0] * 6, [4.0] * 2], "EMBED_DIM": [96, 192, 384, 768],
       "NUM_HEADS": [[3, 3], [6, 6], [12] * 6, [24, 24]], "DEPTHS": [2, 2, 6, 2],
       "WINDOW_SIZE": [[7, 7], [7, 7], [14] * 6, [7, 7]]}


def test_8c_an_s3_yaml_names_the_heads_the_user_wrote(tmp_path):
    """NUM_HEADS [[3.0, 3], ...] skipped the heads x 32 conversion and was reported as qkv_dim[0][0] = 3."""
    import yaml

    def config(heads):
        (tmp_path / "s3.yaml").write_text(yaml.safe_dump({**S3T, "NUM_HEADS": [heads] + S3T["NUM_HEADS"][1:]}))
        return load_config(tmp_path / "s3.yaml", "s3")

    assert config([3.0, 3]) == config([3, 3])  # a whole number written as a float is that number
    with pytest.raises(InvalidSubnetConfig, match=r"^NUM_HEADS\[0\]\[0\] \(stage 1, block 1\) = 3\.5 is not an int"):
        config([3.5, 3])


def test_5_whole_number_floats_and_numpy_integers_are_integers_in_every_family(tmp_path):
    """The integer checks above must not refuse what a file or an array writes for an integer (a review finding:
    AutoFormer refused [192.0, 216.0] and numpy integers that it had taken before, while PSViT took 16.0)."""
    import numpy as np

    from deploy_nas.spaces.autoformer import AutoFormerSpace

    doc = _autoformer_space(embed_dim=[float(e) for e in SPACES.get("autoformer-tiny").embed_dim], img_size=32.0)
    (tmp_path / "space.json").write_text(json.dumps(doc))
    space = load_space(tmp_path / "space.json", "autoformer")
    assert space.embed_dim == SPACES.get("autoformer-tiny").embed_dim and type(space.embed_dim[0]) is int
    assert type(space.img_size) is int
    fields = {**SPACES.get("autoformer-tiny").to_dict(), "depth": tuple(np.int64(d) for d in (2, 3))}
    built = AutoFormerSpace(**{k: v for k, v in fields.items() if k != "family"})
    assert built.depth == (2, 3) and all(type(d) is int for d in built.depth)
    psvit = _psvit_space(widths=[[16.0, 24], [32, 40], [48, 64]])
    (tmp_path / "p.json").write_text(json.dumps(psvit))
    assert load_space(tmp_path / "p.json", "psvit").to_dict()["widths"][0][0] == 16
