"""PSViT through ONNX: each shared attention map is computed once (one Softmax per producer, none per consumer),
the pooling lowers to plain Conv / MaxPool ops, and the max subnets (every cell shared) of both tiny spaces pass
the onnxruntime and OpenVINO parity gates."""
from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from deploy_nas.export.onnx import export_onnx
from deploy_nas.family import FAMILIES
from deploy_nas.materialize import materialize
from deploy_nas.spaces import SPACES
from tests.families.test_protocol import scaled_random_

FAMILY = FAMILIES.get("psvit")


def supernet(space_name: str):
    space = SPACES.get(space_name)
    return space, scaled_random_(FAMILY.build_supernet(space, 0), seed=2)


@pytest.mark.parametrize("space_name", ["psvit-tiny-1d", "psvit-tiny-2d"])
def test_onnx_computes_each_shared_map_once(space_name, tmp_path):
    import onnx

    space, model = supernet(space_name)
    rng = random.Random(4)
    for i, cfg in enumerate([space.sample(None, "max"), space.sample(rng), space.sample(rng)]):
        dense = materialize(model, cfg)
        result = export_onnx(dense, tmp_path / f"{i}.onnx")
        ops = Counter(node.op_type for node in onnx.load(str(result.path)).graph.node)
        producers = sum(stage.producers for stage in dense.spec.body.stages)
        consumers = dense.spec.body.depth - producers
        print(f"\n{space_name} {cfg.layer_string()}: {producers} producers, {consumers} consumers, "
              f"{ops['Softmax']} Softmax nodes")
        assert ops["Softmax"] == producers and result.max_abs_after <= 1e-5
        assert ops["Conv"] == len(cfg.widths)  # the patch embedding and one convolution per pooling
        assert ops["MaxPool"] == (len(cfg.widths) - 1 if space.pooling == "1d" else 0)


@pytest.mark.openvino
@pytest.mark.parametrize("space_name", ["psvit-tiny-1d", "psvit-tiny-2d"])
def test_max_subnet_deploys_with_parity(space_name, tmp_path):
    from deploy_nas.export.pipeline import RunPlan, run

    space, model = supernet(space_name)
    plan = RunPlan(targets=(("onnxruntime", "fp32"), ("openvino", "fp32")), batches=(1,), threads=1,
                   cross_check_module=False)
    report = run(materialize(model, space.sample(None, "max")), tmp_path / "out", plan)
    assert report.passed and report.model["arch"] == "psvit"
    parity = json.loads((tmp_path / "out" / "report.json").read_text())["parity"]
    worst = {f"{p['backend']}/{p['precision']}": max(o["max_abs"] for o in p["outputs"]) for p in parity}
    print(f"\n{space_name} max subnet parity (max abs): {worst}")
    assert all(v <= 1e-4 for v in worst.values())
