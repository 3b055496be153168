"""The Python API refuses bad input with the project's typed errors (never a bare ValueError, TypeError,
ZeroDivisionError, AttributeError or OverflowError from deep inside), and writes nothing when it refuses."""
from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest
import torch

from deploy_nas import build_dense, load_dense, load_space, load_supernet, materialize, save_dense, save_supernet
from deploy_nas.errors import CheckpointError, DenseModelError, InvalidSubnetConfig, OutputPathError
from deploy_nas.family import FAMILIES
from deploy_nas.spaces import SPACES


def tiny(family: str):
    fam = FAMILIES.get(family)
    space = SPACES.get(fam.tiny_space)
    return fam.build_supernet(space, 0), space


@pytest.fixture(scope="module")
def af():
    """(tiny AutoFormer supernet, its space, its max config)."""
    supernet, space = tiny("autoformer")
    return supernet, space, space.sample(random.Random(0), "max")


@pytest.mark.parametrize("ratio", [math.nan, math.inf, -math.inf, 1e300])
def test_non_finite_mlp_ratio_is_an_invalid_config(af, ratio):
    supernet, space, c = af
    with pytest.raises(InvalidSubnetConfig, match=r"mlp_ratio\[0\] = .* is not a number"):
        materialize(supernet, replace(c, mlp_ratio=(ratio,) * c.depth))
    with pytest.raises(InvalidSubnetConfig, match=r"mlp_ratio\[0\]"):
        supernet(torch.zeros(1, 3, space.img_size, space.img_size), replace(c, mlp_ratio=(ratio,) * c.depth))


@pytest.mark.parametrize("field, value", [("depth", "4"), ("embed_dim", "64"), ("embed_dim", 10**400),
                                          ("num_heads", ("2",) * 4), ("mlp_ratio", None)])
def test_config_values_of_the_wrong_type_are_refused_when_built(af, field, value):
    with pytest.raises(InvalidSubnetConfig, match=rf"^{field}(\[0\])? = "):
        replace(af[2], **{field: value})


def test_zero_heads_is_refused_before_the_head_dim_is_divided(af):
    supernet, _, c = af
    with pytest.raises(InvalidSubnetConfig, match=r"num_heads\[0\] = 0 .*at least 1 head"):
        materialize(supernet, replace(c, num_heads=(0,) * c.depth))


def test_materialize_refuses_what_is_not_a_supernet(af, tmp_path):
    dense = materialize(af[0], af[2])
    for obj, named in ((None, "got NoneType"), (dense, "VisionTransformer .*already materialized")):
        with pytest.raises(CheckpointError, match=f"materialize takes a supernet.*{named}"):
            materialize(obj, af[2])


def test_a_dict_config_is_named_as_a_dict(af):
    with pytest.raises(InvalidSubnetConfig, match="takes autoformer configs .*load_config.*got a dict$"):
        materialize(af[0], af[2].to_dict())
    with pytest.raises(InvalidSubnetConfig, match="got a dict$"):
        af[1].validate(af[2].to_dict())


def test_save_and_build_dense_refuse_what_is_not_a_dense_model(af, tmp_path):
    with pytest.raises(DenseModelError, match="save_dense takes a dense model.*got NoneType"):
        save_dense(None, tmp_path / "d")
    with pytest.raises(DenseModelError, match="got AutoFormerSupernet; save a supernet with save_supernet"):
        save_dense(af[0], tmp_path / "d")
    with pytest.raises(OutputPathError, match="got NoneType"):
        save_dense(materialize(af[0], af[2]), None)
    with pytest.raises(DenseModelError, match="build_dense takes a DenseSpec.*got dict"):
        build_dense({"arch": "vit"})
    assert not (tmp_path / "d").exists()


def test_save_supernet_refuses_what_is_not_a_supernet(af, tmp_path):
    with pytest.raises(CheckpointError, match="save_supernet takes a supernet.*got NoneType"):
        save_supernet(None, tmp_path / "s")
    with pytest.raises(InvalidSubnetConfig, match="takes a search space .*got dict"):
        save_supernet(af[0], tmp_path / "s", {"family": "autoformer"})
    with pytest.raises(OutputPathError, match="got int"):
        save_supernet(af[0], 5)
    assert not (tmp_path / "s").exists()


def test_save_supernet_refuses_a_space_of_another_family_and_writes_nothing(tmp_path):
    s3, _ = tiny("s3")
    nasvit_space = SPACES.get(FAMILIES.get("nasvit").tiny_space)
    with pytest.raises(InvalidSubnetConfig, match="space is for family 'nasvit', the supernet is 's3'"):
        save_supernet(s3, tmp_path / "s", nasvit_space)
    assert list(tmp_path.iterdir()) == []


def test_save_supernet_refuses_a_space_the_supernet_cannot_run_and_writes_nothing(tmp_path):
    """A space larger than the supernet wrote a directory whose every search failed at its first sample."""
    demo, _ = load_supernet()  # the embedded default: depth 4-6, embed 64-128
    with pytest.raises(InvalidSubnetConfig, match=r"autoformer-T.*does not fit the autoformer supernet: its "
                                                  r"patch_size 16 .*head_dim 64 .*img_size 224 \(the supernet's: 48\)"):
        save_supernet(demo, tmp_path / "s", load_space("autoformer-t"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("call, error", [(lambda: load_dense(None), DenseModelError),
                                         (lambda: load_supernet(5), CheckpointError),
                                         (lambda: load_space(None), InvalidSubnetConfig)])
def test_loaders_refuse_what_is_not_a_path(call, error):
    with pytest.raises(error, match="got (NoneType|int)$"):
        call()


@pytest.mark.parametrize("family", ["autoformer", "s3", "nasvit", "psvit", "vitslim"])
def test_sample_refuses_an_unknown_kind(family):
    space = SPACES.get(FAMILIES.get(family).tiny_space)
    with pytest.raises(InvalidSubnetConfig, match="kind = 'huge': sample takes random, min or max"):
        space.sample(random.Random(0), "huge")


def test_supernet_refuses_an_input_of_the_wrong_size(af):
    supernet, space, c = af
    with pytest.raises(InvalidSubnetConfig, match="the supernet takes 32x32"):
        supernet(torch.zeros(1, 3, 16, 16), c)


@pytest.mark.parametrize("family", ["s3", "nasvit", "psvit", "vitslim"])
def test_a_supernet_or_space_given_a_dict_config_names_it(family):
    """They said "config is for family 'dict'"."""
    supernet, space = tiny(family)
    cfg = space.sample(random.Random(0), "min")
    with pytest.raises(InvalidSubnetConfig, match=f"the {family} supernet takes {family} configs .*got a dict$"):
        supernet.check_config(cfg.to_dict())
    with pytest.raises(InvalidSubnetConfig, match=f"space .* takes {family} configs .*got a dict$"):
        space.validate(cfg.to_dict())
