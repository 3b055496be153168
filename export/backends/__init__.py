"""Backends behind one interface, registered by name, imported lazily.

`BACKENDS` maps a name to the dotted path of its class; the class (and, inside its methods, the runtime it
wraps) is imported only when asked for, so `import deploy_nas.export.backends` needs none of onnxruntime,
openvino or tensorrt.
"""
from __future__ import annotations

import importlib

from deploy_nas.export.backends.base import (
    PRECISIONS,
    Backend,
    BuildConfig,
    Engine,
    UnknownBackend,
    UnsupportedPrecision,
    default_threads,
)
from deploy_nas.registry import Registry

BACKENDS: Registry[str] = Registry("backend", UnknownBackend)
BACKENDS.register("torch", "deploy_nas.export.backends.torch_backend:TorchBackend")
BACKENDS.register("onnxruntime", "deploy_nas.export.backends.ort:OrtBackend")
BACKENDS.register("openvino", "deploy_nas.export.backends.openvino_backend:OpenVinoBackend")
BACKENDS.register("tensorrt", "deploy_nas.export.backends.tensorrt_backend:TensorRTBackend")


def backend_class(name: str) -> type[Backend]:
    """The class registered as `name` (unknown names raise UnknownBackend listing the choices)."""
    module, _, attr = BACKENDS.get(name).partition(":")
    return getattr(importlib.import_module(module), attr)


def get_backend(name: str) -> Backend:
    """A fresh instance of the backend registered as `name`."""
    return backend_class(name)()


def available_backends() -> list[str]:
    """Registered backends that can run on this machine now."""
    return [n for n in BACKENDS.names() if backend_class(n).unavailable_reason() is None]


def backends_for_precision(precision: str) -> list[str]:
    """Registered backends that can build `precision` (installed or not)."""
    return [n for n in BACKENDS.names() if precision in backend_class(n).precisions]


__all__ = ["BACKENDS", "PRECISIONS", "Backend", "BuildConfig", "Engine", "UnknownBackend", "UnsupportedPrecision",
           "available_backends", "backend_class", "backends_for_precision", "default_threads", "get_backend"]
