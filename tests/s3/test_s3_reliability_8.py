"""S3 reliability (round 8): `evolve-space --grow` grows the supernet in every step, not only the first (the sizes
the last fine-tuning stored on the space used to bound every later move), while without it the supernet's sizes
still bound the moves; and a checkpoint's own official YAML is accepted where an MLP width is not a whole multiple
of its stage width (hidden 105 on width 32: the YAML says 3.3, the shapes give 105 / 32), exactly."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from deploy_nas.dense import load_dense
from deploy_nas.errors import InvalidSubnetConfig
from deploy_nas.family import FAMILIES
from deploy_nas.search import space_evolution
from deploy_nas.search.space_evolution import EvolveSpaceRequest, evolve_space
from deploy_nas.spaces import SPACES
from deploy_nas.spaces.s3 import S3Config
from deploy_nas.supernets import load_supernet_dir
from deploy_nas.supernets.s3 import S3ImportOptions
from tests.cli.test_extract_info import run
from tests.s3.s3_helpers import SMALL, images, official_checkpoint, official_model

FAMILY = FAMILIES.get("s3")
TINY = SPACES.get("s3-tiny")
STAGE1 = ((0, "depth"), (0, "embed_dim"))


def _bigger_is_better(self, cfg):
    """A stand-in score: lower error for a deeper, wider stage 1, blind to everything else (every other dimension
    gets a zero slope and stays), so each step moves stage 1's depth and width up by one unit."""
    return 1.0 - 0.01 * (cfg.depths[0] + cfg.embed_dim[0] / 8)


def _evolve(tmp_path, supernet, grow, trained=None):
    request = EvolveSpaceRequest(steps=2, samples=3, per_value=2, val_images=4, finetune_epochs=0, min_effect=1e-6,
                                 grow=grow)
    record = evolve_space(supernet, TINY, tmp_path / "ev", request, trained=trained)
    actions = [{(d["stage"] - 1, d["dimension"]): d["action"] for d in row["dimensions"]}
               for row in record["steps"][:-1]]
    return record, actions, load_supernet_dir(tmp_path / "ev" / "supernet")[0]


def test_grow_grows_the_supernet_in_every_step_and_without_it_the_sizes_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(space_evolution.Scorer, "error", _bigger_is_better)
    # s3-tiny's stage 1: depth 1..2, width 16..24 (the supernet's sizes); step 1 grows them to 3 and 32, and step 2
    # must grow past what step 1 grew (the old code: "need depth 4 > the supernet's 3", the choices stayed)
    record, actions, supernet = _evolve(tmp_path / "grow", FAMILY.build_supernet(TINY, 0), grow=True)
    assert [a[(0, "depth")] for a in actions] == ["up by 1 -> [2, 3]", "up by 1 -> [3, 4]"]
    assert [a[(0, "embed_dim")] for a in actions] == ["up by 1 -> [24, 32]", "up by 1 -> [32, 40]"]
    assert all(a[dim].startswith("kept") for a in actions for dim in a if dim not in STAGE1)
    final = FAMILY.space_from_dict(record["final_space"])
    assert final.choices((0, "depth")) == (3, 4) and final.choices((0, "embed_dim")) == (32, 40)
    assert (supernet.arch.stages[0].depth, supernet.arch.stages[0].embed_dim) == (4, 40)
    assert supernet.arch.stages[1:] == FAMILY.build_supernet(TINY, 0).arch.stages[1:]
    supernet.check_config(final.sample(None, "max"))

    # without --grow: a supernet one unit larger than the space in stage 1 takes the first move, then bounds
    roomy = TINY.with_choices((0, "depth"), (1, 2, 3)).with_choices((0, "embed_dim"), (16, 24, 32))
    start = FAMILY.build_supernet(roomy, 0)
    record, actions, supernet = _evolve(tmp_path / "bound", start, grow=False)
    assert [a[(0, "depth")] for a in actions[:1]] == ["up by 1 -> [2, 3]"]
    assert actions[0][(0, "embed_dim")] == "up by 1 -> [24, 32]"
    assert actions[1][(0, "depth")].startswith("at bound or blocked") and "depth 4 > the supernet's 3" in \
        actions[1][(0, "depth")]
    assert actions[1][(0, "embed_dim")].startswith("at bound or blocked")
    assert supernet.arch == start.arch
    final = FAMILY.space_from_dict(record["final_space"])
    assert final.choices((0, "depth")) == (2, 3) and final.choices((0, "embed_dim")) == (24, 32)


R33 = replace(SMALL, mlp_ratio=((3.3, 3.3),) + SMALL.mlp_ratio[1:])  # hidden int(32 x 3.3) = 105 on stage 1


@pytest.fixture(scope="module")
def r33(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("r33")
    model = official_model(R33)
    path = official_checkpoint(tmp / "r33.pth", model)
    yaml = tmp / "r33.yaml"
    yaml.write_text(json.dumps(R33.to_official()))  # the official YAML form (JSON is YAML)
    return model, path, yaml


def test_a_checkpoints_own_yaml_with_a_non_whole_mlp_width_is_accepted_and_exact(tmp_path, r33):
    model, path, yaml = r33
    assert model.spec.body.stages[0].blocks[0].mlp_hidden == 105
    supernet, space = FAMILY.load_official(path, S3ImportOptions())
    official = S3Config.from_official(R33.to_official())
    assert space.validate(official) is official  # 3.3 gives the same 105 units as the width read from the shapes
    assert space.sample(None, "max").mlp_ratio[0] == (3.3, 3.3)  # the ratio a YAML writes, not 105 / 32
    x = images()
    with torch.no_grad():
        assert (supernet(x, official) - model(x)).abs().max() == 0
    # any ratio giving the same width is the same network (int(32 x 3.29) = 105): a choice, and exact
    near = replace(official, mlp_ratio=((3.29, 3.3),) + official.mlp_ratio[1:])
    assert space.validate(near) is near
    with torch.no_grad():
        assert (supernet(x, near) - model(x)).abs().max() == 0
    # a ratio giving another MLP width is still outside the space
    other = replace(official, mlp_ratio=((3.4, 3.3),) + official.mlp_ratio[1:])  # int(32 x 3.4) = 108
    with pytest.raises(InvalidSubnetConfig, match=r"mlp_ratio\[0\]\[0\] .* = 3.4 is outside space 'checkpoint'"):
        space.validate(other)

    small = TINY.sample(None, "min")  # stage 1: width 16, MLP ratio 1.0 (16 units)
    same = replace(small, mlp_ratio=((1.01,),) + small.mlp_ratio[1:])  # int(16 x 1.01) = 16
    assert TINY.validate(same) is same
    with pytest.raises(InvalidSubnetConfig, match="= 1.1 is outside space 's3-tiny'"):  # 17 units
        TINY.validate(replace(small, mlp_ratio=((1.1,),) + small.mlp_ratio[1:]))

    for config in (yaml, "max"):
        out = tmp_path / ("yaml" if config == yaml else "max")
        r = run("extract", "--family", "s3", "--checkpoint", path, "--config", config, "--out", out)
        assert r.returncode == 0, r.stderr
        dense = load_dense(out)
        assert dense.spec.body.stages[0].blocks[0].mlp_hidden == 105
        with torch.no_grad():
            assert (dense(x) - model(x)).abs().max() <= 1e-5
