"""Hypothesis strategies for the fuzz suite: configs (canonical JSON, the official dict and YAML forms, YAML with
aliases, arbitrary documents and bytes), checkpoints (key sets, shapes, dtypes, values, containers, formats,
truncations) and CLI argument lists. Each family plugs its own config and checkpoint strategies in: a module
`tests/fuzz/strategies_<family>.py` defining `STRATEGIES = FamilyStrategies(...)` (tests/families/test_protocol.py
checks that every registered family has one)."""
from __future__ import annotations

import argparse
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import yaml
from hypothesis import strategies as st
from safetensors.torch import save as save_safetensors

# ------------------------------------------------------------------------------------------------ documents

SCALARS = st.one_of(st.integers(-5, 5000), st.integers(-(10 ** 30), 10 ** 30),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.booleans(), st.none())
DOCUMENTS = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=6),
                                                          st.dictionaries(st.text(max_size=10), inner, max_size=6)),
                         max_leaves=30)


def maybe(strategy: st.SearchStrategy, other: st.SearchStrategy = SCALARS) -> st.SearchStrategy:
    """Mostly `strategy`, sometimes any scalar."""
    return st.one_of(strategy, strategy, strategy, other)


@st.composite
def drop_and_add(draw: Callable, d: dict) -> dict:
    """`d` with some keys dropped and some junk keys added."""
    keys = list(d)
    dropped = draw(st.sets(st.sampled_from(keys), max_size=2)) if keys and draw(st.booleans()) else set()
    out = {k: v for k, v in d.items() if k not in dropped}
    if draw(st.integers(0, 5)) == 0:
        out[draw(st.text(min_size=1, max_size=8))] = draw(SCALARS)
    return out


@st.composite
def alias_yaml(draw: Callable) -> str:
    """YAML whose anchors and aliases expand geometrically (from harmless to a billion-laughs bomb), or refer to
    themselves."""
    width, depth = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    lines = [f"l0: &l0 [{', '.join(['x'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, depth)]
    if draw(st.booleans()):
        lines.append(f"layer_num: *l{depth - 1}")
    if draw(st.integers(0, 6)) == 0:
        lines.append("self: &me [1, *me]")
    return "\n".join(lines) + "\n"


def serialize_document(draw: Callable, doc: Any) -> tuple[str, bytes]:
    """(suffix, file bytes): JSON, YAML, or a deliberately mis-named / damaged rendering of it."""
    form = draw(st.sampled_from(["json", "yaml", "yaml-as-json", "truncated"]))
    text = json.dumps(doc, allow_nan=True) if form != "yaml" else yaml.safe_dump(doc, allow_unicode=True)
    if form == "yaml-as-json":
        return ".json", yaml.safe_dump(doc).encode()
    if form == "truncated":
        data = text.encode()
        return draw(st.sampled_from([".json", ".yaml"])), data[: draw(st.integers(0, max(0, len(data) - 1)))]
    return (".json" if form == "json" else ".yaml"), text.encode()


# --------------------------------------------------------------------------------------------- checkpoints

DTYPES = (torch.int64, torch.int32, torch.bool, torch.float16, torch.float64, torch.bfloat16)


@st.composite
def mutated_state_dict(draw: Callable, base: dict[str, torch.Tensor]) -> dict[str, Any]:
    """`base` with a few edits: keys dropped or added, tensors reshaped, retyped, poisoned, or not tensors."""
    sd = {k: v.clone() for k, v in base.items()}
    keys = sorted(sd)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["drop", "add", "reshape", "dtype", "nan", "inf", "huge", "not-a-tensor",
                                   "rename"]))
        key = draw(st.sampled_from(keys))
        if key not in sd:
            continue
        if op == "drop":
            del sd[key]
        elif op == "add":
            sd[draw(st.sampled_from([f"{key}.extra", "blocks.99.fc1.weight", "head2.weight"]))] = torch.zeros(3)
        elif op == "reshape":
            shape = draw(st.lists(st.integers(0, 300), min_size=0, max_size=4).filter(
                lambda dims: torch.Size(dims).numel() <= 100_000))  # small files: the shapes matter, not the sizes
            sd[key] = torch.zeros(shape)
        elif op == "dtype" and isinstance(sd[key], torch.Tensor):
            sd[key] = sd[key].to(draw(st.sampled_from(DTYPES)))
        elif op in ("nan", "inf", "huge") and isinstance(sd[key], torch.Tensor) and sd[key].is_floating_point() \
                and sd[key].numel():
            value = {"nan": float("nan"), "inf": float("-inf"), "huge": torch.finfo(sd[key].dtype).max}[op]
            sd[key].view(-1)[draw(st.integers(0, sd[key].numel() - 1))] = value
        elif op == "not-a-tensor":
            sd[key] = draw(SCALARS)
        elif op == "rename":
            sd["module." + key] = sd.pop(key)
    return sd


@st.composite
def checkpoint_file(draw: Callable, base: dict[str, torch.Tensor]) -> tuple[str, bytes]:
    """(suffix, bytes) of a checkpoint: the (mutated) state dict in one of the containers and formats people
    have, possibly truncated or with flipped bytes, or plain garbage."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from([".pth", ".safetensors", ".bin"])), draw(st.binary(max_size=2000))
    sd = draw(mutated_state_dict(base))
    container = draw(st.sampled_from(["model", "state_dict", "bare", "args", "ddp", "list", "nested"]))
    obj: Any = {"bare": sd, "model": {"model": sd}, "state_dict": {"state_dict": sd},
                "args": {"model": sd, "epoch": 3, "args": argparse.Namespace(gp=True, lr=1e-3)},
                "ddp": {f"module.{k}": v for k, v in sd.items()}, "list": [sd], "nested": {"model": {"model": sd}}}[
        container]
    fmt = draw(st.sampled_from(["zip", "zip", "legacy", "safetensors"]))
    buf = io.BytesIO()
    suffix = ".pth"
    if fmt == "safetensors" and isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        data, suffix = save_safetensors({k: v.contiguous() for k, v in obj.items()}), draw(
            st.sampled_from([".safetensors", ".pth"]))
    else:
        torch.save(obj, buf, _use_new_zipfile_serialization=fmt != "legacy")
        data = buf.getvalue()
    damage = draw(st.sampled_from(["none", "none", "none", "truncate", "flip"]))
    if damage == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif damage == "flip" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
    return suffix, data


# ------------------------------------------------------------------------------------------------- families


@dataclass(frozen=True)
class FamilyStrategies:
    """What the fuzz suite needs from a family: config documents and the base state dict of a small checkpoint
    in the family's official layout (the checkpoint strategy mutates it)."""

    configs: st.SearchStrategy  # of Python documents (dicts) in the family's canonical and official forms
    checkpoint_base: Callable[[], dict[str, torch.Tensor]]


@st.composite
def near_valid(draw: Callable, space_name: str, official: Callable[[Any], dict] | None = None) -> dict:
    """A config of the space (canonical or, with `official`, the official form), sometimes with one value spoiled:
    the cases that must succeed, and their nearest neighbours that must not."""
    import random

    from deploy_nas.spaces import SPACES

    space = SPACES.get(space_name)
    cfg = space.sample(random.Random(draw(st.integers(0, 2**31))), draw(st.sampled_from(["random", "min", "max"])))
    d = official(cfg) if official is not None and draw(st.booleans()) else cfg.to_dict()
    if draw(st.booleans()):
        key = draw(st.sampled_from(sorted(d)))
        value = d[key]
        if isinstance(value, list) and value and draw(st.booleans()):
            value = list(value)
            value[draw(st.integers(0, len(value) - 1))] = draw(SCALARS)
            d[key] = value
        else:
            d[key] = draw(st.one_of(SCALARS, st.lists(SCALARS, max_size=5)))
    return d


def _autoformer_configs() -> st.SearchStrategy:
    ratios, heads = st.sampled_from([2.0, 3.0, 4.0, 3.5, 0.0, -1.0, 100.0]), st.sampled_from([2, 3, 4, 0, 1, 64])
    depth = maybe(st.integers(0, 6))
    canonical = st.fixed_dictionaries({
        "family": maybe(st.just("autoformer"), st.sampled_from(["nasvit", "s3", "", "AUTOFORMER"])),
        "depth": depth, "embed_dim": maybe(st.sampled_from([64, 96, 128, 56, 0, 4096])),
        "mlp_ratio": maybe(st.lists(maybe(ratios), max_size=6)),
        "num_heads": maybe(st.lists(maybe(heads), max_size=6))})
    official = st.fixed_dictionaries({
        "layer_num": maybe(st.one_of(st.integers(0, 6), st.just(1e9), st.just(10 ** 12))),
        "embed_dim": st.one_of(maybe(st.sampled_from([64, 96])), st.lists(st.sampled_from([64, 96]), max_size=6)),
        "mlp_ratio": maybe(st.lists(ratios, max_size=8)), "num_heads": maybe(st.lists(heads, max_size=8))})
    retrain = official.map(lambda d: {"RETRAIN": {"DEPTH": d["layer_num"], "EMBED_DIM": d["embed_dim"],
                                                  "MLP_RATIO": d["mlp_ratio"], "NUM_HEADS": d["num_heads"]}})
    return st.one_of(near_valid("autoformer-demo", lambda c: c.to_official()), near_valid("autoformer-demo"),
                     canonical.flatmap(drop_and_add), official.flatmap(drop_and_add), retrain, DOCUMENTS)


def _autoformer_base() -> dict[str, torch.Tensor]:
    from deploy_nas.supernets import default_supernet

    return {k: v.detach().clone() for k, v in default_supernet()[0].state_dict().items()}


def _family_strategies() -> dict[str, FamilyStrategies]:
    """AutoFormer's (above) and every `tests/fuzz/strategies_<family>.py` module's STRATEGIES."""
    import importlib
    import pkgutil
    from pathlib import Path

    found = {"autoformer": FamilyStrategies(_autoformer_configs(), _autoformer_base)}
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if module.name.startswith("strategies_"):
            found[module.name[len("strategies_"):]] = importlib.import_module(f"tests.fuzz.{module.name}").STRATEGIES
    return found


FAMILY_STRATEGIES: dict[str, FamilyStrategies] = _family_strategies()


# -------------------------------------------------------------------------------------------------- the CLI

PATHS = st.sampled_from(["{inputs}/none", "{inputs}", "{inputs}/file.txt", "/", ".", "..", "{out}", "{out}/x",
                         "/proc/x", "", " ", "-", "--help", "{inputs}/deploy/dense", "{inputs}/deploy"])
IN_PLACE = ("export", "parity", "bench")  # commands that modify the deployment directory given as {out}
NUMBERS = st.one_of(st.integers(-3, 300).map(str), st.sampled_from(["nan", "inf", "-inf", "1e999", "0x10", "",
                                                                     "1,2", "1.5", "99999999999999999999"]))
WORDS = st.one_of(st.sampled_from(["fp32", "fp16", "int8", "int4", "torch", "onnxruntime", "openvino", "tensorrt",
                                   "tflite", "autoformer", "nasvit", "min", "max", "autoformer-t", "autoformer-tiny",
                                   "gp=false", "gp", "=", "change_qkv=maybe", "head_dim=1e9"]), st.text(max_size=8))
COMMANDS = {  # command -> (fixed prefix, option -> value strategy); values that would start long legit work are cut
    "extract": (["extract", "--out", "{out}"], {"--config": st.one_of(WORDS, PATHS), "--space": WORDS,
                                                "--family": WORDS, "--import-option": WORDS, "--checkpoint": PATHS,
                                                "--supernet": PATHS, "--force": None, "--no-gp": None}),
    "info": (["info"], {"": PATHS}),
    # export, parity and bench work in place on a deployment directory: the harness copies one to {out} first
    "export": (["export", "onnx", "{out}"], {"--opset": NUMBERS, "--no-simplify": None, "--dynamo": None}),
    "parity": (["parity", "{out}"], {"--backend": WORDS, "--precision": WORDS, "--data": PATHS,
                                     "--threads": NUMBERS}),
    "bench": (["bench", "{out}", "--runs", "50", "--warmup", "1"],
              {"--backend": WORDS, "--precision": WORDS, "--batch": NUMBERS, "--threads": NUMBERS}),
    "search": (["search", "--out", "{out}", "--backend", "torch", "--threads", "1", "--generations", "1",
                "--population", "4", "--measure", "8"],
               {"--latency-budget-ms": NUMBERS, "--params-range": NUMBERS, "--flops-range": NUMBERS,
                "--supernet": PATHS, "--data": PATHS, "--space": WORDS}),
    "train": (["train", "--out", "{out}", "--epochs", "1", "--max-steps", "1", "--batch-size", "8"],
              {"--lr": NUMBERS, "--num-random": NUMBERS, "--space": WORDS, "--family": WORDS, "--ema-decay": NUMBERS,
               "--distill-weight": NUMBERS, "--device": WORDS, "--seed": NUMBERS}),
    "run": (["run", "--out", "{out}", "--runs", "50", "--batch", "1"],
            {"--config": WORDS, "--dense": PATHS, "--backend": WORDS, "--precision": WORDS, "--calib-data": PATHS,
             "--max-batch": NUMBERS, "--opset": NUMBERS}),
}


@st.composite
def cli_arguments(draw: Callable) -> list[str]:
    """A command line: a command, its fixed options, then a few of its options with hostile values."""
    name = draw(st.sampled_from(sorted(COMMANDS)))
    prefix, options = COMMANDS[name]
    args = list(prefix)
    for opt in draw(st.lists(st.sampled_from(sorted(options)), max_size=4)):
        strategy = options[opt]
        if opt:
            args.append(opt)
        if strategy is not None:
            args.append(draw(strategy))
    if draw(st.integers(0, 9)) == 0:
        args.insert(draw(st.integers(0, len(args))), draw(st.sampled_from(["--bogus", "-x", "--"])))
    return args
