"""ONNX Runtime on CPU: fp32, explicit thread counts, sequential execution."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deploy_nas.errors import ExportError
from deploy_nas.export.backends.base import Backend, BuildConfig, Engine


def ort_errors() -> tuple[type[BaseException], ...]:
    """The exception classes onnxruntime raises (they do not share a base below Exception)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception))


def session_options(threads: int) -> Any:
    """Deterministic, explicitly sized CPU session options."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


def session_from_onnx(model: str | Path | bytes, threads: int) -> Any:
    """A CPUExecutionProvider session from a path or serialized bytes."""
    import onnxruntime as ort

    source = str(model) if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(source, session_options(threads), providers=["CPUExecutionProvider"])
    except ort_errors() as err:
        where = model if not isinstance(model, bytes) else "the ONNX graph"
        raise ExportError(f"onnxruntime cannot load {where}: {str(err).splitlines()[0]}; "
                          "re-export it with `deploy-nas export`") from err


class OrtEngine(Engine):
    name = "onnxruntime"

    def __init__(self, session: Any, threads: int, source: str = ""):
        self.session = session
        self.threads = threads
        self.source = source
        self.input_name = session.get_inputs()[0].name
        self.output_names = tuple(o.name for o in session.get_outputs())
        self.input_shape = tuple(d for d in session.get_inputs()[0].shape[1:] if isinstance(d, int))

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(list(self.output_names), {self.input_name: self._feed(feeds)})
        return dict(zip(self.output_names, outs))

    def info(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {**super().info(), "provider": "CPUExecutionProvider", "inter_op_threads": 1,
                "execution_mode": "sequential", "source": self.source, "onnxruntime": ort.__version__}

    def op_profile(self, x: np.ndarray) -> list:
        """onnxruntime's profiler on a separate session (its profile file lives in a temporary directory)."""
        import onnxruntime as ort

        from deploy_nas.export.profile import PROFILE_RUNS, PROFILE_WARMUP, onnxruntime_events, summarize
        from deploy_nas.io import temp_dir

        with temp_dir("ort-profile") as tmp:
            options = session_options(self.threads)
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(tmp) / "profile")
            session = ort.InferenceSession(self.source, options, providers=["CPUExecutionProvider"])
            feeds = {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}
            for _ in range(PROFILE_WARMUP + PROFILE_RUNS):
                session.run(None, feeds)
            events = onnxruntime_events(session.end_profiling())
        start = len(events) // (PROFILE_WARMUP + PROFILE_RUNS) * PROFILE_WARMUP  # every run logs the same nodes
        return summarize(events[start:], PROFILE_RUNS)

    def close(self) -> None:
        self.session = None


class OrtBackend(Backend):
    name = "onnxruntime"
    precisions = ("fp32",)
    runtime, install = "onnxruntime", "pip install onnxruntime"

    def build(self, onnx_path: str | Path, config: BuildConfig) -> OrtEngine:
        from deploy_nas.export.onnx import check_onnx

        config = self.check(config)
        check_onnx(onnx_path)
        return OrtEngine(session_from_onnx(Path(onnx_path), config.threads), config.threads, str(onnx_path))
