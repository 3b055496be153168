"""Dense nn.Module -> model.onnx (+ model.onnx.json): export, normalize, check, simplify, each step proven by parity.

The graph is built in memory, normalized so that two exports of one model are byte-identical (doc strings and
metadata such as source stack traces dropped, deterministic serialization), checked, run with onnxruntime
against torch on a fixed random batch, simplified with onnxsim when that leaves the outputs unchanged, and only
then written: temp name + rename, then the JSON sidecar.
"""
from __future__ import annotations

import io
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deploy_nas.errors import ExportError
from deploy_nas.export.backends.base import INPUT_NAME, OUTPUT_NAME, default_threads
from deploy_nas.io import sha256_file, write_bytes_atomic, write_json_atomic

MIN_OPSET = 17  # LayerNormalization is one op from opset 17
DYNAMO_MIN_OPSET = 18  # the dynamo exporter builds at 18 and cannot down-convert these graphs
EXPORT_ATOL = 1e-4  # onnxruntime vs torch after export: beyond this the exporter broke the model
SIMPLIFY_ATOL = 1e-5  # onnxsim must not move any output by more than this
# onnxsim would turn every 3-D MatMul + Add into Reshape -> Gemm -> Reshape (its "batched" Gemm fusion, tuned
# for onnxruntime's CPU kernels); OpenVINO's int8 pipeline (LPT ReshapeTransformation, 2026.4) then fails to
# compile AutoFormer-T/S at 224 px. Linear layers stay MatMul + Add, which every backend fuses on its own.
SKIPPED_OPTIMIZERS = ["fuse_matmul_add_bias_into_gemm", "fuse_matmul_add_bias_into_gemm_batched"]
PARITY_BATCH, PARITY_SEED = 3, 0  # differs from the export example batch (2): proves the batch axis is dynamic


@dataclass(frozen=True)
class OnnxExportResult:
    path: Path
    sidecar: Path
    opset: int
    exporter: str  # "torchscript" | "dynamo"
    simplified: bool
    simplify_note: str
    max_abs_before: float  # onnxruntime (graph as exported) vs torch
    max_abs_after: float  # onnxruntime (graph as written) vs torch
    max_abs_simplify: float | None  # onnxsim's change to the outputs; None when it did not produce a graph
    nodes_before: int
    nodes_after: int
    sha256: str
    inputs: dict[str, list[int | str]]
    outputs: dict[str, list[int | str]]
    exported_from: dict[str, str] | None = None  # {file: sha256} of the model files it was exported from

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def graph_source(path: str | Path) -> dict[str, Any]:
    """What an engine built from the ONNX file `path` records of it (in build.json): its name and sha256, and the
    model files it was exported from when its sidecar names them, so the engine stays tied to them without it."""
    path = Path(path)
    source: dict[str, Any] = {"source": "onnx", "onnx": path.name, "onnx_sha256": sha256_file(path)}
    try:
        exported_from = json.loads(sidecar_path(path).read_text()).get("exported_from")
    except (OSError, ValueError, AttributeError):
        exported_from = None
    if isinstance(exported_from, dict):
        source["exported_from"] = exported_from
    return source


def input_shape(model: nn.Module) -> tuple[int, int, int]:
    """(C, H, W) of a dense model, from its spec."""
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ExportError(f"{type(model).__name__} has no .spec (img_size, in_chans); export a dense model "
                          "from deploy_nas.dense / materialize")
    return spec.in_chans, spec.img_size, spec.img_size


def fixed_batch(shape: tuple[int, int, int], batch: int = PARITY_BATCH, seed: int = PARITY_SEED) -> np.ndarray:
    """A seeded N(0, 1) float32 batch (the same on every machine)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *shape), generator=g).numpy()


def export_onnx(model: nn.Module, path: str | Path, opset: int = MIN_OPSET, dynamo: bool = False,
                simplify: bool = True, exported_from: dict[str, str] | None = None) -> OnnxExportResult:
    """Export `model` to `path` with input "input" (dynamic batch) and output "logits"; see the module doc.
    `exported_from` ({file: sha256} of the files `model` was loaded from) goes into the sidecar, so that a later
    step can tell the graph from a model changed since."""
    check_opset(opset, dynamo)
    if dynamo:
        opset = max(opset, DYNAMO_MIN_OPSET)  # it builds at 18 and cannot down-convert these graphs
    model = model.eval()
    shape = input_shape(model)
    proto = onnx_from_module(model, shape, opset, dynamo)
    x = fixed_batch(shape)
    reference = torch_outputs(model, x)
    before = max_abs(ort_outputs(serialize(proto), x), reference)
    if before > EXPORT_ATOL:
        raise ExportError(f"the {exporter_name(dynamo)} exporter changed the outputs: onnxruntime vs torch max abs "
                          f"{before:.3g} > {EXPORT_ATOL:g}; try the other exporter (dynamo={not dynamo})")
    final, note, change = simplify_onnx(proto, x) if simplify else (proto, "simplification not requested", None)
    add_class_names(final, model)
    data = serialize(final)
    after = max_abs(ort_outputs(data, x), reference)
    write_bytes_atomic(path, data)
    try:
        return _finish(final, proto, Path(path), dynamo, note, before, after, change, exported_from)
    except BaseException:
        Path(path).unlink(missing_ok=True)  # no model.onnx without its sidecar
        raise


def _finish(final: Any, proto: Any, path: Path, dynamo: bool, note: str, before: float, after: float,
            change: float | None, exported_from: dict[str, str] | None) -> OnnxExportResult:
    """The result for a written file, and its sidecar."""
    result = OnnxExportResult(
        path=path, sidecar=sidecar_path(path), opset=opset_of(final), exporter=exporter_name(dynamo),
        simplified=final is not proto, simplify_note=note, max_abs_before=before, max_abs_after=after,
        max_abs_simplify=change, nodes_before=len(proto.graph.node), nodes_after=len(final.graph.node),
        sha256=sha256_file(path), inputs=io_shapes(final.graph.input), outputs=io_shapes(final.graph.output),
        exported_from=exported_from)
    write_json_atomic(result.sidecar, sidecar(result))
    return result


def exporter_name(dynamo: bool) -> str:
    return "dynamo" if dynamo else "torchscript"


def onnx_from_module(model: nn.Module, shape: tuple[int, int, int], opset: int, dynamo: bool) -> Any:
    """The normalized, checked ModelProto of `model` (batch axis dynamic)."""
    import onnx

    device = next(model.parameters()).device
    example = torch.from_numpy(fixed_batch(shape, batch=2, seed=1)).to(device)
    try:
        with warnings.catch_warnings():
            for category in (torch.jit.TracerWarning, DeprecationWarning, FutureWarning, UserWarning):
                warnings.simplefilter("ignore", category)
            proto = _dynamo_export(model, example, opset) if dynamo else _torchscript_export(model, example, opset)
    except (RuntimeError, ValueError, TypeError) as err:
        raise ExportError(f"the {exporter_name(dynamo)} exporter failed: {str(err).splitlines()[0]}; "
                          f"try the other exporter (dynamo={not dynamo})") from err
    normalize(proto)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise ExportError(f"the exported graph fails onnx.checker: {str(err).splitlines()[0]}; "
                          f"try the other exporter (dynamo={not dynamo})") from err
    return proto


def _torchscript_export(model: nn.Module, example: torch.Tensor, opset: int) -> Any:
    import onnx

    buf = io.BytesIO()
    torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                      output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                      do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue())


def max_opset(dynamo: bool) -> int:
    """The highest opset the exporter writes (TorchScript: torch's own limit; dynamo: torch's ONNX_MAX_OPSET)."""
    from torch.onnx import _constants

    return _constants.ONNX_MAX_OPSET if dynamo else _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET


def check_opset(opset: int, dynamo: bool) -> None:
    low, high = MIN_OPSET, max_opset(dynamo)
    if not low <= opset <= high:
        raise ExportError(f"opset {opset} is outside what the {exporter_name(dynamo)} exporter writes here "
                          f"({low}..{high}; LayerNormalization needs >= {MIN_OPSET}); pick one in that range")


def _dynamo_export(model: nn.Module, example: torch.Tensor, opset: int) -> Any:
    import logging

    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    loggers = [logging.getLogger(n) for n in ("onnxscript", "torch.onnx", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)  # its progress and version-converter notes are not errors of this tool
    try:
        program = torch.onnx.export(model, (example,), None, dynamo=True, opset_version=opset,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=({0: batch},), external_data=False, optimize=True, verbose=False,
                                    report=False)
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    return program.model_proto


def normalize(proto: Any) -> None:
    """Drop what differs between two exports of one model: doc strings and metadata (stack traces, paths)."""
    del proto.metadata_props[:]
    proto.doc_string = ""
    graphs = [proto.graph] + [f for f in proto.functions]
    for g in graphs:
        g.doc_string = ""
        for seq in ("input", "output", "value_info", "initializer"):
            for item in getattr(g, seq, ()):
                del item.metadata_props[:]
        for node in g.node:
            node.doc_string = ""
            del node.metadata_props[:]
    del proto.graph.metadata_props[:]


CLASS_NAMES_KEY = "class_names"  # model metadata: a JSON list, the class name of each output index


def add_class_names(proto: Any, model: nn.Module) -> None:
    """The class names of a model trained on image folders (spec.json's source.trained_on) as the graph's
    `class_names` metadata, read by onnxruntime's `get_modelmeta().custom_metadata_map`; nothing otherwise."""
    names = getattr(getattr(model, "spec", None), "class_names", None)  # a module without a DenseSpec has none
    if names is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = CLASS_NAMES_KEY, json.dumps(names)


def serialize(proto: Any) -> bytes:
    return proto.SerializeToString(deterministic=True)


def simplify_onnx(proto: Any, x: np.ndarray) -> tuple[Any, str, float | None]:
    """(graph to keep, note, max abs change): onnxsim's graph only when it keeps the outputs and the batch axis."""
    import onnxsim

    try:
        simplified, ok = onnxsim.simplify(proto, skipped_optimizers=SKIPPED_OPTIMIZERS)
    except Exception as err:  # noqa: BLE001 -- onnxsim raises many types; any failure means "keep the original"
        note = f"onnxsim failed ({type(err).__name__}: {str(err).splitlines()[0]}); kept the exported graph"
        return proto, note, None
    if not ok:
        return proto, "onnxsim's own check failed; kept the exported graph", None
    normalize(simplified)
    change = max_abs(ort_outputs(serialize(simplified), x), ort_outputs(serialize(proto), x))
    if change > SIMPLIFY_ATOL:
        return proto, f"onnxsim changed the outputs by {change:.3g} > {SIMPLIFY_ATOL:g}; kept the exported graph", \
            change
    if not str(io_shapes(simplified.graph.input)[INPUT_NAME][0]).isidentifier():
        return proto, "onnxsim fixed the batch axis; kept the exported graph", change
    return simplified, f"onnxsim: {len(proto.graph.node)} -> {len(simplified.graph.node)} nodes", change


def torch_outputs(model: nn.Module, x: np.ndarray) -> np.ndarray:
    device = next(model.parameters()).device
    with torch.inference_mode():
        return model(torch.from_numpy(x).to(device)).float().cpu().numpy()


def ort_outputs(data: bytes, x: np.ndarray) -> np.ndarray:
    from deploy_nas.export.backends.ort import session_from_onnx

    session = session_from_onnx(data, default_threads())
    return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        raise ExportError(f"output shape {a.shape} differs from the reference {b.shape}; re-export the model")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def opset_of(proto: Any) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def io_shapes(values: Any) -> dict[str, list[int | str]]:
    """{name: [dim, ...]} with symbolic dims as their names."""
    return {v.name: [d.dim_param if d.dim_param else d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in values}


def sidecar(result: OnnxExportResult) -> dict[str, Any]:
    """The JSON written next to model.onnx."""
    import onnx
    import onnxruntime

    d = result.to_dict()
    d.pop("sidecar")
    d["path"] = result.path.name
    d["versions"] = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "onnxsim": _version("onnxsim")}
    return d


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def check_onnx(path: str | Path) -> Any:
    """Load and check an ONNX file; a missing or corrupt file raises ExportError that says how to fix it."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"ONNX file {path} not found; create it with `deploy-nas export` (or export_onnx)")
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except (DecodeError, onnx.checker.ValidationError, OSError, ValueError) as err:
        raise ExportError(f"{path} is not a valid ONNX model ({type(err).__name__}: "
                          f"{str(err).strip().splitlines()[0] if str(err).strip() else 'unreadable'}); "
                          "re-export it with `deploy-nas export`") from err
    return proto
