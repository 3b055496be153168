"""The error hierarchy. Every message says what failed, the numbers, and how to fix it.

The CLI maps `DeployNASError` to exit code 2 (bad input) and `ParityError` to exit code 1 (a failed gate).
"""
from __future__ import annotations

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


class ParityError(DeployNASError):
    """A parity gate failed; carries the full result so callers can write the report first."""

    exit_code = 1

    def __init__(self, message: str, result: Any = None):
        super().__init__(message)
        self.result = result


def brief(value: Any, limit: int = 60) -> str:
    """A short repr for messages: a value quoted from user input must never make an error longer than a line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 5]}...{text[-2:]}"
