"""Supernets of every family: the official checkpoint importers (through the family objects), our own supernet
directory format (supernet.json + weights.safetensors), and the embedded default."""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from deploy_nas.errors import (
    MALFORMED,
    CheckpointError,
    DeployNASError,
    InvalidSubnetConfig,
    OutputPathError,
    as_path,
    brief,
    reason,
)
from deploy_nas.family import FAMILIES, Family, parse_import_options
from deploy_nas.io import atomic_dir, library_write
from deploy_nas.supernets.checkpoint import check_state_dict, extract_state_dict, read_checkpoint

SUPERNET_FILE, WEIGHTS_FILE = "supernet.json", "weights.safetensors"
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "assets" / "default_supernet"


def resolve_family(family: str | None, checkpoint_obj: Any = None, source: str = "checkpoint") -> Family:
    """The named family, or the one family whose importer claims the checkpoint's state dict."""
    if family is not None:
        return FAMILIES.get(family)
    sd = extract_state_dict(checkpoint_obj, source)
    claimed = [f for f in FAMILIES.values() if getattr(f, "claims", lambda _: False)(sd)]
    if len(claimed) != 1:
        raise CheckpointError(f"cannot tell which family {source} belongs to "
                              f"({'no' if not claimed else 'several'} importers recognise its keys); "
                              f"pass --family ({', '.join(FAMILIES.names())})")
    return claimed[0]


def load_official(path: str | Path, family: str | None = None, options: Any = None,
                  option_pairs: Sequence[str] = (), **given: Any) -> tuple[Any, Any]:
    """(supernet, its space or None) from an official checkpoint file. `options`: the family's import options
    object; else built from `option_pairs` ("key=value") and keyword values (None = default)."""
    obj = read_checkpoint(as_path(path, CheckpointError, "the checkpoint"))
    fam = resolve_family(family, obj, str(path))
    if options is None:
        options = parse_import_options(fam.import_options, option_pairs, **given)
    elif not isinstance(options, fam.import_options):
        raise InvalidSubnetConfig(f"load_official's options for family {fam.name} must be "
                                  f"{fam.import_options.__name__}(...), or None with option_pairs or keyword values; "
                                  f"got {type(options).__name__}")
    return fam.from_checkpoint(obj, options, str(path))


def save_supernet(model: Any, out: str | Path, space: Any = None, extra: dict[str, Any] | None = None,
                  force: bool = False, also: Callable[[Path], None] | None = None) -> Path:
    """Our supernet directory: supernet.json (family, arch, space) + weights.safetensors in the official layout.
    `also(tmp)` writes more files into it (a training state) before the directory replaces `out` in one rename."""
    family = getattr(model, "family", None)
    if not (isinstance(model, nn.Module) and isinstance(family, str) and hasattr(model, "meta")):
        raise CheckpointError(f"save_supernet takes a supernet (from load_supernet or a family's build_supernet), got "
                              f"{type(model).__name__}")
    if space is not None and not (hasattr(space, "to_dict") and isinstance(getattr(space, "family", None), str)):
        raise InvalidSubnetConfig(f"save_supernet takes a search space (from load_space) or None, got "
                                  f"{type(space).__name__}")
    if space is not None and space.family != family:  # checked before anything is written
        raise InvalidSubnetConfig(f"save_supernet: the space is for family {brief(space.family)}, the supernet is "
                                  f"{family!r}; pass a {family} space or none")
    if space is not None:
        check_space_fits(model, space, "save_supernet's space")
    as_path(out, OutputPathError, "save_supernet's output directory")
    meta = {**model.meta(), "space": space.to_dict() if space is not None else None, **(extra or {})}
    with atomic_dir(out, force) as tmp:
        (tmp / SUPERNET_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        with library_write(tmp / WEIGHTS_FILE):
            save_file(weights, str(tmp / WEIGHTS_FILE))
        if also is not None:
            also(tmp)
    return Path(out)


def check_space_fits(supernet: Any, space: Any, what: str) -> None:
    """InvalidSubnetConfig, naming `what`, unless the space's min and max subnets (every dimension at its ends) fit
    the supernet, and its fixed sizes (image, patch, head dim, channels) are the supernet's: found before a search or
    a directory is built on it, not at its first sample. (A space with input resolutions among its choices, NASViT's,
    resizes any input: its image size is free.)"""
    arch = supernet.meta().get("arch")
    fixed = space.to_dict() if hasattr(space, "to_dict") else {}
    keys = ("patch_size", "head_dim", "in_chans") + (() if hasattr(space, "resolution") else ("img_size",))
    differ = [f"{k} {fixed[k]} (the supernet's: {arch[k]})" for k in keys if isinstance(arch, dict)
              and fixed.get(k) is not None and arch.get(k) is not None and fixed[k] != arch[k]]
    if differ:
        raise InvalidSubnetConfig(f"{what} ({getattr(space, 'name', None) or 'unnamed'}) does not fit the "
                                  f"{supernet.family} supernet: its {', '.join(differ)}")
    for kind in ("min", "max"):
        try:
            supernet.check_config(space.sample(None, kind))
        except InvalidSubnetConfig as err:
            raise InvalidSubnetConfig(f"{what} ({getattr(space, 'name', None) or 'unnamed'}) does not fit the "
                                      f"{supernet.family} supernet; its {kind} subnet: {err}") from None


def read_supernet_meta(directory: str | Path) -> dict[str, Any]:
    meta_path = as_path(directory, CheckpointError, "the supernet directory") / SUPERNET_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{directory} is not a supernet directory (no {SUPERNET_FILE}); "
                              "create one with `deploy-nas train`")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        raise CheckpointError(f"{meta_path} is corrupt ({str(err)[:200]})") from err
    if not isinstance(meta, dict) or not isinstance(meta.get("family"), str):
        raise CheckpointError(f"{meta_path} does not name its family; re-create it with `deploy-nas train`")
    return meta


def load_supernet_dir(directory: str | Path, family: str | None = None) -> tuple[Any, Any]:
    meta = read_supernet_meta(directory)
    if family is not None and meta["family"] != family:
        raise CheckpointError(f"{directory} holds a {brief(meta['family'])} supernet, not {family!r}: give a "
                              f"supernet of family {family!r} here (commands with a --family option read this one with "
                              f"--family {brief(meta['family'])})")
    fam = FAMILIES.get(meta["family"])
    meta_path = Path(directory) / SUPERNET_FILE
    try:
        model = fam.supernet_from_meta(meta)
        space = fam.space_from_dict(meta["space"]) if meta.get("space") else None
    except DeployNASError:
        raise
    except MALFORMED as err:  # sizes no supernet has, values of the wrong type, a space that is no mapping
        raise CheckpointError(f"{meta_path} does not describe a {fam.name} supernet and its space "
                              f"({type(err).__name__}: {reason(err, 200)}); re-create it with `deploy-nas train`"
                              ) from None
    trained_on = trained_on_of(meta, meta_path)
    sd = extract_state_dict(read_checkpoint(Path(directory) / WEIGHTS_FILE), str(directory))
    check_state_dict(model, sd, fam.name, f"re-create {directory} with `deploy-nas train`")
    model.load_state_dict(sd, strict=True)
    if trained_on is not None:
        model.trained_on = trained_on
    return model.eval(), space


def trained_on_of(meta: dict[str, Any], meta_path: Path) -> dict[str, Any] | None:
    """supernet.json's record of the data the weights were trained on (`data.data_record`), checked; None for a
    directory written before 2026-12-07 (or by hand) without one."""
    record = meta.get("trained_on")
    if record is None:
        return None
    task = record.get("task") if isinstance(record, dict) else None
    classes = record.get("classes") if task == "image folders" else []
    if task not in ("embedded", "image folders") or not (
            isinstance(classes, list) and all(isinstance(c, str) for c in classes)
            and len(set(classes)) == len(classes) and (task == "embedded" or classes)):
        raise CheckpointError(f"{meta_path}: 'trained_on' must be {{\"task\": \"embedded\"}} or {{\"task\": \"image "
                              f"folders\", \"classes\": [distinct names]}}, got "
                              f"{brief(json.dumps(record), 120)}; re-create it with `deploy-nas train`")
    return record


EMBEDDED_CLASSES = tuple(str(d) for d in range(10))  # the embedded task's labels: the digit drawn


def trained_classes(model: Any) -> tuple[str, ...] | None:
    """The class names of a supernet's labels, when its supernet.json says what it was trained on: the image
    folders' classes, or the digits of the embedded task (so that other folders are not scored as digits); None
    for an official checkpoint or a directory that does not say."""
    record = getattr(model, "trained_on", None)
    if not record:
        return None
    return EMBEDDED_CLASSES if record["task"] == "embedded" else tuple(record["classes"])


def default_supernet(seed: int | None = None) -> tuple[Any, Any]:
    """The embedded default (shipped in deploy_nas/assets, rebuilt by `make default-supernet`), or with `seed` a
    random initialisation of the same family and space."""
    if seed is None:
        return load_supernet_dir(DEFAULT_DIR)
    meta = read_supernet_meta(DEFAULT_DIR)
    fam = FAMILIES.get(meta["family"])
    space = fam.space_from_dict(meta["space"])
    return fam.build_supernet(space, seed), space


def load_supernet(source: str | Path | None = None, family: str | None = None, options: Any = None,
                  option_pairs: Sequence[str] = (), **given: Any) -> tuple[Any, Any]:
    """A supernet and (when known) its space from: None (the embedded default), a supernet directory, or an
    official checkpoint file (read with the family's import options)."""
    if source is not None:
        as_path(source, CheckpointError, "load_supernet's source (a supernet directory or checkpoint file; None: the "
                "embedded default)")
    if family is not None:
        FAMILIES.get(family)  # an unknown name fails here, listing the registered families
    if source is None:
        model, space = default_supernet()
        if family is not None and model.family != family:
            raise CheckpointError(f"the embedded default supernet is {model.family!r}, not {family!r}; pass "
                                  f"--checkpoint or --supernet for a {family} supernet")
        return model, space
    path = Path(source)
    if path.is_dir():
        return load_supernet_dir(path, family)
    return load_official(path, family, options, option_pairs, **given)


__all__ = ["DEFAULT_DIR", "EMBEDDED_CLASSES", "check_space_fits", "default_supernet", "load_official",
           "load_supernet", "load_supernet_dir", "read_supernet_meta", "resolve_family", "save_supernet",
           "trained_classes", "trained_on_of"]
