"""The reference Engine: the dense PyTorch model itself (CPU, or a CUDA device when asked)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deploy_nas.devices import resolve_device
from deploy_nas.errors import ExportError
from deploy_nas.export.backends.base import Backend, BuildConfig, Engine, usable_threads
from deploy_nas.export.backends.runner import Runner


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with `threads` intra-op threads (None: leave as is), restoring the old value after."""
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def ieee_fp32(device: torch.device) -> Iterator[None]:
    """fp32 means fp32 on CUDA too: TF32 off for matmuls and cuDNN convolutions (the patch embedding), which
    torch enables for convolutions by default and which rounds operands to 10 mantissa bits."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


class TorchEngine(Engine):
    """Wraps a dense nn.Module; inputs and outputs stay numpy float32."""

    name = "torch"

    def __init__(self, model: nn.Module, threads: int | None = None, device: str | None = None):
        self.device = resolve_device(device)
        self.model = model.to(self.device, torch.float32).eval()
        self.threads = usable_threads(threads) if threads is not None else None
        spec = getattr(model, "spec", None)
        self.input_shape = (spec.in_chans, spec.img_size, spec.img_size) if spec is not None else ()

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = torch.from_numpy(self._feed(feeds)).to(self.device)
        with torch_threads(self.threads), torch.inference_mode(), ieee_fp32(self.device):
            y = self.model(x)
        return {self.output_names[0]: y.float().cpu().numpy().copy()}

    def info(self) -> dict[str, Any]:
        return {**super().info(), "device": str(self.device), "torch": torch.__version__}

    def runner(self, x: np.ndarray, mode: str = "latency", requests: int | None = None,
               threads: int | None = None) -> Runner:
        """Input tensor placed on the device once; threads set for the runner's lifetime."""
        threads = threads or self.threads
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)

        def step() -> None:
            with torch.inference_mode(), ieee_fp32(self.device):
                self.model(xt)
            sync()

        return _TorchRunner(len(x), step, threads, {"runner": "torch", "device": str(self.device)})


class _TorchRunner(Runner):
    def __init__(self, batch: int, step: Any, threads: int | None, info: dict[str, Any]):
        super().__init__(batch, step, {**info, "threads": threads or torch.get_num_threads()})
        self._threads = contextlib.ExitStack()
        self._threads.enter_context(torch_threads(threads))

    def close(self) -> None:
        self._threads.close()


class TorchBackend(Backend):
    """`build` takes a dense model directory (spec.json + weights.safetensors), not an ONNX file."""

    name = "torch"
    precisions = ("fp32",)

    def build(self, onnx_path: str | Path, config: BuildConfig) -> TorchEngine:
        from deploy_nas.dense import load_dense

        config = self.check(config)
        source = Path(onnx_path)
        if source.suffix == ".onnx" or not source.is_dir():
            raise ExportError(f"the torch backend builds from a dense model directory (spec.json + "
                              f"weights.safetensors), got {source}; pass the directory `deploy-nas extract` wrote")
        return TorchEngine(load_dense(source), threads=config.threads, device=config.device)
