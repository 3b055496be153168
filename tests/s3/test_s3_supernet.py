"""The S3 supernet: materialization exact for min, max and 50 random configs of the tiny space, the weight
entanglement layouts (prefix, [q | k | v] blocks, the tables' centre, patch merging's four sub-grids), growing a
supernet without changing any old subnet, the space's checks and operators, and sandwich training through the CLI."""
from __future__ import annotations

import json
import random

import pytest
import torch

from deploy_nas.dense import load_dense, save_dense
from deploy_nas.errors import InvalidSubnetConfig
from deploy_nas.family import FAMILIES
from deploy_nas.materialize import materialize
from deploy_nas.spaces import SPACES, load_space
from deploy_nas.spaces.s3 import S3Space, S3StageChoices
from deploy_nas.supernets import load_supernet_dir, save_supernet
from deploy_nas.supernets.s3 import S3Arch, grown, place, take
from tests.cli.test_extract_info import run
from tests.families.test_protocol import scaled_random_

FAMILY = FAMILIES.get("s3")
TINY = SPACES.get("s3-tiny")


@pytest.fixture(scope="module")
def supernet():
    return scaled_random_(FAMILY.build_supernet(TINY, 0))


def _x(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_min_max_and_50_random_configs_materialize_exactly(supernet, tmp_path):
    rng = random.Random(0)
    configs = [TINY.sample(rng, "min"), TINY.sample(rng, "max")] + [TINY.sample(rng) for _ in range(50)]
    assert len({c.id for c in configs}) == 52
    x, worst = _x(), 0.0
    for i, cfg in enumerate(configs):
        model = materialize(supernet, cfg)
        if i < 2:  # the ends also through save/load
            model = load_dense(save_dense(model, tmp_path / cfg.id))
        with torch.no_grad():
            ref, out = supernet(x, cfg), model(x)
        assert ref.abs().max() > 0.1
        worst = max(worst, (out - ref).abs().max().item())
        assert sum(p.numel() for p in model.parameters()) == supernet.param_count(cfg)
    assert worst <= 1e-5


def test_the_layouts_slice_what_the_paper_shares():
    q_super, q = 6, 4
    w = torch.arange(3 * q_super * 2, dtype=torch.float32).reshape(3 * q_super, 2)
    rows = take("layers.0.blocks.0.attn.qkv.weight", w, (3 * q, 2))[:, 0] / 2
    assert rows.tolist() == [0, 1, 2, 3, 6, 7, 8, 9, 12, 13, 14, 15]  # the first q rows of q, k and v
    table = torch.arange(49, dtype=torch.float32)[:, None]  # window 4: offsets -3..3 on each axis
    centre = take("layers.0.blocks.0.attn.relative_position_bias_table", table, (9, 1))[:, 0]
    assert centre.tolist() == [16, 17, 18, 23, 24, 25, 30, 31, 32]  # offsets -1..1: the centre 3 x 3
    norm = torch.arange(4 * 5, dtype=torch.float32)
    assert take("layers.0.downsample.norm.weight", norm, (8,)).tolist() == [0, 1, 5, 6, 10, 11, 15, 16]
    for key, big, small in [("a.attn.qkv.weight", (18, 5), (12, 3)), ("a.relative_position_bias_table", (49, 3),
                            (9, 2)), ("a.downsample.reduction.weight", (7, 20), (4, 8)), ("a.fc1.weight", (9, 4),
                                                                                          (5, 2))]:
        target = torch.randn(big)
        piece = torch.randn(small)
        placed = place(key, piece, target)
        assert torch.equal(take(key, placed, small), piece)
        assert (placed != target).sum() <= piece.numel()  # nothing else touched


def test_a_grown_supernet_computes_every_old_subnet_exactly(supernet):
    sizes = tuple(s.__class__(**{k: v + (1 if k in ("depth", "num_heads") else 8) for k, v in vars(s).items()})
                  for s in supernet.arch.stages)
    big = grown(supernet, S3Arch(sizes, 32, 4, 3, 10))
    assert big.arch.stages[0].embed_dim == supernet.arch.stages[0].embed_dim + 8
    rng, x = random.Random(5), _x()
    for cfg in [TINY.sample(rng, "max")] + [TINY.sample(rng) for _ in range(5)]:
        with torch.no_grad():
            assert torch.equal(big(x, cfg), supernet(x, cfg))
    with pytest.raises(InvalidSubnetConfig, match="cannot be smaller"):
        grown(big, supernet.arch)


def test_configs_that_do_not_fit_are_refused_naming_the_stage(supernet):
    cfg = TINY.sample(None, "max").to_dict()
    cfg["window_size"][0] = [3, 3]
    bad = FAMILY.config_from_dict(cfg)
    with pytest.raises(InvalidSubnetConfig, match=r"window 3 does not divide stage 1's 8x8 map"):
        supernet(_x(), bad)
    with pytest.raises(InvalidSubnetConfig, match=r"window_size\[0\]\[0\] \(stage 1, block 1\) = 3 does not divide"):
        TINY.validate(bad)
    cfg = TINY.sample(None, "max").to_dict()
    cfg["num_heads"][1] = [3, 3]
    with pytest.raises(InvalidSubnetConfig, match=r"qkv_dim\[1\]\[0\] \(stage 2, block 1\) = 32 is not a multiple"):
        FAMILY.config_from_dict(cfg)


def _space(**stage1):
    base = TINY.stages[0].to_dict() | stage1
    return S3Space("bad", (S3StageChoices(**base), *TINY.stages[1:]), img_size=32, patch_size=4, num_classes=10)


@pytest.mark.parametrize("stage1, message", [
    ({"qkv_dim": []}, "dimension qkv_dim has no choices"),
    ({"window_size": [3]}, "window 3 does not divide stage 1's 8x8 map"),
    ({"num_heads": [3], "qkv_dim": [16]}, "stage 1: Q-K-V width 16 is not a multiple of 3 heads"),
])
def test_bad_spaces_are_refused(stage1, message):
    with pytest.raises(InvalidSubnetConfig, match=message.replace("(", r"\(").replace(")", r"\)")):
        _space(**stage1)


def test_an_empty_dimension_in_a_space_file_exits_2_and_writes_nothing(tmp_path, supernet):
    bad = TINY.to_dict()
    bad["stages"][2]["mlp_ratio"] = []
    path = tmp_path / "bad-space.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(InvalidSubnetConfig, match="dimension mlp_ratio has no choices"):
        load_space(path)
    save_supernet(supernet, tmp_path / "sn", TINY)
    r = run("extract", "--supernet", tmp_path / "sn", "--space", path, "--config", "min", "--out", tmp_path / "out")
    assert r.returncode == 2 and "no choices" in r.stderr and not (tmp_path / "out").exists()


def test_space_operators_stay_in_the_space():
    rng = random.Random(2)
    for _ in range(30):
        a, b = TINY.sample(rng), TINY.sample(rng)
        TINY.validate(TINY.mutate(a, rng, 0.5, 0.5))
        if TINY.can_cross(a, b):
            TINY.validate(TINY.crossover(a, b, rng))
        dim = rng.choice(TINY.dimensions())
        value = rng.choice(TINY.choices(dim))
        moved = TINY.with_value(a, dim, value, rng)
        TINY.validate(moved)
        assert TINY.with_choices(dim, (value,)).validate(moved) is moved
    assert TINY.from_dict(TINY.to_dict()) == TINY


def test_train_with_the_sandwich_rule_then_extract_from_the_supernet_directory(tmp_path):
    r = run("train", "--family", "s3", "--space", "s3-tiny", "--epochs", "1", "--max-steps", "2", "--batch-size",
            "16", "--out", tmp_path / "sn")
    assert r.returncode == 0, r.stderr
    model, space = load_supernet_dir(tmp_path / "sn")
    assert model.family == "s3" and space == TINY
    r = run("extract", "--supernet", tmp_path / "sn", "--config", "max", "--out", tmp_path / "d")
    assert r.returncode == 0, r.stderr
    with torch.no_grad():
        x = _x()
        assert (load_dense(tmp_path / "d")(x) - model(x, TINY.sample(None, "max"))).abs().max() <= 1e-5
