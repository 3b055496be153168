"""Reading checkpoint files safely: safetensors, or torch.load(weights_only=True). Nothing from a file is executed.

Official AutoFormer checkpoints are `{'model': state_dict, 'optimizer', ..., 'args': argparse.Namespace}`. The
Namespace is plain data, but weights_only refuses it; we map that one global to an inert stand-in class so the
unpickler can build it without importing or calling argparse. The official NASViT training file stores its yacs
`CfgNode` (a dict subclass of plain values) under 'config': that global is read as an OrderedDict, which the
restricted unpickler already builds (items, then attributes into its `__dict__`), so yacs is neither imported nor
needed. Any other non-tensor global is refused.

torch.load does not check the CRC-32 a zip checkpoint records for each member, so a file damaged inside a tensor's
bytes would load as wrong weights: every member is read once and its CRC checked first (streaming, ~GB/s). A legacy
(non-zip) torch file records no checksum; nothing to check there.
"""
from __future__ import annotations

import pickle
import re
import struct
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from deploy_nas.errors import CheckpointError, brief, reason
from deploy_nas.io import load_safetensors


class _InertNamespace:
    """Receives the attributes of a pickled argparse.Namespace; has no behaviour."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__.update(state if isinstance(state, dict) else {})


# yacs.config.CfgNode -> OrderedDict: the exact type weights_only fills with SETITEMS and gives BUILD's attribute
# state (IMMUTABLE, DEPRECATED_KEYS, ...) to, as inert data; a dict subclass of our own would be refused by SETITEMS
_ALLOWED = [(_InertNamespace, "argparse.Namespace"), (OrderedDict, "yacs.config.CfgNode")]


MAX_CHECKPOINT_BYTES = 64 << 30  # no supernet comes near; a larger "checkpoint" is refused before reading it


def file_kind(path: Path) -> str:
    """What a file holds, judged from its first bytes (never by unpickling it)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{" and 0 < struct.unpack("<Q", head[:8])[0] < MAX_CHECKPOINT_BYTES:
        return "safetensors"
    return "unknown"


def read_checkpoint(path: str | Path) -> Any:
    """The raw object stored in a checkpoint file (tensors, containers and inert Namespaces only). Messages never
    suggest loading with weights_only=False: a file that needs code execution is refused, not run."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found" if not path.exists() else
                              f"checkpoint {path} is not a regular file")
    try:
        size, kind = path.stat().st_size, file_kind(path)
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err.strerror}") from None
    if size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{path} is {size / 2**30:.1f} GiB, larger than any supernet checkpoint; refusing")
    if kind == "safetensors" or (kind == "unknown" and path.suffix == ".safetensors"):  # by content, then name
        try:
            return load_safetensors(path)
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path} is not a readable safetensors file ({reason(err, 120)})") from None
    if kind == "unknown":
        raise CheckpointError(f"{path} is not a checkpoint: neither a torch file (zip or legacy pickle) nor "
                              f"safetensors (it starts with {brief(_head(path), 40)}); nothing in it was loaded")
    if kind == "torch-zip":
        verify_zip(path)
    try:
        with torch.serialization.safe_globals(_ALLOWED), open(path, "rb") as f:  # a file: torch.load of a path
            return torch.load(f, map_location="cpu", weights_only=True)  # would go by a .safetensors suffix
    except pickle.UnpicklingError as err:
        needs = re.search(r"GLOBAL ([\w.]+)", str(err))
        if needs:
            raise CheckpointError(f"{path} holds pickled objects ({brief(needs.group(1), 60)}) that only code "
                                  "execution could rebuild; it will not be unpickled. Re-save just the tensors "
                                  "(a state dict, or safetensors) from a trusted environment") from None
        opcode = re.search(r"Unsupported operand (\d+)", str(err))
        if opcode:  # e.g. 149, FRAME: torch.save(..., pickle_protocol=4 or 5), or pickle.dump's default protocol
            raise CheckpointError(f"{path} is pickled with an opcode torch's safe loader does not read (operand "
                                  f"{brief(opcode.group(1), 8)}: pickle protocol 4 or 5?); it will not be unpickled. "
                                  "Re-save the tensors with torch.save's default protocol (2), or as safetensors") \
                from None
        raise CheckpointError(f"{path} is a damaged or truncated torch {'zip' if kind == 'torch-zip' else 'pickle'} "
                              "file (its weights could not be read); it will not be unpickled any further") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, AttributeError, IndexError, KeyError,
            TypeError, struct.error, MemoryError, RecursionError) as err:  # what a corrupt stream makes torch raise
        raise CheckpointError(f"{path} is a damaged or truncated torch {'zip' if kind == 'torch-zip' else 'pickle'} "
                              f"file ({type(err).__name__}); it will not be unpickled any further") from None


_CHUNK = 1 << 24


def verify_zip(path: Path) -> None:
    """CheckpointError naming `path` and the first member of its zip archive whose bytes do not match the CRC-32 the
    archive records (or that cannot be read at all). A file written with torch's `compute_crc32=False` records 0 for
    every member: nothing to check, so nothing is refused."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if not any(m.CRC for m in members if m.file_size):
                return
            for member in members:
                try:
                    with archive.open(member) as stream:
                        while stream.read(_CHUNK):
                            pass
                except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError, RuntimeError) as err:
                    crc = "CRC" in str(err)
                    raise CheckpointError(
                        f"{path} is damaged: its member {brief(member.filename, 80)} "
                        + ("does not match the CRC-32 the archive records (bytes changed since it was written)"
                           if crc else f"cannot be read ({reason(err, 80)})")
                        + "; nothing was loaded. Copy or download the checkpoint again") from None
    except zipfile.BadZipFile as err:
        raise CheckpointError(f"{path} is a damaged or truncated torch zip file ({reason(err, 80)}); nothing was "
                              "loaded") from None
    except (OSError, struct.error, ValueError, OverflowError) as err:  # struct/Value: a mangled zip directory
        detail = err.strerror if isinstance(err, OSError) and err.strerror else reason(err, 80)
        raise CheckpointError(f"cannot read checkpoint {path} as a zip archive ({detail}); nothing was "
                              "loaded") from None


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(12)


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
    odd = sorted(f"{brief(k)} ({why})" for k, v in obj.items() if (why := _unsupported(v)))
    if odd:
        raise CheckpointError(f"{source}: unsupported tensor kind/dtype: {', '.join(odd[:3])}"
                              f"{' ...' if len(odd) > 3 else ''} ({len(odd)}); save the weights as dense CPU tensors "
                              "(fp32, fp16, bf16 or fp64)")
    if all(k.startswith("module.") for k in obj):  # saved from a DistributedDataParallel wrapper
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _unsupported(t: torch.Tensor) -> str | None:
    """What makes a tensor one no model can load as weights (None: nothing): a sparse or other non-dense layout, the
    meta device (shapes without data), or an fp8 dtype (its scales live outside the tensor)."""
    if t.layout != torch.strided:
        return str(t.layout).replace("torch.", "")
    if t.is_meta:
        return "meta device, no data"
    if t.is_floating_point() and t.element_size() == 1:
        return str(t.dtype).replace("torch.", "")
    return None


def stored_args(obj: Any) -> dict[str, Any]:
    """The training arguments a checkpoint stores (`args`: an argparse Namespace read as inert data, or a dict);
    empty when it stores none."""
    args = obj.get("args") if isinstance(obj, dict) else None
    if isinstance(args, dict):  # before __dict__: a yacs CfgNode is read as an OrderedDict, its items are the args
        return dict(args)
    return dict(vars(args)) if hasattr(args, "__dict__") else {}


def _finite_as_loaded(value: torch.Tensor, like: torch.Tensor) -> bool:
    """Whether `value` is finite once cast to the dtype the model holds it in (fp64 1e300 becomes inf in fp32)."""
    if not value.is_floating_point():
        return True
    return bool(torch.isfinite(value.to(like.dtype if like.is_floating_point() else value.dtype)).all())


def check_state_dict(model: Any, sd: dict[str, torch.Tensor], family: str, hint: str) -> None:
    """Raise CheckpointError listing every missing, unexpected, misshapen, non-floating (where the model has
    floating weights: an int64 tensor would be cast silently), non-finite (judged as loaded: after the cast to the
    model's dtype) tensor of `sd` against `model`, and every BatchNorm running variance with a negative value."""
    expected = model.state_dict()
    common = set(expected) & set(sd)
    problems = {
        "missing": sorted(set(expected) - set(sd)),
        "unexpected": sorted(set(sd) - set(expected)),
        "misshapen": sorted(f"{k} {tuple(sd[k].shape)} (expected {tuple(expected[k].shape)})"
                            for k in common if tuple(sd[k].shape) != tuple(expected[k].shape)),
        "not floating point": sorted(f"{k} ({str(sd[k].dtype).replace('torch.', '')})" for k in common
                                     if expected[k].is_floating_point() and not sd[k].is_floating_point()),
        "non-finite (NaN or Inf)": sorted(k for k in common if not _finite_as_loaded(sd[k], expected[k])),
        "negative BatchNorm variance": sorted(k for k in common if k.endswith("running_var")
                                              and sd[k].is_floating_point() and bool((sd[k] < 0).any())),
    }
    lines = [f"{name}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''} ({len(keys)})"
             for name, keys in problems.items() if keys]
    if not lines:
        return
    layout = any(problems[k] for k in ("missing", "unexpected", "misshapen"))
    fix = hint if layout else "the file's weights are broken or not weights at all; re-export them"
    raise CheckpointError(f"checkpoint does not match a {family} supernet: " + "; ".join(lines) + f". {fix}")


def majority(values: list[Any], what: str) -> Any:
    """The most common value (ties: the first seen), so one broken tensor cannot decide a size; check_state_dict
    then names it as the odd one out."""
    if not values:
        raise CheckpointError(f"cannot infer {what}: no tensor tells it")
    counts: dict[Any, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return max(counts, key=lambda v: counts[v])
