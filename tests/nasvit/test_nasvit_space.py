"""NASViT configs and spaces: the official space and its layout facts, the config forms, validation messages,
sampling in the official order, the evolution operators, and bad spaces."""
from __future__ import annotations

import random
from dataclasses import replace

import pytest
import yaml

from deploy_nas.errors import InvalidSubnetConfig
from deploy_nas.spaces import SPACES, load_config, load_space
from deploy_nas.spaces.nasvit import GENES, MB_STAGES, NASViTConfig, NASViTSpace, make_divisible
from tests.nasvit.nasvit_helpers import tiny_space

# misc/config.py::supernet_config, as a YAML file would write it
OFFICIAL = {
    "use_v3_head": True, "resolutions": [192, 224, 256, 288],
    "first_conv": {"c": [16, 24], "act_func": "swish", "s": 2},
    "mb1": {"c": [16, 24], "d": [1, 2], "k": [3, 5], "t": [1], "s": 1, "act_func": "swish", "se": False},
    "mb2": {"c": [24, 32], "d": [3, 4, 5], "k": [3, 5], "t": [4, 5, 6], "s": 2, "act_func": "swish", "se": False},
    "mb3": {"c": [32, 40], "d": [3, 4, 5, 6], "k": [3], "t": [4, 5, 6], "s": 2, "act_func": "swish", "se": True},
    "mb4": {"c": [64, 72], "d": [3, 4, 5, 6], "k": [3], "t": [4, 5, 6], "s": 2, "act_func": "swish", "se": False},
    "mb5": {"c": [112, 120, 128], "d": [3, 4, 5, 6, 7, 8, 9], "k": [3], "t": [4, 5, 6], "s": 2, "act_func": "swish",
            "se": True},
    "mb6": {"c": [160, 168, 176, 184], "d": [3, 4, 5, 6, 7, 8], "k": [3], "t": [6], "s": 1, "act_func": "swish",
            "se": True},
    "mb7": {"c": [208, 216, 224], "d": [3, 4, 5, 6], "k": [3], "t": [6], "s": 2, "act_func": "swish", "se": True},
    "last_conv": {"c": [1792, 1984], "act_func": "swish"},
}


def test_the_official_space_is_the_official_supernet_config(tmp_path):
    path = tmp_path / "supernet_config.yaml"
    path.write_text(yaml.safe_dump(OFFICIAL))
    from_file = load_space(path, "nasvit")
    assert replace(from_file, name="nasvit") == SPACES.get("nasvit")


@pytest.mark.parametrize("resolution, grids, slots", [
    (192, (96, 48, 24, 12, 6, 6, 3), (0, 4, 4, 1)), (224, (112, 56, 28, 14, 7, 7, 4), (4, 1, 1, 0)),
    (256, (128, 64, 32, 16, 8, 8, 4), (0, 0, 0, 0)), (288, (144, 72, 36, 18, 9, 9, 5), (4, 1, 1, 1))])
def test_official_token_grids_and_rescale_slots(resolution, grids, slots):
    space = SPACES.get("nasvit")
    assert tuple(space.grid(resolution, i) for i in range(7)) == grids
    assert tuple(space.grid(resolution, i) ** 2 % 8 for i in range(3, 7)) == slots  # L % 8 of mb4..mb7
    assert max(grids[3:]) <= space.window == 18


def test_make_divisible_is_the_official_rounding():
    assert [make_divisible(v) for v in (16, 20, 24, 60, 96, 100, 3)] == [16, 24, 24, 64, 96, 104, 9]


def test_config_forms_round_trip_with_a_stable_id():
    cfg = tiny_space().sample(random.Random(3))
    official = cfg.to_official()
    assert "family" not in official and set(official) == {"resolution", *GENES}
    assert load_config({**official, "flops": 12.5}, "nasvit") == cfg  # sample_active_subnet(compute_flops=True)
    again = NASViTConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.id == cfg.id and len(cfg.id) == 12


@pytest.mark.parametrize("change, message", [
    ({"width": [8] * 8}, "width = [8, 8, 8"), ({"depth": [1, 1, 1, 2, 2, 2, "2"]}, "depth[6] = '2' is not an int"),
    ({"resolution": 40.5}, "resolution = 40.5 is not an integer"), ({"kernel_size": None}, "kernel_size = None"),
    ({"family": "autoformer"}, "family 'autoformer', not 'nasvit'"), ({"acc1": 70}, "unknown keys ['acc1']"),
    ({"expand_ratio": True}, "expand_ratio = True must be a list"), ({"depth": [True] * 7}, "depth[0] = True")])
def test_malformed_configs_are_refused_naming_the_entry(change, message):
    d = {**tiny_space().sample(None, "min").to_dict(), **change}
    with pytest.raises(InvalidSubnetConfig, match=message.replace("[", r"\[").replace("(", r"\(")):
        NASViTConfig.from_dict(d)


def test_missing_keys_are_named():
    with pytest.raises(InvalidSubnetConfig, match="lacks width, depth"):
        NASViTConfig.from_dict({"resolution": 40, "kernel_size": [3] * 7, "expand_ratio": [3] * 7})


@pytest.mark.parametrize("gene, index, value, where, allowed", [
    ("resolution", None, 56, "resolution", "32, 40, 48"), ("width", 4, 48, r"width\[4\] \(mb4\)", "32, 40"),
    ("depth", 3, 4, r"depth\[3\] \(mb4\)", "2, 3"), ("kernel_size", 2, 5, r"kernel_size\[2\] \(mb3\)", "3"),
    ("expand_ratio", 6, 2, r"expand_ratio\[6\] \(mb7\)", "3")])
def test_validation_names_field_value_and_allowed_set(gene, index, value, where, allowed):
    space = tiny_space()
    cfg = space.sample(None, "max")
    if index is None:
        cfg = replace(cfg, resolution=value)
    else:
        values = list(getattr(cfg, gene))
        values[index] = value
        cfg = replace(cfg, **{gene: tuple(values)})
    with pytest.raises(InvalidSubnetConfig, match=f"{where} = {value} is outside space 'nasvit-tiny' "
                                                  f"\\(allowed: {allowed}\\)"):
        space.validate(cfg)


def test_min_max_and_the_official_draw_order():
    space = SPACES.get("nasvit")
    lo, hi = space.sample(None, "min"), space.sample(None, "max")
    assert lo.resolution == 192 and lo.width == (16, 16, 24, 32, 64, 112, 160, 208, 1792)
    assert lo.depth == (1,) + (3,) * 6
    assert hi.resolution == 288 and hi.depth == (2, 5, 6, 6, 9, 8, 6) and hi.expand_ratio == (1,) + (6,) * 6
    rng, mine = random.Random(11), space.sample(random.Random(11))
    expected = {"resolution": rng.choice(space.resolution)}  # _sample_active_subnet: resolution, then per gene
    for gene in GENES:
        expected[gene] = tuple(rng.choice(c) for c in getattr(space, gene))
    assert mine == NASViTConfig(**expected)


def test_mutation_and_crossover_stay_in_the_space():
    space, rng = tiny_space(), random.Random(0)
    a, b = space.sample(rng), space.sample(rng)
    assert space.mutate(a, rng, 0.0, 0.0) == a
    every = space.mutate(a, rng, 1.0, 1.0)  # the official pick_another: a different choice wherever there is one
    for gene in ("resolution", *GENES):
        old, new, choices = getattr(a, gene), getattr(every, gene), getattr(space, gene)
        pairs = [(old, new, choices)] if gene == "resolution" else zip(old, new, choices)
        assert all((o != n) == (len(c) > 1) for o, n, c in pairs)
    assert space.can_cross(a, b)
    child = space.validate(space.crossover(a, b, rng))
    for gene in ("resolution", *GENES):
        got, x, y = getattr(child, gene), getattr(a, gene), getattr(b, gene)
        assert all(v in (p, q) for v, p, q in ([(got, x, y)] if gene == "resolution" else zip(got, x, y)))


@pytest.mark.parametrize("change, message", [
    ({"width": ((8,),) * 4 + ((36, 40),) + ((48,),) * 4}, "not multiples of the head dim 8"),
    ({"window": 4}, "window 4 is smaller than the largest token grid 6"),
    ({"depth": ((1,),) * 3 + ((2, 10),) + ((2,),) * 3}, "depth 10 >= 10"),
    ({"kernel_size": ((4,),) + ((3,),) * 6}, "kernel sizes (4,) are not all odd"),
    ({"stride": (2, 1, 3, 1, 2, 1, 1, 2)}, "stride 3 of mb2"),
    ({"width": ((8,),) * 8 + ((0,),)}, r"width\[8\] \(last_conv\)"),
    ({"se": (True,) * 6}, "se = "), ({"resolution": ()}, "non-empty list")])
def test_bad_spaces_are_refused(change, message):
    with pytest.raises(InvalidSubnetConfig, match=message.replace("(", r"\(").replace(")", r"\)")
                       if "\\" not in message else message):
        replace(tiny_space(), **change)


def test_space_json_round_trip_and_stage_names():
    space = tiny_space()
    assert NASViTSpace.from_dict(space.to_dict()) == space
    assert MB_STAGES == ("mb1", "mb2", "mb3", "mb4", "mb5", "mb6", "mb7")
    with pytest.raises(InvalidSubnetConfig, match="unknown keys"):
        NASViTSpace.from_dict({**space.to_dict(), "heads": 3})
