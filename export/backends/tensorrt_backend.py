"""TensorRT 10/11 on a CUDA GPU: strongly typed networks from ONNX, one optimization profile for the batch axis.

Precision comes from the graph (TensorRT 11 has no precision builder flags): fp32 builds the ONNX file as is
(TF32 cleared where the flag exists), fp16 first rewrites it with `onnx_fp16.fp16_from_fp32` (LayerNorm, Softmax
and reductions stay fp32). int8 would need explicit Q/DQ nodes and is not built here.
Artifacts: out_dir/tensorrt/<precision>/{model.engine, build.json}; the timing cache is out_dir/tensorrt/timing.cache.
Runtime: execute_async_v3 with torch CUDA tensors as the I/O buffers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deploy_nas.errors import ExportError
from deploy_nas.export.backends.base import BUILD_JSON, Backend, BuildConfig, Engine
from deploy_nas.export.backends.runner import Runner

ENGINE_FILE, CACHE_FILE = "model.engine", "timing.cache"


def _trt() -> Any:
    import tensorrt as trt

    return trt


def logger() -> Any:
    trt = _trt()
    return trt.Logger(trt.Logger.WARNING)


def network_flags() -> int:
    """STRONGLY_TYPED where the enum has it (TensorRT 10); TensorRT 11 networks are always strongly typed."""
    flag = getattr(_trt().NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def torch_dtype(trt_dtype: Any) -> Any:
    import torch

    trt = _trt()
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32,
             trt.DataType.INT8: torch.int8, trt.DataType.BOOL: torch.bool}
    for name, dtype in (("INT64", torch.int64), ("BF16", torch.bfloat16)):
        if hasattr(trt.DataType, name):
            table[getattr(trt.DataType, name)] = dtype
    return table[trt_dtype]


def onnx_for_precision(onnx_path: str | Path, precision: str) -> tuple[bytes, tuple[int, ...]]:
    """(serialized ONNX to parse, one sample's input shape); fp16 rewritten to a mixed-precision graph."""
    from deploy_nas.export.onnx import check_onnx, io_shapes, serialize
    from deploy_nas.export.onnx_fp16 import fp16_from_fp32

    proto = check_onnx(onnx_path)
    dims = next(iter(io_shapes(proto.graph.input).values()))[1:]
    if not all(isinstance(d, int) and d > 0 for d in dims):
        raise ExportError(f"{onnx_path} input has non-static sample dims {dims}; export with a fixed image size")
    if precision == "fp16":
        proto = fp16_from_fp32(proto)
    return serialize(proto), tuple(dims)


def serialized_engine(onnx_bytes: bytes, shape: tuple[int, ...], config: BuildConfig,
                      cache: bytes = b"") -> tuple[bytes, bytes]:
    """(engine plan, updated timing cache) for batch sizes 1 / opt_batch / max_batch."""
    trt = _trt()
    log = logger()
    builder = trt.Builder(log)
    network = builder.create_network(network_flags())
    parser = trt.OnnxParser(network, log)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse the ONNX graph: {errors}; re-export with another opset/exporter")
    bconfig = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape(network.get_input(0).name, (1, *shape), (config.opt_batch, *shape), (config.max_batch, *shape))
    bconfig.add_optimization_profile(profile)
    if config.precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        bconfig.clear_flag(trt.BuilderFlag.TF32)
    bconfig.set_timing_cache(bconfig.create_timing_cache(cache), False)
    plan = builder.build_serialized_network(network, bconfig)
    if plan is None:
        raise ExportError("TensorRT failed to build the engine (see its log above); try a smaller max_batch or fp32")
    return bytes(plan), bytes(bconfig.get_timing_cache().serialize())


class TensorRTEngine(Engine):
    """A deserialized engine with one execution context and its own CUDA stream."""

    name = "tensorrt"

    def __init__(self, plan: bytes, precision: str, device: str = "cuda:0", meta: dict[str, Any] | None = None):
        import torch

        trt = _trt()
        self.device = torch.device(device)
        self.precision, self.meta = precision, dict(meta or {})
        with torch.cuda.device(self.device):
            self.runtime = trt.Runtime(logger())
            self.engine = self.runtime.deserialize_cuda_engine(plan)
            if self.engine is None:
                raise ExportError("TensorRT cannot deserialize the engine (built by another version or GPU?); "
                                  "rebuild it")
            self.context = self.engine.create_execution_context()
            self.stream = torch.cuda.Stream(self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.input_name = inputs[0]
        self.output_names = tuple(n for n in names if n not in inputs)
        self.input_shape = tuple(self.engine.get_tensor_shape(self.input_name))[1:]

    def bind(self, x: Any) -> dict[str, Any]:
        """Point the context at device tensor `x` and fresh output tensors; returns the outputs."""
        import torch

        self.context.set_input_shape(self.input_name, tuple(x.shape))
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        outs = {}
        for n in self.output_names:
            dtype = torch_dtype(self.engine.get_tensor_dtype(n))
            outs[n] = torch.empty(tuple(self.context.get_tensor_shape(n)), dtype=dtype, device=self.device)
            self.context.set_tensor_address(n, outs[n].data_ptr())
        return outs

    def execute(self) -> None:
        """Run the bound tensors on this engine's stream and wait for it."""
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise ExportError("TensorRT execute_async_v3 failed (see its log); check the input shape against the "
                              "profile")
        self.stream.synchronize()

    def device_input(self, x: np.ndarray) -> Any:
        import torch

        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        torch.cuda.current_stream(self.device).synchronize()  # the copy ran on the default stream
        return t

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = self.device_input(self._feed(feeds))
        outs = self.bind(x)
        self.execute()
        return {n: t.float().cpu().numpy() for n, t in outs.items()}

    def runner(self, x: np.ndarray, mode: str = "latency", requests: int | None = None,
               threads: int | None = None) -> Runner:
        """Buffers allocated and bound once; each step is one execute_async_v3 + stream sync (no H2D/D2H)."""
        xt = self.device_input(x)
        keep = self.bind(xt)
        return Runner(len(x), lambda: (self.execute(), keep), {"runner": "tensorrt", "device": str(self.device),
                                                               "requests": 1, "transfers": "excluded"})

    def info(self) -> dict[str, Any]:
        return {**super().info(), "device": str(self.device), **self.meta}

    def close(self) -> None:
        self.context = self.engine = self.runtime = None


class TensorRTBackend(Backend):
    name = "tensorrt"
    precisions = ("fp32", "fp16")
    runtime, install = "tensorrt", "pip install deploy-nas[tensorrt]"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        reason = super().unavailable_reason()
        if reason is not None:
            return reason
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU: torch.cuda.is_available() is False"
        return None

    def build(self, onnx_path: str | Path, config: BuildConfig) -> TensorRTEngine:
        import torch

        config = self.check(config)
        device = config.device or "cuda:0"
        onnx_bytes, shape = onnx_for_precision(onnx_path, config.precision)
        cache_path = None if config.out_dir is None else Path(config.out_dir) / self.name / CACHE_FILE
        cache = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
        with torch.cuda.device(torch.device(device)):
            plan, cache = serialized_engine(onnx_bytes, shape, config, cache)
        from deploy_nas.export.onnx import graph_source

        meta = {**graph_source(onnx_path), "strongly_typed": True, "profile": [1, config.opt_batch, config.max_batch],
                "tf32": config.precision != "fp32", "gpu": torch.cuda.get_device_name(torch.device(device))}
        if cache_path is not None:
            meta = save_engine(plan, cache, cache_path, self.artifact_dir(config), config, meta)
        return TensorRTEngine(plan, config.precision, device, meta)

    def load(self, artifact_dir: str | Path, config: BuildConfig) -> TensorRTEngine:
        config = self.check(config)
        d, meta = self.saved_artifacts(artifact_dir, config, ENGINE_FILE)
        return TensorRTEngine((d / ENGINE_FILE).read_bytes(), meta["precision"], config.device or "cuda:0", meta)


def save_engine(plan: bytes, cache: bytes, cache_path: Path, out: Path, config: BuildConfig,
                meta: dict[str, Any]) -> dict[str, Any]:
    """model.engine + build.json (one directory, replaced atomically) and the shared timing cache; returns what
    build.json records (the saved engine's `meta`, as `load` reads it back)."""
    from deploy_nas.export.report import versions
    from deploy_nas.io import atomic_dir, sha256_file, write_bytes_atomic, write_json_atomic

    with atomic_dir(out, force=True) as tmp:
        (tmp / ENGINE_FILE).write_bytes(plan)
        record = {"backend": "tensorrt", "precision": config.precision, "config": config.build_record(),
                  "files": {ENGINE_FILE: sha256_file(tmp / ENGINE_FILE)}, "versions": versions(("tensorrt", "torch")),
                  **meta}
        write_json_atomic(tmp / BUILD_JSON, record)
    write_bytes_atomic(cache_path, cache)
    return record
