"""One interface for every backend: BuildConfig -> Backend.build(onnx_path, config) -> Engine.infer(feeds).

Backends import their runtime (onnxruntime, openvino, tensorrt) inside methods, never at module level, so that
`unavailable_reason()` can answer on a machine that lacks it.
"""
from __future__ import annotations

import abc
import importlib
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from deploy_nas.errors import BackendUnavailable, DeployNASError, ExportError, brief, command
from deploy_nas.export.backends.runner import Runner, infer_runner

PRECISIONS = ("fp32", "fp16", "int8")
INPUT_NAME, OUTPUT_NAME = "input", "logits"
BUILD_JSON = "build.json"  # the sidecar of every saved engine


class UnknownBackend(DeployNASError, LookupError):
    """A backend name that is not registered."""


class UnsupportedPrecision(ExportError, ValueError):
    """A precision that does not exist, or that the chosen backend cannot build."""


def default_threads() -> int:
    """CPU threads to use when none are given: the cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def usable_threads(requested: int | None) -> int:
    """`requested` capped at the cores this process may use (more threads than cores only adds contention, and a
    row recorded with 1000 threads on 2 cores would misdescribe the measurement); None: all of them."""
    return min(requested, default_threads()) if requested else default_threads()


@dataclass(frozen=True)
class BuildConfig:
    """How to build an engine. `None` means the default, resolved once by `resolved()`."""

    precision: str = "fp32"
    threads: int | None = None
    max_batch: int = 32
    opt_batch: int = 8
    calib_dir: Path | None = None
    calib_size: int = 64
    out_dir: Path | None = None
    device: str | None = None  # None: the backend's own default (cpu; cuda:0 for tensorrt)
    smooth_quant: bool | None = None  # int8 only; None: try with and without, keep the closer to fp32

    def validate(self) -> BuildConfig:
        if self.precision not in PRECISIONS:
            raise UnsupportedPrecision(f"unknown precision {brief(self.precision)}; choose one of: "
                                       f"{', '.join(PRECISIONS)}")
        if self.threads is not None and self.threads < 1:
            raise ExportError(f"threads must be >= 1, got {self.threads}; pass a positive number or leave it unset")
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ExportError(f"need 1 <= opt_batch <= max_batch, got opt_batch={self.opt_batch}, "
                              f"max_batch={self.max_batch}; fix the batch sizes")
        if self.calib_size < 1:
            raise ExportError(f"calib_size must be >= 1, got {self.calib_size}")
        return self

    def resolved(self) -> BuildConfig:
        """Validated, with paths as Path and threads filled in."""
        self.validate()
        return replace(self, threads=usable_threads(self.threads),
                       calib_dir=Path(self.calib_dir) if self.calib_dir is not None else None,
                       out_dir=Path(self.out_dir) if self.out_dir is not None else None)

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    def build_record(self) -> dict[str, Any]:
        """The settings a saved engine's build.json records: all but out_dir (where it was written, often a
        temporary directory renamed since; build.json sits in the engine's directory)."""
        return {k: v for k, v in self.to_dict().items() if k != "out_dir"}


class Engine(abc.ABC):
    """A built artifact that maps numpy feeds to numpy outputs. Use as a context manager."""

    name: str = "engine"
    precision: str = "fp32"
    input_name: str = INPUT_NAME
    output_names: tuple[str, ...] = (OUTPUT_NAME,)
    input_shape: tuple[int, ...] = ()  # one sample's (C, H, W); the batch axis is dynamic
    threads: int | None = None

    @abc.abstractmethod
    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; outputs are fresh arrays the caller may keep."""

    def info(self) -> dict[str, Any]:
        """What a report should record about this engine (hints, threads, device, artifacts)."""
        return {"backend": self.name, "precision": self.precision, "threads": self.threads}

    def runner(self, x: np.ndarray, mode: str = "latency", requests: int | None = None,
               threads: int | None = None) -> Runner:
        """A runner that times `x` repeatedly; threads are fixed at build time except for torch."""
        self._check_threads(threads)
        return infer_runner(self, x)

    def op_profile(self, x: np.ndarray) -> list | None:
        """Per-op-type time from the runtime's own profiler (a list of export.profile.OpTime), or None where the
        runtime has none; a separate run, never mixed into the timed ones."""
        return None

    def close(self) -> None:  # noqa: B027 (a hook: engines without resources need not override it)
        """Release runtime resources; safe to call twice."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_threads(self, threads: int | None) -> None:
        if threads is not None and self.threads is not None and threads != self.threads:
            raise ExportError(f"the {self.name} engine was built for {self.threads} threads, not {threads}; "
                              f"rebuild it with BuildConfig(threads={threads})")

    def _feed(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The single float32 input, with a typed error when it is missing."""
        if self.input_name not in feeds:
            raise ExportError(f"{self.name} engine expects input {self.input_name!r}, got {sorted(feeds)}; "
                              f"pass {{'{self.input_name}': array}}")
        return np.ascontiguousarray(feeds[self.input_name], dtype=np.float32)


def verify_files(d: Path, files: dict[str, str], rebuild: str) -> None:
    """Each file build.json lists must be there with its recorded sha256: a missing or truncated model.bin would
    otherwise surface as a runtime error with no cause."""
    from deploy_nas.io import sha256_file

    for name, digest in files.items():
        path = d / name
        if not path.is_file():
            raise ExportError(f"{path} is missing (build.json lists it); {rebuild}")
        if sha256_file(path) != digest:
            raise ExportError(f"{path} does not match build.json (truncated or modified since the build); {rebuild}")


class Backend(abc.ABC):
    """A way to turn an ONNX file into an Engine on this machine."""

    name: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    runtime: ClassVar[str | None] = None  # the module the backend needs, imported only to check it is there
    install: ClassVar[str] = ""  # how to get it

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this backend cannot run here (a one-line fix), or None when it can. Never raises."""
        if cls.runtime is None:
            return None
        try:
            importlib.import_module(cls.runtime)
        except ImportError:
            return f"{cls.runtime} is not installed ({cls.install})"
        except OSError as err:  # a wheel whose native libraries do not load
            return f"{cls.runtime} cannot load its libraries ({err}); reinstall it for this machine"
        return None

    @abc.abstractmethod
    def build(self, onnx_path: str | Path, config: BuildConfig) -> Engine:
        """Build (and, when config.out_dir is set, save) an engine from an ONNX file."""

    def load(self, artifact_dir: str | Path, config: BuildConfig) -> Engine:
        """Load an engine saved by `build`; backends without saved artifacts rebuild instead."""
        raise ExportError(f"the {self.name} backend has no saved engines to load from {artifact_dir}; "
                          "call build() with the ONNX file instead")

    def check(self, config: BuildConfig) -> BuildConfig:
        """Raise BackendUnavailable / UnsupportedPrecision early; return the resolved config."""
        reason = self.unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(reason)
        config = config.resolved()
        if config.precision not in self.precisions:
            from deploy_nas.export.backends import backends_for_precision

            others = [b for b in backends_for_precision(config.precision) if b != self.name]
            hint = f"use {' or '.join(others)}" if others else "no backend supports it yet"
            raise UnsupportedPrecision(f"the {self.name} backend builds {', '.join(self.precisions)} only, "
                                       f"not {config.precision}; {hint}")
        return config

    def saved_artifacts(self, artifact_dir: str | Path, config: BuildConfig, main_file: str) -> tuple[Path, dict]:
        """(directory, build.json) of what `build` saved; `artifact_dir` is that directory or the out_dir above it."""
        import json

        d = Path(artifact_dir)
        if not (d / main_file).is_file() and (d.parent.name, d.name) != (self.name, config.precision):
            d = d / self.name / config.precision  # the deployment directory above it
        rebuild = f"build it with `{command('export', self.name, d.parent.parent, '--precision', config.precision)}`"
        if not (d / main_file).is_file() or not (d / BUILD_JSON).is_file():
            raise ExportError(f"no {self.name} artifacts ({main_file} + {BUILD_JSON}) in {d}; {rebuild}")
        try:
            meta = json.loads((d / BUILD_JSON).read_text())
            precision = meta["precision"]
        except (ValueError, KeyError, TypeError) as err:
            raise ExportError(f"{d / BUILD_JSON} is damaged ({type(err).__name__}); {rebuild}") from err
        files = meta.get("files")
        if files is None or isinstance(files, dict) and main_file not in files:  # nothing ties the files to the build
            raise ExportError(f"{d / BUILD_JSON} does not list {main_file} with its sha256 (edited, or written by an "
                              f"older deploy-nas); {rebuild}")
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()) or not isinstance(
                precision, str):
            raise ExportError(f"{d / BUILD_JSON} is damaged (its precision or file list is not what a build "
                              f"writes); {rebuild}")
        if precision != config.precision:
            raise ExportError(f"{d} holds a {precision} build, not {config.precision}; {rebuild}")
        verify_files(d, files, rebuild)
        return d, meta

    def artifact_dir(self, config: BuildConfig) -> Path | None:
        """Where this backend writes artifacts for `config`: out_dir/<backend>/<precision>, or None."""
        return None if config.out_dir is None else Path(config.out_dir) / self.name / config.precision
