"""OpenVINO on CPU: IR from the ONNX file (or, as a cross-check, straight from the nn.Module), fp32 / fp16 / int8.

* fp32: IR saved with `compress_to_fp16=False`, compiled with INFERENCE_PRECISION_HINT=f32 (the CPU plugin would
  otherwise run bf16 on AMX/AVX512-BF16 hosts).
* fp16: IR saved with fp16-compressed weights, compiled with the f16 hint where the CPU lists FP16 among its
  optimization capabilities, else f32 (the hint actually used is recorded).
* int8: NNCF post-training quantization (model_type=TRANSFORMER) calibrated on images from calib_dir or the
  embedded set; SmoothQuant is tried on and off unless BuildConfig.smooth_quant fixes it, and the variant closer
  to fp32 on the calibration batch is kept (on small untrained ViTs SmoothQuant costs accuracy, on trained ones
  with outlier channels it helps). Compiled with the f32 hint so that only the quantization differs from fp32.

Artifacts: out_dir/openvino/<precision>/{model.xml, model.bin, build.json}, written atomically.
"""
from __future__ import annotations

import functools
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from deploy_nas.errors import ExportError, brief, reraise_if_stopped
from deploy_nas.export.backends.base import BUILD_JSON, INPUT_NAME, OUTPUT_NAME, Backend, BuildConfig, Engine
from deploy_nas.export.backends.runner import Runner

XML = "model.xml"


@functools.lru_cache(maxsize=1)
def ov_core() -> Any:
    import openvino as ov

    return ov.Core()


def ir_from_onnx(onnx_path: str | Path) -> Any:
    """An ov.Model read from the ONNX file (input "input", output "logits", dynamic batch), its constant-index
    GatherElements rewritten as Gathers (`gathers_from_constant_indices`)."""
    import openvino as ov

    from deploy_nas.export.onnx import check_onnx

    check_onnx(onnx_path)
    try:
        model = ov.convert_model(str(onnx_path))
    except RuntimeError as err:
        raise ExportError(f"openvino cannot convert {onnx_path}: {ov_cause(err)}; "
                          "re-export the ONNX file") from err
    gathers_from_constant_indices(model)
    return model


def gathers_from_constant_indices(model: Any) -> int:
    """Rewrite every GatherElements along the last axis whose indices are a constant (N, F) table broadcast over
    the leading axes (AutoFormer's compact relative-position lowering has two per layer) as Reshape(data, [..., -1])
    + Gather(flat indices) on the flattened last two axes: the same elements in the same order. OpenVINO's CPU
    plugin runs GatherElements with its reference kernel and Gather with a JIT one (onnxruntime is the other way
    around, which is why the ONNX file keeps GatherElements). Returns the number of nodes rewritten."""
    from openvino import opset13 as ops

    done = 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "GatherElements":
            continue
        data, source = node.input_value(0), node.input_value(1).get_node()
        shape = data.get_partial_shape()
        rank = shape.rank.get_length() if shape.rank.is_static else 0
        axis = node.get_attributes()["axis"] % max(rank, 1)
        if source.get_type_name() == "Broadcast":
            source = source.input_value(0).get_node()
        if rank < 2 or axis != rank - 1 or source.get_type_name() != "Constant" or \
                not (shape[rank - 2].is_static and shape[rank - 1].is_static):
            continue
        table = np.asarray(source.get_data())
        rows, width = shape[rank - 2].get_length(), shape[rank - 1].get_length()
        if table.ndim < 2 or table.shape[-2] != rows or any(d != 1 for d in table.shape[:-2]) or \
                table.size == 0 or table.min() < 0 or table.max() >= width:
            continue
        table = table.reshape(table.shape[-2:]).astype(np.int64)
        flat = ops.reshape(data, ops.constant(np.array([0] * (rank - 2) + [-1], np.int64)), special_zero=True)
        gather = ops.gather(flat, ops.constant(table + width * np.arange(rows)[:, None]),
                            ops.constant(np.int64(rank - 2)))
        gather.set_friendly_name(node.get_friendly_name())
        node.output(0).replace(gather.output(0))
        done += 1
    if done:
        model.validate_nodes_and_infer_types()
    return done


def ir_from_module(model: Any) -> Any:
    """An ov.Model converted straight from the dense nn.Module (a cross-check of the ONNX path)."""
    import openvino as ov
    import torch

    from deploy_nas.export.onnx import fixed_batch, input_shape

    shape = input_shape(model)
    example = torch.from_numpy(fixed_batch(shape, batch=2, seed=1))
    with warnings.catch_warnings():
        for category in (torch.jit.TracerWarning, DeprecationWarning, FutureWarning, UserWarning):
            warnings.simplefilter("ignore", category)
        try:
            ov_model = ov.convert_model(model.eval().cpu(), example_input=example)
        except Exception as err:  # RuntimeError, TypeError, its own OpConversionFailure (an Exception, no more)
            reraise_if_stopped(err)  # Ctrl-C / SIGTERM while it traced the module: it wraps the interrupt too
            raise ExportError(f"openvino cannot convert the module: {ov_cause(err)}; "
                              "use the ONNX path (build from model.onnx)") from err
    ov_model.reshape({0: ov.PartialShape([-1, *shape])})
    gathers_from_constant_indices(ov_model)
    ov_model.inputs[0].get_tensor().set_names({INPUT_NAME})
    ov_model.outputs[0].get_tensor().set_names({OUTPUT_NAME})
    return ov_model


def model_shape(ov_model: Any) -> tuple[int, int, int]:
    """(C, H, W) of the single input; the batch axis may be dynamic, the rest must be static."""
    dims = ov_model.inputs[0].get_partial_shape()
    if len(dims) != 4 or not all(d.is_static for d in list(dims)[1:]):
        raise ExportError(f"openvino model input has shape {dims}; expected (batch, C, H, W) with static C, H, W")
    return tuple(d.get_length() for d in list(dims)[1:])


def fp16_supported() -> bool:
    return "FP16" in ov_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def precision_hint(precision: str) -> tuple[str, str]:
    """(INFERENCE_PRECISION_HINT, why) for a build precision."""
    if precision == "fp16":
        if fp16_supported():
            return "f16", "CPU lists FP16 among its optimization capabilities"
        return "f32", "CPU has no FP16 capability: fp16 weights, f32 compute"
    if precision == "int8":
        return "f32", "non-quantized ops in f32 so that only the int8 quantization differs from fp32"
    return "f32", "pinned to f32: the CPU default may be bf16"


def compile_ir(model: Any, hint: str, threads: int, mode: str = "LATENCY") -> Any:
    """Compile an ov.Model or an IR path for CPU with explicit precision hint, threads and performance hint."""
    props = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": mode}
    try:
        return ov_core().compile_model(str(model) if isinstance(model, Path) else model, "CPU", props)
    except RuntimeError as err:
        raise ExportError(f"openvino cannot compile the model: {ov_cause(err)}; "
                          "re-export the ONNX file or rebuild the IR") from err


def ov_cause(err: BaseException) -> str:
    """The informative part of an OpenVINO error (its first lines only name the C++ source files it passed)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip() and not ln.startswith("Exception from ")]
    return brief(" ".join(lines) or str(err), 300).strip("'\"")


class OpenVinoEngine(Engine):
    """A compiled model with one InferRequest; `runner()` gives benchmark_app-style timing loops."""

    name = "openvino"

    def __init__(self, xml: Path, precision: str, hint: str, threads: int, meta: dict[str, Any] | None = None,
                 tmp: tempfile.TemporaryDirectory | None = None):
        self.xml, self.precision, self.hint, self.threads = xml, precision, hint, threads
        self.meta = dict(meta or {})
        self._tmp = tmp
        self._compiled: dict[str, Any] = {}
        self.compiled = self.compiled_for("LATENCY")
        self.request = self.compiled.create_infer_request()
        self.input_name = self.compiled.inputs[0].get_any_name()
        self.output_names = tuple(o.get_any_name() for o in self.compiled.outputs)
        self.input_shape = tuple(d.get_length() for d in list(self.compiled.inputs[0].get_partial_shape())[1:])

    def compiled_for(self, mode: str, shape: tuple[int, ...] | None = None) -> Any:
        """The compiled model for PERFORMANCE_HINT `mode` ("LATENCY" | "THROUGHPUT"), compiled once per shape.

        With `shape`, the IR is reshaped to that static input shape first, as benchmark_app's `-shape` does: a
        static graph lets the CPU plugin plan its memory and kernels once instead of on every call."""
        key = (mode, shape)
        if key not in self._compiled:
            model: Any = self.xml
            if shape is not None:
                model = ov_core().read_model(str(self.xml))
                model.reshape({0: list(shape)})
            self._compiled[key] = compile_ir(model, self.hint, self.threads, mode)
        return self._compiled[key]

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.request.infer({0: self._feed(feeds)})
        return {n: self.request.get_output_tensor(i).data.copy() for i, n in enumerate(self.output_names)}

    def info(self) -> dict[str, Any]:
        c = self.compiled
        return {**super().info(), "xml": str(self.xml),
                "precision_hint": c.get_property("INFERENCE_PRECISION_HINT").to_string(),
                "performance_hint": str(c.get_property("PERFORMANCE_HINT")),
                "inference_num_threads": int(c.get_property("INFERENCE_NUM_THREADS")), **self.meta}

    def runner(self, x: np.ndarray, mode: str = "latency", requests: int | None = None,
               threads: int | None = None) -> Runner:
        """latency: one InferRequest, input tensor set once, start_async + wait per step; throughput: an
        AsyncInferQueue."""
        import openvino as ov

        self._check_threads(threads)
        x = np.ascontiguousarray(x, dtype=np.float32)
        if mode == "throughput":
            return OpenVinoAsyncRunner(self.compiled_for("THROUGHPUT", x.shape), x, requests, self.hint)
        request = self.compiled_for("LATENCY", x.shape).create_infer_request()
        request.set_input_tensor(ov.Tensor(x))

        def step() -> None:  # what benchmark_app does: no output dict built per call, unlike infer()
            request.start_async()
            request.wait()

        return Runner(len(x), step, {"runner": "openvino-request", "precision_hint": self.hint,
                                     "performance_hint": "LATENCY", "requests": 1, "static_shape": list(x.shape)})

    def op_profile(self, x: np.ndarray) -> list:
        """OpenVINO's performance counters (PERF_COUNT) on a separate compile at the static shape of `x`: executed
        nodes by type, real time per inference."""
        import openvino as ov

        from deploy_nas.export.profile import PROFILE_RUNS, PROFILE_WARMUP, summarize

        model = ov_core().read_model(str(self.xml))
        model.reshape({0: list(x.shape)})
        props = {"INFERENCE_PRECISION_HINT": self.hint, "INFERENCE_NUM_THREADS": int(self.threads),
                 "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True}
        request = ov_core().compile_model(model, "CPU", props).create_infer_request()
        request.set_input_tensor(ov.Tensor(np.ascontiguousarray(x, dtype=np.float32)))
        samples = []
        for i in range(PROFILE_WARMUP + PROFILE_RUNS):
            request.infer()
            if i >= PROFILE_WARMUP:
                samples += [(p.node_type, p.node_name, p.real_time.total_seconds() * 1e3)
                            for p in request.profiling_info if p.status == ov.ProfilingInfo.Status.EXECUTED]
        return summarize(samples, PROFILE_RUNS)

    def close(self) -> None:
        self._compiled.clear()
        self.request = self.compiled = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class OpenVinoAsyncRunner(Runner):
    """`requests` InferRequests in flight (default: the plugin's optimal number), each with its input set once."""

    asynchronous = True

    def __init__(self, compiled: Any, x: np.ndarray, requests: int | None, hint: str):
        import openvino as ov

        jobs = requests or int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.queue = ov.AsyncInferQueue(compiled, jobs)
        for request in self.queue:
            request.set_input_tensor(ov.Tensor(x.copy()))
        self._latencies: list[float] = []
        self.queue.set_callback(lambda request, _: self._latencies.append(float(request.latency)))
        super().__init__(len(x), self._one, {"runner": "openvino-async", "requests": jobs, "precision_hint": hint,
                                             "performance_hint": "THROUGHPUT"})

    def _one(self) -> None:
        self.queue.start_async()
        self.queue.wait_all()

    def run_async(self, n: int) -> tuple[int, list[float]]:
        self._latencies.clear()
        start = time.perf_counter_ns()
        for _ in range(n):
            self.queue.start_async()
        self.queue.wait_all()
        return time.perf_counter_ns() - start, list(self._latencies)


class OpenVinoBackend(Backend):
    name = "openvino"
    precisions = ("fp32", "fp16", "int8")
    runtime, install = "openvino", "pip install deploy-nas[openvino]"

    def build(self, onnx_path: str | Path, config: BuildConfig) -> OpenVinoEngine:
        config = self.check(config)
        from deploy_nas.export.onnx import graph_source

        return self.engine_from_ir(ir_from_onnx(onnx_path), config, graph_source(onnx_path))

    def build_from_module(self, model: Any, config: BuildConfig) -> OpenVinoEngine:
        """Same engine, IR converted from the nn.Module (artifacts under out_dir/openvino-module/<precision>)."""
        config = self.check(config)
        return self.engine_from_ir(ir_from_module(model), config, {"source": "module"}, subdir="openvino-module")

    def engine_from_ir(self, ov_model: Any, config: BuildConfig, source: dict[str, Any],
                       subdir: str = "openvino") -> OpenVinoEngine:
        """Apply the precision, save the IR (atomically, or to a temp dir), compile it."""
        hint, why = precision_hint(config.precision)
        meta: dict[str, Any] = {**source, "hint_reason": why, "compress_to_fp16": config.precision == "fp16"}
        if config.precision == "int8":
            from deploy_nas.export.backends.openvino_int8 import quantize_int8

            ov_model, int8_meta = quantize_int8(ov_model, config)
            meta["int8"] = int8_meta
        out = None if config.out_dir is None else Path(config.out_dir) / subdir / config.precision
        from deploy_nas.io import temp_dir

        tmp = temp_dir("openvino") if out is None else None
        record = save_ir(ov_model, out or Path(tmp.name) / "ir", config, hint, meta)
        xml = (out or Path(tmp.name) / "ir") / XML
        return OpenVinoEngine(xml, config.precision, hint, config.threads, meta if out is None else record, tmp)

    def load(self, artifact_dir: str | Path, config: BuildConfig) -> OpenVinoEngine:
        """Compile a saved IR: `artifact_dir` is the <precision> directory or the out_dir above it."""
        config = self.check(config)
        d, meta = self.saved_artifacts(artifact_dir, config, XML)
        hint, why = precision_hint(meta["precision"])  # of the precision on this CPU, never build.json's word for it
        meta = {**meta, "precision_hint": hint, "hint_reason": why}
        return OpenVinoEngine(d / XML, meta["precision"], hint, config.threads, meta)


def save_ir(ov_model: Any, out: Path, config: BuildConfig, hint: str, meta: dict[str, Any]) -> dict[str, Any]:
    """model.xml/.bin + build.json in `out`, replaced as a whole; returns what build.json records (a saved
    engine's `meta`, as `load` reads it back: its files' sha256 tie parity and bench rows to this very build)."""
    import openvino as ov

    from deploy_nas.export.report import versions
    from deploy_nas.io import atomic_dir, library_write, sha256_file, write_json_atomic

    with atomic_dir(out, force=True) as tmp:
        with library_write(tmp / XML):
            ov.save_model(ov_model, str(tmp / XML), compress_to_fp16=config.precision == "fp16")
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        record = {"backend": "openvino", "precision": config.precision, "precision_hint": hint,
                  "config": config.build_record(), "files": files, "versions": versions(("openvino", "nncf")), **meta}
        write_json_atomic(tmp / BUILD_JSON, record)
    return record
