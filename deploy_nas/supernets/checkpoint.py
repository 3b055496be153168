"""Reading checkpoint files safely: safetensors, or torch.load(weights_only=True). Nothing from a file is executed.

Official AutoFormer checkpoints are `{'model': state_dict, 'optimizer', ..., 'args': argparse.Namespace}`. The
Namespace is plain data, but weights_only refuses it; we map that one global to an inert stand-in class so the
unpickler can build it without importing or calling argparse. Any other non-tensor global is refused.
"""
from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from deploy_nas.errors import CheckpointError


class _InertNamespace:
    """Receives the attributes of a pickled argparse.Namespace; has no behaviour."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__.update(state if isinstance(state, dict) else {})


_ALLOWED = [(_InertNamespace, "argparse.Namespace")]


def read_checkpoint(path: str | Path) -> Any:
    """The raw object stored in a checkpoint file (tensors, containers and inert Namespaces only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path} is not a readable safetensors file ({err})") from err
    try:
        with torch.serialization.safe_globals(_ALLOWED):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "Unsupported global" in str(err) or "GLOBAL" in str(err):
            raise CheckpointError(f"{path} holds pickled objects that would need code execution to load "
                                  f"({first}); refusing. Re-save only the tensors, e.g. "
                                  "torch.save(ckpt['model'], 'weights.pth') or as safetensors") from err
        raise CheckpointError(f"{path} is not a valid checkpoint ({first}); the file may be truncated") from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, AttributeError, IndexError, KeyError,
            TypeError, struct.error) as err:  # what a corrupt stream makes the unpickler raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} is not a readable torch checkpoint ({first}); the file may be "
                              "truncated or not a checkpoint") from err


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensor state dict inside a checkpoint: `obj['model']`, `obj['state_dict']` or obj itself."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{source} holds no state dict (expected a dict of tensors or {{'model': ...}})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: entries {bad[:5]} are not tensors; expected a state dict")
    if all(k.startswith("module.") for k in obj):  # saved from a DistributedDataParallel wrapper
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def check_state_dict(model: Any, sd: dict[str, torch.Tensor], family: str, hint: str) -> None:
    """Raise CheckpointError listing every missing, unexpected and misshapen key of `sd` against `model`."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    misshapen = sorted(f"{k} {tuple(sd[k].shape)} (expected {tuple(expected[k])})"
                       for k in set(expected) & set(sd) if tuple(sd[k].shape) != tuple(expected[k]))
    problems = [f"{name}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''} ({len(keys)})"
                for name, keys in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen)) if keys]
    if problems:
        raise CheckpointError(f"checkpoint does not match a {family} supernet: " + "; ".join(problems) + f". {hint}")
