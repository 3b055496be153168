"""What decides a search's results, recorded in its directory (`search.json`) when it starts, so that `--resume`
continues the same search and no other: the supernet (a sha256 of its description and its weights as loaded, so an
embedded default, a supernet directory and an official checkpoint are all told apart by what they hold), its image
size, the space, the data (a sha256 of the val and test images and labels), the evolution's seed, population and
breeding settings, the predictor's and the finalists' sizes, the latency budget and the params / FLOPs ranges. The
latency settings have their own file (latency.json). `generations` is recorded but not compared: a resume may ask
for more (or fewer: the log's are kept, and recorded)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any

import numpy as np

from deploy_nas.errors import MALFORMED, brief

RECORD_FILE = "search.json"
# the settings a resume must give as the search recorded them, in the order a mismatch names them, each with the
# option that sets it (or what it is, when no option of `deploy-nas search` sets it alone)
COMPARED = {"supernet": "--supernet", "img_size": "image size", "space": "--space", "data": "--data",
            "seed": "--seed", "population": "--population", "evolution": "evolution settings", "measure": "--measure",
            "finalists": "finalists", "max_checks": "max checks", "latency_budget_ms": "--latency-budget-ms",
            "params_range": "--params-range", "flops_range": "--flops-range", "bn": "BatchNorm statistics"}
# what a record from before a setting was recorded did: a BatchNorm family's subnets were scored with the stored
# statistics
BEFORE = {"bn": {"mode": "stored"}}
_DIGITS = 12  # of a sha256, in messages


def supernet_record(supernet: Any) -> dict[str, Any]:
    """{"family", "sha256"}: the digest covers the supernet's description (`meta()`: sizes, and flags such as
    AutoFormer's change_qkv that weights cannot tell) and every tensor of its state dict (name, dtype, shape, bytes)."""
    h = hashlib.sha256(json.dumps(supernet.meta(), sort_keys=True, default=str).encode())
    for name, tensor in supernet.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(_raw(t))
    return {"family": supernet.family, "sha256": h.hexdigest()}


def _raw(t: Any) -> bytes:
    """A tensor's bytes, whatever its dtype (numpy has no bfloat16: viewed as bytes first)."""
    import torch

    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def space_record(space: Any) -> dict[str, Any]:
    """{"name", "sha256"} of the space's canonical JSON: two spaces of one name but other choices differ."""
    text = json.dumps(space.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
    return {"name": space.name, "sha256": hashlib.sha256(text.encode()).hexdigest()}


def data_record(data: dict[str, Any]) -> dict[str, Any]:
    """{"task", "classes", "val", "test", "sha256"}: the val and test splits the search scores on (a split absent,
    as in a library call that scores nothing on it, counts None). The sha256 is of image folders' pixels as loaded
    (integer pixels through exact float steps: the same wherever the same Pillow decodes them); the embedded task is
    told by its counts and the image size, its pixels being rendered by float kernels whose last bits may differ
    from one CPU to another (sha256 None)."""
    h, counts, classes = hashlib.sha256(), {}, None
    for name in ("val", "test"):
        split = data.get(name)
        counts[name] = None if split is None else len(split)
        if split is None or not split.classes:  # absent, or the embedded task: told by its counts, not its pixels
            continue
        classes = classes or split.classes
        for array in (split.images, split.labels):
            a = np.ascontiguousarray(array)
            h.update(f"{name}:{a.dtype}:{a.shape};".encode())
            h.update(a.tobytes())
        h.update(json.dumps(list(split.classes)).encode())
    return {"task": "image folders" if classes else "embedded", "classes": list(classes) if classes else None,
            **counts, "sha256": h.hexdigest() if classes else None}


def search_record(supernet: Any, space: Any, data: dict[str, Any], constraints: Any, setup: Any,
                  bn: dict[str, Any] | None = None) -> dict[str, Any]:
    """The settings of a search (see the module's docstring), as JSON reads them back (lists, not tuples). `bn`: a
    BatchNorm family's statistics when subnets are scored (`Search.bn`); absent for the other families."""
    evolution = asdict(setup.evolution)
    record = {"supernet": supernet_record(supernet), **space_part(space), "data": data_record(data),
              "seed": evolution.pop("seed"), "population": evolution.pop("population"),
              "generations": evolution.pop("generations"), "evolution": evolution, "measure": setup.measure,
              "finalists": setup.finalists, "max_checks": setup.max_checks, **asdict(constraints),
              **({"bn": bn} if bn is not None else {})}
    return json.loads(json.dumps(record))


def space_part(space: Any) -> dict[str, Any]:
    """The part of the record that the space alone decides (a resume checks it before the log is read)."""
    return json.loads(json.dumps({"img_size": getattr(space, "img_size", None), "space": space_record(space)}))


def differences(recorded: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """Each compared setting of `given` that `recorded` holds otherwise: "OPTION: recorded X, given Y" (of settings
    made of parts, such as the evolution's, the parts that differ)."""
    changed = []
    for key, label in COMPARED.items():
        old, new = recorded.get(key, BEFORE.get(key)), given.get(key)
        if key in given and _compared(key, old) != _compared(key, new):
            if key == "evolution" and isinstance(old, dict):
                parts = [k for k in sorted(new) if old.get(k) != new[k]]
                old, new = {k: old.get(k) for k in parts}, {k: new[k] for k in parts}
            changed.append(f"{label}: recorded {show(key, old)}, given {show(key, new)}")
    return changed


def _compared(key: str, value: Any) -> Any:
    """What of a setting must be equal for a resume: of the BatchNorm statistics, the images (their count and
    digest), not the option that named them (--calib-data DIR/train and --data DIR read the same images)."""
    if key == "bn" and isinstance(value, dict):
        return {k: v for k, v in value.items() if k != "source"}
    return value


def show(key: str, value: Any) -> str:
    """A recorded or given setting as a message shows it (a value of another shape, from a hand-edited file: brief)."""
    try:
        return _SHOW.get(key, brief)(value) if value is not None else "none"
    except MALFORMED:
        return brief(value)


def _show_data(d: dict[str, Any]) -> str:
    what = "the embedded task" if d["task"] == "embedded" else f"image folders of {len(d['classes'])} classes"
    digest = f"; sha256 {d['sha256'][:_DIGITS]}" if d.get("sha256") else ""
    return f"{what} ({d['val']} val, {d['test']} test images{digest})"


_SHOW = {
    "supernet": lambda d: f"{brief(d['family'])} supernet sha256 {d['sha256'][:_DIGITS]}",
    "space": lambda d: f"{brief(d['name'])} (sha256 {d['sha256'][:_DIGITS]})",
    "data": _show_data,
    "evolution": lambda d: ", ".join(f"{k} {brief(v)}" for k, v in d.items()),
    "latency_budget_ms": lambda v: f"{v:g} ms",
    "bn": lambda d: "the stored ones (--bn stored)" if d["mode"] == "stored" else (
        f"recalibrated on {d['images']} images" + (f" of {d['source']}" if d.get("source") else "")
        + (f" (sha256 {d['sha256'][:_DIGITS]})" if d.get("sha256") else "")),
    "params_range": lambda r: f"{r[0]:,}..{r[1]:,}",
    "flops_range": lambda r: f"{r[0]:g}..{r[1]:g} GMAC",
}

__all__ = ["BEFORE", "COMPARED", "RECORD_FILE", "data_record", "differences", "search_record", "show", "space_part",
           "supernet_record"]
