"""Every registered family, through the same protocol: a meta-test of what each must provide, exactness of its tiny
space (min, max and seeded random configs, through save/load), and a deployment with onnxruntime and OpenVINO
parity. Parametrized over the registry, so a family added later is tested here without touching this file."""
from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch

from deploy_nas.dense import ARCHS, load_dense, save_dense
from deploy_nas.family import FAMILIES, EvolvableSpace, Family, SearchSpace, SubnetConfig, Supernet
from deploy_nas.materialize import materialize
from deploy_nas.spaces import SPACES, load_config
from deploy_nas.train import TRAIN_RULES

NAMES = FAMILIES.names()
EXACT = 1e-5  # fp32 max abs on logits; a family may declare a looser bound for a documented reason


def scaled_random_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights ~ N(0, 1/fan_in) (norm/BN scales 1 + N(0, 0.1), biases N(0, 0.1)), so activations stay O(1) and
    logits are large enough for an absolute 1e-5 check to mean something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() == 1:
                p.copy_(1 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            else:
                p.copy_(noise / max(1, p[0].numel()) ** 0.5)
    return model.eval()


def tiny(name: str):
    family = FAMILIES.get(name)
    space = SPACES.get(family.tiny_space)
    return family, space, scaled_random_(family.build_supernet(space, 0))


def configs(space, n: int = 10, seed: int = 0) -> list:
    rng = random.Random(seed)
    return [space.sample(rng, "min"), space.sample(rng, "max")] + [space.sample(rng) for _ in range(n)]


@pytest.mark.parametrize("name", NAMES)
def test_family_provides_the_protocol(name):
    family = FAMILIES.get(name)
    assert isinstance(family, Family) and family.name == name
    assert dataclasses.is_dataclass(family.import_options) and family.import_options.__dataclass_params__.frozen
    assert family.train_rule in TRAIN_RULES
    for space_name in (family.tiny_space, family.default_space):
        space = SPACES.get(space_name)
        assert isinstance(space, SearchSpace) and space.family == name
    space = SPACES.get(family.tiny_space)
    supernet = family.build_supernet(space, 0)
    assert isinstance(supernet, Supernet) and supernet.family == name
    cfg = space.sample(random.Random(0))
    assert isinstance(cfg, SubnetConfig) and cfg.family == name
    again = load_config(json.loads(cfg.to_json()), name)  # canonical JSON round trip, same id
    assert again == cfg and again.id == cfg.id
    assert family.space_from_dict(space.to_dict()) == space
    rebuilt = family.supernet_from_meta(json.loads(json.dumps(supernet.meta())))  # what supernet.json restores
    assert supernet.meta()["family"] == name
    shapes = {k: v.shape for k, v in supernet.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    features = family.cost_features(space, cfg)
    assert features and all(isinstance(v, float) for v in features.values())
    assert isinstance(family.tolerances(), dict)
    if isinstance(space, EvolvableSpace):
        space.validate(space.mutate(cfg, random.Random(1), 0.5, 0.5))
    spec = materialize(supernet, cfg).spec
    assert spec.arch in ARCHS and spec.source["family"] == name and spec.source["config_id"] == cfg.id


@pytest.mark.parametrize("name", NAMES)
def test_family_plugs_its_strategies_into_the_fuzz_suite(name):
    from tests.fuzz.strategies import FAMILY_STRATEGIES

    assert name in FAMILY_STRATEGIES, f"add {name}'s config and checkpoint strategies to tests/fuzz/strategies.py"
    base = FAMILY_STRATEGIES[name].checkpoint_base()
    assert base and all(isinstance(v, torch.Tensor) for v in base.values())


@pytest.mark.parametrize("name", NAMES)
def test_tiny_space_materializes_exactly(name, tmp_path):
    family, space, supernet = tiny(name)
    atol = getattr(family, "exactness_atol", EXACT)
    x = torch.randn(3, space.in_chans, space.img_size, space.img_size, generator=torch.Generator().manual_seed(0))
    worst = 0.0
    for cfg in configs(space):
        with torch.no_grad():
            ref = supernet.fixed(cfg)(x)
            out = load_dense(save_dense(materialize(supernet, cfg), tmp_path / cfg.id))(x)
        assert ref.abs().max() > 0.1, "logits too small for a meaningful check"
        worst = max(worst, (out - ref).abs().max().item())
    print(f"\n{name} ({space.name}): worst max abs error {worst:.3g}")
    assert worst <= atol


@pytest.mark.openvino
@pytest.mark.parametrize("name", NAMES)
def test_tiny_subnet_deploys_with_parity(name, tmp_path):
    from deploy_nas.export.pipeline import RunPlan, run

    family, space, supernet = tiny(name)
    plan = RunPlan(targets=(("onnxruntime", "fp32"), ("openvino", "fp32")), batches=(1,), threads=1,
                   cross_check_module=False)
    report = run(materialize(supernet, space.sample(random.Random(0), "min")), tmp_path / "out", plan)
    assert report.passed and [(p.backend, p.precision) for p in report.parity] == list(plan.targets)
    assert report.model["family"] == name
    assert json.loads((tmp_path / "out" / "report.json").read_text())["passed"] is True
