"""The dense `psvit` arch against the supernet: exact for min, max and 50 random configs of each tiny space (through
spec.json + safetensors), the same parameter count as `param_count`, identity cells gone, consumers without q/k,
MACs against fvcore, and spec.json that lies (a shared map across a stage, wrong token counts) refused."""
from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch

from deploy_nas.dense import build_dense, load_dense, save_dense
from deploy_nas.dense.spec import DenseSpec
from deploy_nas.errors import DenseModelError
from deploy_nas.family import FAMILIES
from deploy_nas.flops import count_flops
from deploy_nas.materialize import materialize
from deploy_nas.spaces import SPACES
from tests.families.test_protocol import scaled_random_

FAMILY = FAMILIES.get("psvit")
SPACE_NAMES = ("psvit-tiny-1d", "psvit-tiny-2d")


@pytest.fixture(scope="module", params=SPACE_NAMES)
def tiny(request):
    space = SPACES.get(request.param)
    return space, scaled_random_(FAMILY.build_supernet(space, 0), seed=1)


def configs(space, n: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    return [space.sample(rng, "min"), space.sample(rng, "max")] + [space.sample(rng) for _ in range(n)]


def test_dense_equals_supernet_for_min_max_and_50_random_configs(tiny, tmp_path):
    space, supernet = tiny
    x = torch.randn(2, 3, space.img_size, space.img_size, generator=torch.Generator().manual_seed(0))
    worst, smallest = 0.0, float("inf")
    for i, cfg in enumerate(configs(space, 50)):
        dense = materialize(supernet, cfg)
        if i < 6:  # the first few through spec.json + weights.safetensors as well
            dense = load_dense(save_dense(dense, tmp_path / cfg.id))
        with torch.no_grad():
            ref, out = supernet(x, cfg), dense(x)
        worst, smallest = max(worst, (out - ref).abs().max().item()), min(smallest, ref.abs().max().item())
        assert sum(p.numel() for p in dense.parameters()) == supernet.param_count(cfg), cfg.layer_string()
        assert dense.spec.body.depth == cfg.num_layers  # identity cells vanish
    print(f"\n{space.name}: worst max abs error {worst:.3g} over 52 configs (smallest logit scale {smallest:.3g})")
    assert worst <= 1e-5 and smallest > 0.1


def test_a_consumer_has_no_query_or_key_and_takes_its_producers_map(tiny):
    space, supernet = tiny
    cfg = space.sample(None, "max")  # every cell shared: producer, consumer, producer, consumer, ...
    dense = materialize(supernet, cfg)
    keys = dense.state_dict().keys()
    for s, stage in enumerate(dense.spec.body.stages):
        assert [layer.attn_from for layer in stage.layers] == [None, 0, None, 2]
        assert f"stages.{s}.layers.1.attn.v.weight" in keys and f"stages.{s}.layers.0.attn.qkv.weight" in keys
        assert not any(k.startswith(f"stages.{s}.layers.1.attn.") and ("qkv" in k or ".q." in k or ".k." in k)
                       for k in keys)
    seen = []
    hooks = [layer.attn.register_forward_hook(lambda mod, inp, out: seen.append((type(mod).__name__, inp[1], out[1])))
             for stage in dense.stages for layer in stage.layers]
    with torch.no_grad():
        dense(torch.randn(1, 3, space.img_size, space.img_size))
    for h in hooks:
        h.remove()
    for (kind, given, made), (shared_kind, taken, _) in zip(seen[0::2], seen[1::2]):
        assert (kind, given, shared_kind) == ("Attention", None, "SharedAttention")
        assert taken is made and torch.allclose(made.sum(-1), torch.ones(()))  # the post-softmax map itself


def test_macs_match_fvcore_without_the_norms(tiny):
    space, supernet = tiny
    for cfg in configs(space, 3, seed=5):
        report = count_flops(materialize(supernet, cfg))
        assert report.macs - report.by_operator.get("layer_norm", 0) == supernet.macs(cfg), cfg.layer_string()
        assert set(report.unsupported) <= {"aten::max_pool1d"}  # a max does no multiply-accumulate


def test_spec_json_round_trips_and_lies_are_refused(tiny, tmp_path):
    space, supernet = tiny
    dense = materialize(supernet, space.sample(random.Random(3)))
    spec = DenseSpec.from_json(dense.spec.to_json())
    assert spec == dense.spec and json.loads(spec.to_json())["arch"] == "psvit"
    body = json.loads(dense.spec.to_json())
    last = body["body"]["stages"][-1]
    last["layers"] = [{"num_heads": 8, "mlp_hidden": 128, "attn_from": None},
                      {"num_heads": 8, "mlp_hidden": 128, "attn_from": 1}]
    with pytest.raises(DenseModelError, match="attn_from = 1 must name an earlier layer of the same stage"):
        DenseSpec.from_dict(body)
    last["layers"][1]["attn_from"] = -1
    with pytest.raises(DenseModelError, match="never crosses a stage boundary"):
        DenseSpec.from_dict(body)
    stages = list(dense.spec.body.stages)
    stages[1] = dataclasses.replace(stages[1], tokens=stages[1].tokens + 1)
    with pytest.raises(DenseModelError, match="stage 1 claims"):
        build_dense(dataclasses.replace(dense.spec, body=dataclasses.replace(dense.spec.body, stages=tuple(stages))))


def test_architecture_table_lists_pools_and_layers(tiny):
    space, supernet = tiny
    cfg = space.sample(None, "max")
    dense = materialize(supernet, cfg)
    table = dense.architecture_table(count_flops(dense).by_module)
    layers = [r for r in table.rows if isinstance(r[1], int)]
    assert len(layers) == cfg.num_layers and len(table.rows) == cfg.num_layers + 2
    assert [r[5] for r in layers[:2]] == ["own", "reuses layer 0"] and "pooling " + space.pooling in table.title
