from __future__ import annotations

import json
import random

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from deploy_nas.errors import InvalidSubnetConfig
from deploy_nas.spaces import PRESETS, SPACES, load_config, load_space
from deploy_nas.spaces.autoformer import AutoFormerConfig
from tests.conftest import OFFICIAL


@pytest.mark.parametrize("letter", ["T", "S", "B"])
def test_official_subnet_yaml_equals_preset_and_validates(letter):
    cfg = load_config(OFFICIAL / "autoformer" / f"AutoFormer-{letter}.yaml", "autoformer")
    assert cfg == PRESETS.get(f"autoformer-{letter.lower()}").config
    SPACES.get(f"autoformer-{letter}").validate(cfg)


@pytest.mark.parametrize("letter", ["T", "S", "B"])
def test_official_supernet_yaml_gives_the_space(letter):
    space = load_space(str(OFFICIAL / "autoformer" / f"supernet-{letter}.yaml"), "autoformer")
    ours = SPACES.get(f"autoformer-{letter}")
    assert (space.super_embed_dim, space.super_depth, space.super_num_heads) == \
        (ours.super_embed_dim, ours.super_depth, ours.super_num_heads)
    assert space.embed_dim == ours.embed_dim and space.depth == ours.depth
    assert set(space.mlp_ratio) <= set(ours.mlp_ratio) and set(space.num_heads) <= set(ours.num_heads)


def test_published_T_uses_ratio_3_outside_the_strict_official_yaml_space():
    strict = load_space(str(OFFICIAL / "autoformer" / "supernet-T.yaml"), "autoformer")
    with pytest.raises(InvalidSubnetConfig, match=r"mlp_ratio\[2\] = 3.0 .*allowed: 3.5, 4.0"):
        strict.validate(PRESETS.get("autoformer-t").config)


def test_official_dict_form_with_padded_lists():
    # The set_sample_config dict, with lists padded to the max depth as NNI does.
    obj = {"layer_num": 12, "embed_dim": [192] * 14, "mlp_ratio": [3.5] * 14, "num_heads": [3] * 14}
    cfg = load_config(obj, "autoformer")
    assert cfg.depth == 12 and len(cfg.mlp_ratio) == 12 and cfg.to_official()["embed_dim"] == [192] * 12


def test_canonical_json_roundtrip_and_stable_id(tmp_path):
    cfg = PRESETS.get("autoformer-s").config
    path = tmp_path / "c.json"
    path.write_text(cfg.to_json())
    again = load_config(path)
    assert again == cfg and again.id == cfg.id and len(cfg.id) == 12
    assert json.loads(cfg.to_json())["family"] == "autoformer"
    assert cfg.to_json() == AutoFormerConfig.from_dict(json.loads(cfg.to_json())).to_json()


@pytest.mark.parametrize("mutate, match", [
    (dict(embed_dim=200), r"embed_dim = 200 is outside space 'autoformer-T' \(allowed: 192, 216, 240\)"),
    (dict(depth=11, mlp_ratio=[4.0] * 11, num_heads=[3] * 11), r"depth = 11 .*allowed: 12, 13, 14"),
    (dict(num_heads=[3] * 12 + [5]), r"num_heads\[12\] = 5 .*allowed: 3, 4"),
])
def test_validation_names_field_value_and_allowed_set(mutate, match):
    d = {**PRESETS.get("autoformer-t").config.to_dict(), **mutate}
    with pytest.raises(InvalidSubnetConfig, match=match):
        SPACES.get("autoformer-T").validate(AutoFormerConfig.from_dict(d))


@pytest.mark.parametrize("obj, match", [
    ({"family": "nasvit", "depth": 1}, "family 'nasvit'"),
    ({"depth": 2, "embed_dim": 64}, "lacks mlp_ratio, num_heads"),
    ({"depth": 2, "embed_dim": 64, "mlp_ratio": [2.0], "num_heads": [2, 2]}, "mlp_ratio has 1 entries"),
    ({"depth": 1, "embed_dim": 64, "mlp_ratio": ["x"], "num_heads": [2]}, "not a number"),
    ({"depth": 1, "embed_dim": 64, "mlp_ratio": [2.0], "num_heads": [2], "wat": 1}, "unknown keys"),
    ({"layer_num": 2, "embed_dim": [64, 48], "mlp_ratio": [2, 2], "num_heads": [2, 2]}, "one embed dim"),
    ({"layer_num": 1, "embed_dim": [64], "mlp_ratio": [2], "num_heads": [2], "depth": 3}, r"unknown keys \['depth'\]"),
    ({"layer_num": 1, "embed_dim": [64], "mlp_ratio": [2]}, "lacks num_heads"),
    ({"RETRAIN": {"DEPTH": 2}}, "RETRAIN section must have"),
    ([1, 2], "must be a mapping"),
])
def test_malformed_configs_raise_typed_errors(obj, match):
    with pytest.raises(InvalidSubnetConfig, match=match):
        load_config(obj, "autoformer")


def test_unknown_preset_or_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(InvalidSubnetConfig, match="neither a preset"):
        load_config("autoformer-x")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(InvalidSubnetConfig, match="not valid YAML"):
        load_config(bad, "autoformer")


def test_yaml_is_read_with_safe_load(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("!!python/object/apply:os.system ['touch " + str(tmp_path / "pwned") + "']\n")
    with pytest.raises(InvalidSubnetConfig):
        load_config(evil, "autoformer")
    assert not (tmp_path / "pwned").exists()


def test_min_max_samples(tiny_space):
    rng = random.Random(0)
    lo, hi = tiny_space.sample(rng, "min"), tiny_space.sample(rng, "max")
    assert (lo.depth, lo.embed_dim, set(lo.num_heads)) == (2, 48, {2})
    assert (hi.depth, hi.embed_dim, set(hi.mlp_ratio)) == (4, 64, {4.0})


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), name=st.sampled_from(["autoformer-T", "autoformer-S", "autoformer-B"]))
def test_sample_mutate_crossover_stay_in_the_space(seed, name):
    space, rng = SPACES.get(name), random.Random(seed)
    a, b = space.sample(rng), space.sample(rng)
    space.validate(a)
    space.validate(space.mutate(a, rng))
    b = AutoFormerConfig(a.depth, b.embed_dim, b.mlp_ratio[:a.depth] + a.mlp_ratio[len(b.mlp_ratio):],
                         b.num_heads[:a.depth] + a.num_heads[len(b.num_heads):])
    child = space.crossover(a, b, rng)
    space.validate(child)
    assert all(x in (p, q) for x, p, q in zip(child.num_heads, a.num_heads, b.num_heads))


def test_crossover_refuses_unequal_depths():
    space = SPACES.get("autoformer-T")
    rng = random.Random(0)
    a = space.sample(rng, "min")
    with pytest.raises(ValueError, match="equal depth"):
        space.crossover(a, space.sample(rng, "max"), rng)


def test_registries_refuse_duplicates_and_presets_map_to_spaces():
    with pytest.raises(ValueError, match="already registered"):
        SPACES.register("autoformer-T", SPACES.get("autoformer-T"))
    for name in PRESETS:
        preset = PRESETS.get(name)
        SPACES.get(preset.space).validate(preset.config)


def test_space_json_roundtrip(tmp_path):
    space = SPACES.get("autoformer-S")
    p = tmp_path / "space.json"
    p.write_text(json.dumps(space.to_dict()))
    assert load_space(str(p)) == space
    p.write_text(yaml.safe_dump({"nothing": 1}))
    with pytest.raises(InvalidSubnetConfig):
        load_space(str(p))
