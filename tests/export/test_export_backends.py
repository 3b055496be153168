"""Backends: registry and lazy imports, typed errors, threads, saved artifacts and reloading (parity of every
backend/precision is in test_parity.py)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from deploy_nas.errors import BackendUnavailable, DataError, DeployNASError, ExportError
from deploy_nas.export.backends import (
    BACKENDS,
    BuildConfig,
    UnknownBackend,
    UnsupportedPrecision,
    backends_for_precision,
    get_backend,
)
from deploy_nas.export.parity import TOLERANCES, check_parity


def test_registry_lists_every_backend():
    assert BACKENDS.names() == ["onnxruntime", "openvino", "tensorrt", "torch"]
    assert backends_for_precision("int8") == ["openvino"]
    assert backends_for_precision("fp16") == ["openvino", "tensorrt"]


def test_importing_export_pulls_in_no_backend_runtime():
    code = ("import sys, deploy_nas.export, deploy_nas.export.backends, deploy_nas.export.parity, "
            "deploy_nas.export.fps, deploy_nas.export.report, deploy_nas.export.onnx\n"
            "from deploy_nas.export.backends import get_backend\n"
            "[get_backend(n).unavailable_reason() for n in ('tensorrt',)]\n"
            "[get_backend(n) for n in ('onnxruntime', 'openvino', 'torch')]\n"
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'openvino', 'nncf', 'tensorrt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_backend_lists_choices():
    with pytest.raises(UnknownBackend, match="unknown backend 'tflite'; choose one of: onnxruntime, openvino, "
                                             "tensorrt, torch") as info:
        get_backend("tflite")
    assert isinstance(info.value, DeployNASError)


def test_unknown_precision_is_typed():
    with pytest.raises(UnsupportedPrecision, match="unknown precision 'int4'; choose one of: fp32, fp16, int8"):
        BuildConfig(precision="int4").validate()
    with pytest.raises(ExportError, match="opt_batch"):
        BuildConfig(opt_batch=64, max_batch=32).validate()


@pytest.mark.parametrize("precision, alternative", [("fp16", "openvino or tensorrt"), ("int8", "openvino")])
def test_onnxruntime_names_backends_that_build_a_precision(onnx_files, precision, alternative):
    message = f"onnxruntime backend builds fp32 only, not {precision}; use {alternative}$"
    with pytest.raises(UnsupportedPrecision, match=message):
        get_backend("onnxruntime").build(onnx_files["min"].path, BuildConfig(precision=precision))


def test_tensorrt_unavailable_raises_its_reason(onnx_files):
    backend = get_backend("tensorrt")
    reason = backend.unavailable_reason()
    if reason is None:
        pytest.skip("tensorrt is available here; the real build is tested below")
    assert "pip install deploy-nas[tensorrt]" in reason or "no CUDA GPU" in reason or "libraries" in reason
    with pytest.raises(BackendUnavailable) as info:
        backend.build(onnx_files["min"].path, BuildConfig())
    assert str(info.value) == reason


def test_onnxruntime_threads_are_explicit(onnx_files):
    with get_backend("onnxruntime").build(onnx_files["min"].path, BuildConfig(threads=1)) as engine:
        options = engine.session.get_session_options()
        assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
        assert engine.info()["execution_mode"] == "sequential"


def test_torch_backend_builds_from_a_dense_directory(dense_models, reference_engines, parity_batch, tmp_path):
    from deploy_nas.dense import save_dense

    save_dense(dense_models["min"], tmp_path / "dense")
    with get_backend("torch").build(tmp_path / "dense", BuildConfig(threads=1)) as engine:
        result = check_parity(reference_engines["min"], engine, parity_batch)
    assert result.max_abs == 0.0
    with pytest.raises(ExportError, match="dense model directory"):
        get_backend("torch").build(tmp_path / "model.onnx", BuildConfig())


# ---------------------------------------------------------------------------------------------------- OpenVINO


@pytest.mark.openvino
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_openvino_artifacts_and_sidecar(engines, precision):
    engine = engines("openvino", precision, "min")
    d = engines.out / "min" / "openvino" / precision
    assert sorted(p.name for p in d.iterdir()) == [".deploy-nas", "build.json", "model.bin", "model.xml"]
    meta = json.loads((d / "build.json").read_text())
    assert meta["precision"] == precision and meta["compress_to_fp16"] == (precision == "fp16")
    assert meta["files"]["model.bin"] and meta["versions"]["openvino"]
    assert engine.info()["precision_hint"] == meta["precision_hint"]  # the hint asked for is the hint in effect
    if precision == "int8":
        assert meta["int8"]["model_type"] == "transformer" and meta["int8"]["calibration_images"] == 48
    assert not [p for p in d.parent.iterdir() if "deploy-nas-" in p.name]  # no leftover temporaries or locks


@pytest.mark.openvino
def test_openvino_fp16_ir_has_half_size_weights(engines):
    engines("openvino", "fp32", "max"), engines("openvino", "fp16", "max")
    sizes = {p: (engines.out / "max" / "openvino" / p / "model.bin").stat().st_size for p in ("fp32", "fp16")}
    assert 0.4 < sizes["fp16"] / sizes["fp32"] < 0.6


@pytest.mark.openvino
def test_openvino_ir_from_module_cross_checks_the_onnx_path(dense_models, engines, reference_engines,
                                                            parity_batch, kind):
    from deploy_nas.export.backends.openvino_backend import OpenVinoBackend

    with OpenVinoBackend().build_from_module(dense_models[kind], BuildConfig()) as engine:
        vs_torch = check_parity(reference_engines[kind], engine, parity_batch)
        vs_onnx = check_parity(engines("openvino", "fp32", kind), engine, parity_batch)
    assert vs_torch.passed and vs_torch.max_abs <= 1e-4
    assert vs_onnx.max_abs <= 1e-5


@pytest.mark.openvino
def test_openvino_load_gives_the_built_engine(engines, parity_batch):
    built = engines("openvino", "fp16", "min")
    with get_backend("openvino").load(engines.out / "min", BuildConfig(precision="fp16")) as loaded:
        a, b = built.infer({"input": parity_batch}), loaded.infer({"input": parity_batch})
        assert loaded.precision == "fp16" and loaded.hint == built.hint
    np.testing.assert_array_equal(a["logits"], b["logits"])


@pytest.mark.openvino
def test_openvino_int8_on_the_embedded_set(onnx_files, reference_engines, parity_batch):
    pytest.importorskip("deploy_nas.data")
    config = BuildConfig(precision="int8", smooth_quant=False)
    with get_backend("openvino").build(onnx_files["min"].path, config) as engine:
        result = check_parity(reference_engines["min"], engine, parity_batch)
        assert engine.info()["int8"]["calibration"] == "embedded"
    assert result.passed, result.failures


@pytest.mark.openvino
def test_openvino_int8_with_an_empty_calibration_dir(onnx_files, tmp_path):
    (tmp_path / "calib" / "cats").mkdir(parents=True)
    (tmp_path / "calib" / "cats" / "notes.txt").write_text("not an image")
    config = BuildConfig(precision="int8", calib_dir=tmp_path / "calib", out_dir=tmp_path / "out")
    with pytest.raises(DataError, match="no images"):
        get_backend("openvino").build(onnx_files["min"].path, config)
    assert not (tmp_path / "out").exists()


@pytest.mark.openvino
def test_openvino_failed_save_leaves_no_artifacts(onnx_files, tmp_path, monkeypatch):
    import openvino as ov

    def crash(model, path, compress_to_fp16=True):
        open(path, "w").write("<net partial")
        raise RuntimeError("simulated crash while saving")

    monkeypatch.setattr(ov, "save_model", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        get_backend("openvino").build(onnx_files["min"].path, BuildConfig(out_dir=tmp_path))
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()] == []
    assert not (tmp_path / "openvino" / "fp32").exists()


# ---------------------------------------------------------------------------------------------------- TensorRT


def test_fp16_graph_keeps_fragile_ops_in_fp32(onnx_files, kind):
    from onnx import TensorProto
    from onnx.reference import ReferenceEvaluator

    from deploy_nas.export.onnx import check_onnx, fixed_batch
    from deploy_nas.export.onnx_fp16 import fp16_from_fp32
    from deploy_nas.export.parity import cosine_rows

    fp32 = check_onnx(onnx_files[kind].path)
    fp16 = fp16_from_fp32(fp32)
    g = fp16.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
    types.update({t.name: t.data_type for t in g.initializer})
    kept = [n for n in g.node if n.op_type in ("LayerNormalization", "Softmax") or n.op_type.startswith("Reduce")]
    # every float input of those stays fp32 (integer inputs such as ReduceSum's axes stay what they are)
    assert kept and all(types[i] != TensorProto.FLOAT16 for n in kept for i in n.input if i)
    assert any(types[i] == TensorProto.FLOAT for n in kept for i in n.input if i)
    assert all(types[i] == TensorProto.FLOAT16 for n in g.node if n.op_type == "MatMul" for i in n.input)
    assert types["input"] == types["logits"] == TensorProto.FLOAT
    x = fixed_batch(tuple(d.dim_value for d in fp32.graph.input[0].type.tensor_type.shape.dim[1:]), batch=4)
    ref, got = ReferenceEvaluator(fp32).run(None, {"input": x})[0], ReferenceEvaluator(fp16).run(None, {"input": x})[0]
    assert np.abs(got - ref).max() <= TOLERANCES["tensorrt", "fp16"].max_abs
    assert cosine_rows(got.astype(np.float64), ref.astype(np.float64)).min() >= 0.999


@pytest.mark.openvino
def test_openvino_runs_the_relative_position_gathers_as_gathers(onnx_files, dense_models, tmp_path):
    """The ONNX file keeps GatherElements (onnxruntime's fast path); the IR converted from it runs each of them as a
    Gather on the flattened last two axes (OpenVINO's JIT path), with the same outputs; other GatherElements
    (not a constant broadcast along the last axis) are left alone."""
    import onnx
    import openvino as ov

    from deploy_nas.export.backends.openvino_backend import gathers_from_constant_indices, ir_from_onnx
    from deploy_nas.export.onnx import fixed_batch, input_shape, torch_outputs

    model = dense_models["max"]
    proto = onnx.load(str(onnx_files["max"].path))
    assert sum(n.op_type == "GatherElements" for n in proto.graph.node) == 2 * len(model.spec.body.blocks)
    ir = ir_from_onnx(onnx_files["max"].path)
    kinds = [n.get_type_name() for n in ir.get_ordered_ops()]
    assert "GatherElements" not in kinds and kinds.count("Gather") >= 2 * len(model.spec.body.blocks)
    x = fixed_batch(input_shape(model), batch=3, seed=2)
    out = ov.Core().compile_model(ir, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0]
    assert np.abs(out - torch_outputs(model, x)).max() <= 1e-4

    from openvino import opset13 as ops

    data = ops.parameter([2, 3, 5], np.float32)
    varying = ops.parameter([2, 3, 2], np.int64)  # indices that are not constant: not rewritten
    rows = ops.constant(np.array([[[0, 4], [1, 1], [3, 2]]], np.int64))  # one table broadcast over the batch
    broadcast = ops.broadcast(rows, ops.constant(np.array([2, 3, 2], np.int64)))
    graph = ov.Model([ops.gather_elements(data, broadcast, -1), ops.gather_elements(data, varying, 2)],
                     [data, varying])
    assert gathers_from_constant_indices(graph) == 1
    feeds = [np.random.default_rng(0).standard_normal((2, 3, 5)).astype(np.float32),
             np.random.default_rng(1).integers(0, 5, (2, 3, 2))]
    first, second = ov.Core().compile_model(graph, "CPU")(feeds).values()
    assert np.array_equal(first, np.take_along_axis(feeds[0], np.broadcast_to([[0, 4], [1, 1], [3, 2]], (2, 3, 2)), -1))
    assert np.array_equal(second, np.take_along_axis(feeds[0], feeds[1], 2))
