"""The dense `swin` arch as it lowers: plain ONNX ops only (no gather, scatter or roll: the bias and the masks are
constants, the shift is slices + concat, partition/reverse and patch merging are reshapes and transposes), the
batch axis dynamic, and MACs by formula equal to fvcore's count; spec.json round trip and its checks."""
from __future__ import annotations

import collections
import json
import random

import onnx
import pytest
import torch

from deploy_nas.dense import load_dense, save_dense
from deploy_nas.dense.spec import DenseSpec
from deploy_nas.dense.swin import macs
from deploy_nas.errors import DenseModelError
from deploy_nas.export.onnx import export_onnx
from deploy_nas.family import FAMILIES
from deploy_nas.flops import count_flops
from deploy_nas.materialize import materialize
from deploy_nas.spaces import SPACES
from tests.families.test_protocol import scaled_random_
from tests.s3.s3_helpers import images, official_model

PLAIN = {"Conv", "MatMul", "Gemm", "Add", "Mul", "Div", "Erf", "Softmax", "LayerNormalization", "Reshape",
         "Transpose", "Slice", "Concat", "Split", "Squeeze", "Constant", "ReduceMean", "ConstantOfShape", "Shape"}


@pytest.fixture(scope="module")
def shifted_model():
    """A 64 px model whose first two stages shift (masks), with a one-window stage and a clipped stage."""
    return official_model()


def test_onnx_graph_holds_plain_ops_and_a_dynamic_batch(tmp_path, shifted_model):
    result = export_onnx(shifted_model, tmp_path / "m.onnx")
    assert result.max_abs_after <= 1e-4  # the exporter's own parity (batch 3 against an export at batch 2)
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    assert set(ops) <= PLAIN, f"unexpected ops {set(ops) - PLAIN}"
    assert ops["Softmax"] == sum(len(s.blocks) for s in shifted_model.spec.body.stages)
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = images(n=batch, seed=batch)
        got = session.run(None, {graph.input[0].name: x.numpy()})[0]
        with torch.no_grad():
            assert abs(got - shifted_model(x).numpy()).max() <= 1e-4


def test_macs_by_formula_equal_fvcore_plus_its_norm_convention(shifted_model):
    rng = random.Random(0)
    space = SPACES.get("s3-tiny")
    supernet = FAMILIES.get("s3").build_supernet(space, 0)
    for model in [shifted_model] + [materialize(supernet, space.sample(rng)) for _ in range(3)]:
        report = count_flops(model)
        spec = model.spec
        norms = sum(m.normalized_shape[0] * _tokens(name, spec) for name, m in model.named_modules()
                    if isinstance(m, torch.nn.LayerNorm))
        assert report.macs == macs(spec) + 5 * norms  # fvcore counts 5 per normalized element
        assert not report.unsupported, report.unsupported


def _tokens(name: str, spec: DenseSpec) -> int:
    """Tokens a LayerNorm sees (fvcore counts its work per element)."""
    stages = spec.body.stages
    if name.startswith("patch_embed"):
        return stages[0].resolution ** 2
    if name == "norm":
        return stages[-1].resolution ** 2
    s = int(name.split(".")[1])
    return stages[s].resolution ** 2 // (4 if ".downsample." in name else 1)


def test_spec_json_round_trip_and_bad_specs(tmp_path):
    space = SPACES.get("s3-tiny")
    model = materialize(scaled_random_(FAMILIES.get("s3").build_supernet(space, 0)), space.sample(None, "max"))
    save_dense(model, tmp_path / "d")
    again = load_dense(tmp_path / "d")
    assert again.spec == model.spec
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    spec = json.loads((tmp_path / "d" / "spec.json").read_text())
    spec["body"]["stages"][0]["blocks"][0]["window_size"] = 3  # does not tile the 8x8 map
    (tmp_path / "d" / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(DenseModelError, match=r"stage 1 block 1 \(window 3, shift 0"):
        load_dense(tmp_path / "d")
