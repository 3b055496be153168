"""The error hierarchy. Every message says what failed, the numbers, and how to fix it.

The CLI maps `DeployNASError` to exit code 2 (bad input) and `ParityError` to exit code 1 (a failed gate).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
import threading
from pathlib import Path
from typing import Any


class DeployNASError(Exception):
    """Base class of every error deploy_nas raises on purpose."""

    exit_code = 2


class InvalidSubnetConfig(DeployNASError, ValueError):
    """A subnet config is malformed, belongs to another family, or lies outside the search space."""


class CheckpointError(DeployNASError):
    """A checkpoint file is missing, corrupt, unsafe to load, or does not match the expected layout."""


class DenseModelError(DeployNASError):
    """A dense model directory (spec.json + weights.safetensors) is missing, corrupt or inconsistent."""


class ExportError(DeployNASError):
    """Lowering to ONNX / an engine format failed."""


class BackendUnavailable(DeployNASError):
    """A backend cannot run on this machine; the message is the backend's own reason."""


class OutputPathError(DeployNASError):
    """An output location cannot be used (it is a file, or it exists and --force was not given)."""


class DataError(DeployNASError):
    """An input data directory or data set cannot be used."""


class TrainingDiverged(DeployNASError):
    """A training run's losses or weights stopped being finite numbers."""


class ParityError(DeployNASError):
    """A parity gate failed; carries the full result so callers can write the report first."""

    exit_code = 1

    def __init__(self, message: str, result: Any = None):
        super().__init__(message)
        self.result = result


class Terminated(KeyboardInterrupt):
    """SIGTERM (what `timeout`, `kill`, systemd, Slurm and docker send) raised as an interrupt, so that it unwinds
    like Ctrl-C does: temporaries removed, locks released, a search's log kept."""


# Set by the CLI's SIGINT and SIGTERM handlers before they raise: an error that comes out of a library after one of
# them is how the command was stopped, not a fault of its input (OpenVINO's converter catches the interrupt raised
# inside the tracing it runs and raises its own error in its place).
INTERRUPTED, TERMINATED = threading.Event(), threading.Event()


def reraise_if_stopped(err: BaseException) -> None:
    """Raise the interrupt a library turned into `err` (Terminated after SIGTERM, KeyboardInterrupt after Ctrl-C);
    return when no signal arrived."""
    if TERMINATED.is_set():
        raise Terminated() from err
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt() from err


def brief(value: Any, limit: int = 60) -> str:
    """A short repr for messages: a value quoted from user input must never make an error longer than a line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 5]}...{text[-2:]}"


def command(*args: Any) -> str:
    """A deploy-nas command line to suggest in a message, quoted for a POSIX shell (a path with a space or a quote
    pastes as one argument; a relative path that begins with a dash gets ./, or it would read as an option)."""
    import shlex

    def shown(a: Any) -> str:
        return f"./{a}" if isinstance(a, Path) and str(a).startswith("-") else str(a)

    return shlex.join(["deploy-nas", *map(shown, args)])


def reason(err: BaseException, limit: int = 120) -> str:
    """An exception's message for a one-line error: its whitespace (the newlines and tabs of torch's load_state_dict
    report) collapsed, then shortened as `brief` does."""
    return brief(" ".join(str(err).split()), limit)


# What a malformed file (a size of 0 or -5, a string where a number goes, a list where a mapping goes) makes the code
# that builds from it raise; the loaders turn these into their typed error, naming the file.
MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError, ZeroDivisionError,
             RuntimeError)


def check_flags(owner: str, error: type[Exception], **values: Any) -> None:
    """Raise `error` naming every value that is not a bool (a "no" or 0 in a file must not read as a flag)."""
    bad = [name for name, value in values.items() if not isinstance(value, bool)]
    if bad:
        raise error(f"{owner}: {', '.join(bad)} must be true or false")


MAX_SIZE = 2**31 - 1  # no size, count or scale of a model comes near it; larger ones overflow native code
MAX_IMG_SIZE = 4096  # px: 4x the largest ViT input in use (SAM's 1024); the activations of larger ones fill memory
MAX_PARAMS = 1 << 30  # 4 GiB of float32, 12x DeiT-base: an arch with more is refused before any layer is built


def as_path(value: Any, error: type[Exception], what: str) -> Path:
    """`value` as a Path; anything but a str or PathLike is `error` naming `what` (pathlib raises a bare TypeError)."""
    if not isinstance(value, (str, os.PathLike)):
        raise error(f"{what} must be a path (str or Path), got {type(value).__name__}")
    return Path(value)


def check_params(owner: str, error: type[Exception], bound: int, sizes: str, family: str) -> None:
    """Raise `error` when `bound` (a parameter count from an arch's sizes, `sizes` in words) exceeds MAX_PARAMS."""
    if bound > MAX_PARAMS:
        raise error(f"{owner}: {sizes} make ~{bound:.3g} parameters, more than any {family} (at most "
                    f"{MAX_PARAMS:.3g})")


def integral(value: Any) -> Any:
    """`value` (a number or a list/tuple of them) with whole-number floats (192.0) and numpy integers as ints, the
    way a file or an array writes an integer; anything else as it is, for `check_sizes` to refuse (16.9, True)."""
    if isinstance(value, (list, tuple)):
        return type(value)(integral(v) for v in value)
    if isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer() or isinstance(value, numbers.Integral):
        return int(value)
    return value


def check_sizes(owner: str, error: type[Exception], minimum: dict[str, int], integers: bool = False,
                **values: Any) -> None:
    """Raise `error` naming every value (a number or a non-empty sequence of them) that is not a finite number
    (`integers`: an integer) at least `minimum[name]` (1 when unnamed) and at most MAX_SIZE (MAX_IMG_SIZE for an
    `img_size`); bools, strings and NaN are refused. Runs before any value is used, so a bad file never reaches a
    division, an allocation or an index."""
    bad = []
    kinds = (int,) if integers else (int, float)
    for name, value in values.items():
        items = value if isinstance(value, (list, tuple)) else (value,)
        low = minimum.get(name, 1)
        high = MAX_IMG_SIZE if name == "img_size" else MAX_SIZE  # an input size sizes every activation
        ok = bool(items) and all(isinstance(v, kinds) and not isinstance(v, bool) and math.isfinite(v)
                                 and low <= v <= high for v in items)
        if not ok:
            bad.append(f"{name} = {brief(value)} (must be {'integers' if integers else 'finite numbers'} in "
                       f"{low}..{high})")
    if bad:
        raise error(f"{owner}: {'; '.join(bad)}")


def check_fields(owner: str, error: type[Exception], obj: Any, zero_ok: tuple[str, ...] = ()) -> None:
    """`check_sizes` and `check_flags` over the fields of the dataclass `obj` by their declared type: every int an
    integer >= 1 (>= 0 when named in `zero_ok`), every float a finite number >= 0, every bool a bool; other fields
    (optional or sequence ones) are the caller's. For archs and dense specs, whose numbers come from a file
    (supernet.json, spec.json) and size layers and kernels."""
    by_type: dict[str, dict[str, Any]] = {"int": {}, "float": {}, "bool": {}}
    for f in dataclasses.fields(obj):
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        if kind in by_type:
            by_type[kind][f.name] = getattr(obj, f.name)
    low = {**{name: int(name not in zero_ok) for name in by_type["int"]}, **dict.fromkeys(by_type["float"], 0)}
    if by_type["int"]:
        check_sizes(owner, error, low, integers=True, **by_type["int"])
    if by_type["float"]:
        check_sizes(owner, error, low, **by_type["float"])
    check_flags(owner, error, **by_type["bool"])
