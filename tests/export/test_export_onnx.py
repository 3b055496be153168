"""export_onnx / check_onnx: checker, determinism, both exporters, simplification fallback, typed errors."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from deploy_nas.errors import ExportError
from deploy_nas.export import onnx as onnx_export
from deploy_nas.export.onnx import EXPORT_ATOL, check_onnx, export_onnx, fixed_batch, sidecar_path
from deploy_nas.supernets import default_supernet


def ort_vs_torch(path, model) -> float:
    from deploy_nas.export.onnx import max_abs, ort_outputs, torch_outputs

    x = fixed_batch(onnx_export.input_shape(model), batch=5, seed=7)
    return max_abs(ort_outputs(open(path, "rb").read(), x), torch_outputs(model, x))


def test_export_passes_checker_with_named_dynamic_io(onnx_files, dense_models, kind):
    result = onnx_files[kind]
    proto = check_onnx(result.path)
    assert result.opset == 17 and result.exporter == "torchscript"
    size = default_supernet()[1].img_size
    assert result.inputs == {"input": ["batch", 3, size, size]} and result.outputs == {"logits": ["batch", 10]}
    ops = [o.op_type for o in proto.graph.node]
    assert "LayerNormalization" in ops and not {"ScatterElements", "ScatterND"} & set(ops)
    # the compact relative-position lowering: two small constant-index gathers per block, none over (N, N) maps
    depth = len(dense_models[kind].spec.body.blocks)
    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred.graph.value_info}
    gathers = [n for n in inferred.graph.node if n.op_type == "GatherElements"]
    tokens = (size // default_supernet()[1].patch_size) ** 2 + 1
    assert len(gathers) == 2 * depth and all(shapes[n.output[0]][-1] < tokens for n in gathers)
    assert result.simplified and result.max_abs_after <= EXPORT_ATOL


def test_sidecar_records_versions_and_hash(onnx_files, kind):
    result = onnx_files[kind]
    meta = json.loads(sidecar_path(result.path).read_text())
    assert meta["sha256"] == result.sha256
    assert meta["opset"] == 17 and meta["exporter"] == "torchscript" and meta["simplified"] is True
    assert {"torch", "onnx", "onnxruntime"} <= set(meta["versions"])
    size = default_supernet()[1].img_size
    assert meta["inputs"] == {"input": ["batch", 3, size, size]}


def test_double_export_is_byte_identical(dense_models, tmp_path):
    a = export_onnx(dense_models["max"], tmp_path / "a" / "model.onnx")
    b = export_onnx(dense_models["max"], tmp_path / "b" / "model.onnx")
    assert a.path.read_bytes() == b.path.read_bytes()
    assert sidecar_path(a.path).read_text() == sidecar_path(b.path).read_text()


def test_a_module_with_a_spec_of_its_own_exports_without_class_names(dense_models, tmp_path):
    """Any nn.Module whose `spec` gives the input (in_chans, img_size) exports, as the benchmarks' timm wrapper does;
    without class names its graph carries no class_names metadata."""
    from types import SimpleNamespace

    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.spec = SimpleNamespace(in_chans=inner.spec.in_chans, img_size=inner.spec.img_size, arch="own",
                                        source={})

        def forward(self, x):
            return self.inner(x)

    model = Wrapped(dense_models["min"])
    result = export_onnx(model, tmp_path / "model.onnx")
    keys = [p.key for p in check_onnx(result.path).metadata_props]
    assert onnx_export.CLASS_NAMES_KEY not in keys and ort_vs_torch(result.path, model) <= EXPORT_ATOL


@pytest.mark.slow
def test_dynamo_export_parity(dense_models, tmp_path):
    model = dense_models["max"]
    result = export_onnx(model, tmp_path / "model.onnx", dynamo=True)
    check_onnx(result.path)
    assert result.exporter == "dynamo" and result.opset >= 18
    assert ort_vs_torch(result.path, model) <= 1e-5
    assert not (tmp_path / "model.onnx.data").exists()  # weights inline, no external data file


def test_simplify_failure_keeps_exported_graph(dense_models, tmp_path, monkeypatch):
    import onnxsim

    def broken(model, *a, **k):
        raise RuntimeError("simulated onnxsim crash")

    monkeypatch.setattr(onnxsim, "simplify", broken)
    result = export_onnx(dense_models["min"], tmp_path / "model.onnx")
    assert not result.simplified and "onnxsim failed" in result.simplify_note
    assert result.nodes_after == result.nodes_before
    assert ort_vs_torch(result.path, dense_models["min"]) <= 1e-5


def test_simplify_that_changes_outputs_is_rejected(dense_models, tmp_path, monkeypatch):
    import onnxsim

    real = onnxsim.simplify

    def wrong(model, *a, **k):  # a "simplification" that scales one weight: outputs change
        simplified, ok = real(model, *a, **k)
        head = next(t for t in simplified.graph.initializer if t.name == "head.weight")
        head.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(head) * 1.5, head.name))
        return simplified, ok

    monkeypatch.setattr(onnxsim, "simplify", wrong)
    result = export_onnx(dense_models["min"], tmp_path / "model.onnx")
    assert not result.simplified and "changed the outputs" in result.simplify_note
    assert result.max_abs_simplify > 1e-5 and result.max_abs_after <= 1e-5


def test_opset_below_17_is_refused(dense_models, tmp_path):
    with pytest.raises(ExportError, match="opset 16"):
        export_onnx(dense_models["min"], tmp_path / "model.onnx", opset=16)
    assert not any(tmp_path.iterdir())


def test_failed_export_leaves_no_files(dense_models, tmp_path, monkeypatch):
    def diverging(data, x):  # onnxruntime disagrees with torch: the export must not be written
        return np.zeros((len(x), 10), dtype=np.float32) + 1.0

    monkeypatch.setattr(onnx_export, "ort_outputs", diverging)
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="changed the outputs"):
        export_onnx(dense_models["min"], out / "model.onnx")
    assert not out.exists() or not any(out.iterdir())


def test_check_onnx_missing_file(tmp_path):
    with pytest.raises(ExportError, match="not found.*deploy-nas export"):
        check_onnx(tmp_path / "absent.onnx")


@pytest.mark.parametrize("content", [b"", b"\x08\x07garbage-not-a-protobuf\xff\xfe", "truncated"])
def test_check_onnx_corrupt_file(onnx_files, tmp_path, content):
    path = tmp_path / "model.onnx"
    data = onnx_files["min"].path.read_bytes()
    path.write_bytes(data[: len(data) // 3] if content == "truncated" else content)
    with pytest.raises(ExportError, match="not a valid ONNX model.*re-export") as info:
        check_onnx(path)
    assert "\n" not in str(info.value)


def test_sidecar_failure_removes_the_model(dense_models, tmp_path, monkeypatch):
    def disk_full(path, obj):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx_export, "write_json_atomic", disk_full)
    with pytest.raises(OSError):
        export_onnx(dense_models["min"], tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []  # neither model.onnx nor a temporary file
