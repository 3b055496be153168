"""PSViT spaces and configs: canonical JSON, the layer string form, sampling, the evolution operators, and every bad
input of the issue (wrong cell-list length, unknown choice, a shared pair crossing a stage boundary, no layer left,
widths or token counts against the increasing rule) as a typed error that names the problem."""
from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from deploy_nas.errors import InvalidSubnetConfig
from deploy_nas.spaces import SPACES, load_config
from deploy_nas.spaces.psvit import CHOICES, PSViTConfig, PSViTSpace, parse_layers, pool_stride

TINY_1D, TINY_2D = SPACES.get("psvit-tiny-1d"), SPACES.get("psvit-tiny-2d")
GOOD = {"family": "psvit", "widths": [16, 40, 64], "tokens": [64, 16, 4],
        "cells": [["layer", "shared"], ["identity", "layer"], ["shared", "identity"]]}


def config(**changes) -> PSViTConfig:
    return load_config({**GOOD, **changes}, "psvit")


def test_canonical_json_round_trip_and_layer_string():
    cfg = config()
    assert cfg.to_json() == json.dumps(GOOD, sort_keys=True, separators=(",", ":"))
    assert load_config(json.loads(cfg.to_json())) == cfg and cfg.num_layers == 6
    assert cfg.layer_string() == "A AR | - A | AR -"
    again = load_config({**{k: v for k, v in GOOD.items() if k != "cells"}, "layers": cfg.layer_string()})
    assert again == cfg and again.id == cfg.id
    assert TINY_1D.validate(cfg) is cfg and TINY_2D.validate(config(tokens=[64, 16, 4])) is not None


def test_layer_string_parses_pairs_and_refuses_orphans():
    assert parse_layers("AAR-|A") == [["layer", "shared", "identity"], ["layer"]]
    with pytest.raises(InvalidSubnetConfig, match="stage 1 opens with R.*cannot cross a stage boundary"):
        parse_layers("A A | R A | A A")
    with pytest.raises(InvalidSubnetConfig, match="has no A right before it"):
        parse_layers("A - R")
    with pytest.raises(InvalidSubnetConfig, match="has no A right before it"):
        parse_layers("AR R")
    with pytest.raises(InvalidSubnetConfig, match="is not A .* R .* -"):
        parse_layers("A X")


@pytest.mark.parametrize("changes, message", [
    (dict(cells=[["layer"], ["identity", "layer"], ["shared", "identity"]]), r"cells\[0\] has 1 cells, stage 0 .* 2"),
    (dict(cells=[["layer", "attention"], ["identity", "layer"], ["shared", "identity"]]),
     r"cells\[0\]\[1\] = 'attention' is not a cell choice"),
    (dict(cells=[["identity"] * 2] * 3), "no layer is left"),
    (dict(widths=[24, 16, 64]), r"stage 1 \(16\) is not wider than stage 0 \(24\).*increase"),
    (dict(widths=[16, 40, 40]), r"stage 2 \(40\) is not wider"),
    (dict(tokens=[64, 16, 16]), r"stage 2 \(16\) does not have fewer tokens"),
    (dict(widths=[16, 48, 64]), r"widths\[1\] = 48 is outside space 'psvit-tiny-1d' \(allowed: 32, 40\)"),
    (dict(tokens=[64, 8, 4]), r"tokens\[1\] = 8 is outside"),
    (dict(widths=[16, 40]), "give one entry per stage"),
    (dict(widths=[16, 40, 64], tokens=[64, 16, 4], cells=[["layer", "shared"]] * 4), "give one entry per stage"),
    (dict(widths=[16, "x", 64]), r"widths\[1\] = 'x' is not a positive integer"),
])
def test_bad_configs_are_refused_with_the_reason(changes, message):
    with pytest.raises(InvalidSubnetConfig, match=message):
        TINY_1D.validate(config(**changes))


def test_a_shared_pair_across_stages_is_refused_in_the_layer_form():
    doc = {k: v for k, v in GOOD.items() if k != "cells"}
    with pytest.raises(InvalidSubnetConfig, match="cannot cross a stage boundary"):
        load_config({**doc, "layers": "A A | R A | AR -"})
    with pytest.raises(InvalidSubnetConfig, match="cell choices once"):
        load_config({**GOOD, "layers": "A A | A A | A A"})
    with pytest.raises(InvalidSubnetConfig, match="unknown keys"):
        load_config({**GOOD, "depth": 3})


def test_min_max_and_random_samples_are_in_the_space():
    for space in (TINY_1D, TINY_2D, SPACES.get("psvit-1d"), SPACES.get("psvit-2d")):
        lo, hi = space.sample(None, "min"), space.sample(None, "max")
        assert lo.num_layers == 1 and lo.cells[-1][0] == "layer" and lo.widths == tuple(min(w) for w in space.widths)
        assert hi.num_layers == 2 * sum(space.cells) and hi.tokens == tuple(max(n) for n in space.tokens)
        rng = random.Random(0)
        for cfg in [lo, hi] + [space.sample(rng) for _ in range(30)]:
            assert space.validate(cfg) is cfg and cfg.num_layers >= 1


def test_random_cells_are_uniform_over_the_three_paths():
    rng = random.Random(1)
    counts = Counter(c for _ in range(3000) for stage in TINY_1D.sample(rng).cells for c in stage)
    total = sum(counts.values())
    assert set(counts) == set(CHOICES) and all(abs(counts[c] / total - 1 / 3) < 0.02 for c in CHOICES)


def test_mutation_and_crossover_stay_in_the_space_and_keep_a_layer():
    rng = random.Random(0)
    cfgs = [TINY_1D.sample(rng) for _ in range(20)]
    for a, b in zip(cfgs, cfgs[1:]):
        assert TINY_1D.can_cross(a, b)
        child = TINY_1D.crossover(a, b, rng)
        assert TINY_1D.validate(child) and all(c in (x, y) for x, y, c in zip(
            sum(a.cells, ()), sum(b.cells, ()), sum(child.cells, ())))
        assert TINY_1D.validate(TINY_1D.mutate(a, rng, 0.5, 0.5)).num_layers >= 1
    lonely = TINY_1D.sample(None, "min")
    assert all(TINY_1D.mutate(lonely, random.Random(i), 1.0, 1.0).num_layers >= 1 for i in range(50))
    assert TINY_1D.mutate(lonely, rng, 0.0, 0.0) == lonely


def test_space_round_trip_and_bad_spaces():
    for space in (TINY_1D, TINY_2D, SPACES.get("psvit-1d")):
        assert PSViTSpace.from_dict(json.loads(json.dumps(space.to_dict()))) == space
    base = TINY_1D.to_dict()
    for changes, message in [(dict(pooling="3d"), "pooling"), (dict(widths=[[16], [12], [48]]), "multiple of head_dim"),
                             (dict(tokens=[[64], [24], [8]]), "cannot take 64 tokens to"),
                             (dict(tokens=[[32], [16], [8]]), "stage 0 holds every patch"),
                             (dict(widths=[[16, 32], [32], [48]]), "must exceed every width"),
                             (dict(choices=["identity"]), "no choice with a layer"),
                             (dict(choices=["layer", "skip"]), "choices"), (dict(depth=3), "unknown keys"),
                             (dict(increasing="no"), "true or false")]:
        with pytest.raises(InvalidSubnetConfig, match=message):
            PSViTSpace.from_dict({**base, **changes})


def test_pool_strides():
    assert pool_stride("1d", 64, 16) == 4 and pool_stride("1d", 64, 24) is None
    assert pool_stride("2d", 196, 49) == 2 and pool_stride("2d", 49, 16) == 2 and pool_stride("2d", 64, 9) == 3
    assert pool_stride("2d", 64, 10) is None
