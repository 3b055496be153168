"""NASViT subnets through ONNX: what the graph holds (one LayerNormalization over the last two axes per norm, no
BatchNorm, no scaling, no resize, no squeeze, a dynamic batch), the fp16 rewrite's fp32 islands, and onnxruntime /
OpenVINO parity of a subnet with odd maps and recalibrated statistics."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch

from deploy_nas.dense import nasvit as dense
from deploy_nas.export.onnx import export_onnx
from deploy_nas.export.onnx_fp16 import fp16_from_fp32
from deploy_nas.family import Calibration
from deploy_nas.materialize import materialize
from tests.nasvit.nasvit_helpers import images, random_supernet, tiny_space


@pytest.fixture(scope="module")
def model():
    """The max subnet at 40 px (maps 20, 10, 5, 3: odd maps, padded pooling) with recalibrated statistics."""
    cfg = replace(tiny_space().sample(None, "max"), resolution=40)
    calib = Calibration("recalibrate", images(8, seed=3).numpy(), batch_size=4)
    return materialize(random_supernet(seed=5), cfg, calib=calib)


@pytest.fixture(scope="module")
def graph(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    result = export_onnx(model, path)
    assert result.simplified and result.max_abs_after <= 1e-5
    return path, onnx.load(str(path))


def test_the_graph_has_one_layernorm_per_norm_and_no_batchnorm_scaling_resize_or_squeeze(model, graph):
    g = graph[1].graph
    ops = [n.op_type for n in g.node]
    blocks = sum(isinstance(b, dense.TransformerSpec) for b in model.spec.body.blocks)
    norms = [n for n in g.node if n.op_type == "LayerNormalization"]
    assert len(norms) == 3 * blocks > 0
    assert all(next(a.i for a in n.attribute if a.name == "axis") == -2 for n in norms)  # over (tokens, channels)
    assert not {"BatchNormalization", "Resize", "Squeeze", "Upsample", "GroupNormalization"} & set(ops)
    assert "ReduceMean" in ops and "GlobalAveragePool" not in ops  # means stay reductions (fp32 under fp16)
    constants = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    scaled = [n.name for n in g.node if n.op_type in ("Mul", "Div") and set(n.input) & constants]
    assert not scaled, f"scaling by constants left in the graph: {scaled[:5]}"
    assert ops.count("Softmax") == blocks and ops.count("HardSigmoid") == sum(
        isinstance(b, dense.MBConvSpec) and b.se > 0 for b in model.spec.body.blocks)
    batch = g.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # dynamic batch
    assert [d.dim_value for d in g.input[0].type.tensor_type.shape.dim[1:]] == [3, 40, 40]


def test_onnxruntime_runs_batches_of_one_and_three(model, graph):
    import onnxruntime as ort

    session = ort.InferenceSession(str(graph[0]), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        x = images(n, size=40, seed=n).numpy()
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        out = session.run(None, {session.get_inputs()[0].name: x})[0]
        assert out.shape == (n, 10) and np.abs(out - ref).max() <= 1e-4


def test_the_fp16_rewrite_keeps_norms_softmax_and_means_in_fp32(graph):
    g = fp16_from_fp32(graph[1]).graph
    producer = {o: n for n in g.node for o in n.output}
    types = {v.name: v.type.tensor_type.elem_type for v in g.value_info}
    kept = [n for n in g.node if n.op_type in ("LayerNormalization", "Softmax") or n.op_type.startswith("Reduce")]
    assert len(kept) > 20
    for n in kept:  # fed by a Cast to float32, computing in float32
        cast = producer[n.input[0]]
        assert cast.op_type == "Cast" and cast.attribute[0].i == onnx.TensorProto.FLOAT, n.name
        assert types[n.output[0]] == onnx.TensorProto.FLOAT
    assert onnx.TensorProto.FLOAT16 in types.values()


@pytest.mark.openvino
def test_onnxruntime_and_openvino_parity(model, tmp_path):
    from deploy_nas.export.pipeline import RunPlan, run

    plan = RunPlan(targets=(("onnxruntime", "fp32"), ("openvino", "fp32")), batches=(1,), threads=1,
                   cross_check_module=False)
    report = run(model, tmp_path / "out", plan)
    assert report.passed
    worst = max(o["max_abs"] for p in json.loads((tmp_path / "out" / "report.json").read_text())["parity"]
                for o in p["outputs"])
    print(f"\nnasvit-tiny max@40 recalibrated: worst parity max abs {worst:.3g}")
    assert worst <= 1e-4


@pytest.mark.openvino
def test_an_int8_build_quantizes_past_the_attention_bias(graph):
    """NNCF's bias correction took the (1, heads, L, L) attention bias added after the talking-heads projection for
    that MatMul's bias and failed on every NASViT subnet ("cannot reshape array of size 1024 into shape (1,4,1)");
    such a model is quantized without bias correction now, which build.json records."""
    from deploy_nas.export.backends import get_backend
    from deploy_nas.export.backends.base import BuildConfig
    from deploy_nas.export.backends.openvino_backend import ir_from_onnx
    from deploy_nas.export.backends.openvino_int8 import full_bias_matmuls

    assert full_bias_matmuls(ir_from_onnx(graph[0]))  # the pattern is there
    engine = get_backend("openvino").build(graph[0], BuildConfig(precision="int8", calib_size=8, threads=1,
                                                                 smooth_quant=False))
    assert engine.meta["int8"]["bias_correction"] is False
    from deploy_nas.export.onnx import INPUT_NAME

    with engine:
        out = engine.infer({INPUT_NAME: images(2, size=40, seed=1).numpy()})
    assert all(np.isfinite(v).all() and v.shape[0] == 2 for v in out.values())
