"""Supernets per family, the official checkpoint importers, our own supernet directory format, and the default."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from deploy_nas.errors import CheckpointError, InvalidSubnetConfig
from deploy_nas.io import atomic_dir
from deploy_nas.registry import Registry
from deploy_nas.spaces import SPACES, AutoFormerSpace, load_space
from deploy_nas.supernets.autoformer import (AutoFormerArch, AutoFormerSupernet, arch_from_state_dict,
                                             check_state_dict)
from deploy_nas.supernets.checkpoint import extract_state_dict, read_checkpoint

FAMILIES: Registry[type] = Registry("family", InvalidSubnetConfig)
FAMILIES.register("autoformer", AutoFormerSupernet)
SUPERNET_FILE, WEIGHTS_FILE = "supernet.json", "weights.safetensors"
DEFAULT_SPACE = "autoformer-tiny"
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "assets" / "default_supernet"


def load_official(path: str | Path, change_qkv: bool = True, gp: bool = True, pre_norm: bool = True,
                  head_dim: int | None = None) -> AutoFormerSupernet:
    """An AutoFormer supernet from an official checkpoint (.pth/.pth.tar with {'model': ...}, or safetensors)."""
    sd = extract_state_dict(read_checkpoint(path), str(path))
    arch = arch_from_state_dict(sd, change_qkv=change_qkv, gp=gp, pre_norm=pre_norm, head_dim=head_dim)
    model = AutoFormerSupernet(arch)
    check_state_dict(model, sd)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def save_supernet(model: AutoFormerSupernet, out: str | Path, space: AutoFormerSpace | None = None,
                  extra: dict[str, Any] | None = None, force: bool = False) -> Path:
    """Our supernet directory: supernet.json (family, arch, space) + weights.safetensors in the official key layout."""
    meta = {"family": model.family, "arch": model.arch.to_dict(), "space": space.to_dict() if space else None,
            **(extra or {})}
    with atomic_dir(out, force) as tmp:
        (tmp / SUPERNET_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS_FILE))
    return Path(out)


def read_supernet_meta(directory: str | Path) -> dict[str, Any]:
    meta_path = Path(directory) / SUPERNET_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{directory} is not a supernet directory (no {SUPERNET_FILE}); "
                              "create one with `deploy-nas train`")
    try:
        return json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{meta_path} is corrupt ({err})") from err


def load_supernet_dir(directory: str | Path, family: str | None = None) -> tuple[AutoFormerSupernet, AutoFormerSpace | None]:
    meta = read_supernet_meta(directory)
    if family is not None and meta.get("family") != family:
        raise CheckpointError(f"{directory} holds a {meta.get('family')!r} supernet, not {family!r}; "
                              f"pass --family {meta.get('family')}")
    model = AutoFormerSupernet(AutoFormerArch.from_dict(meta["arch"]))
    sd = extract_state_dict(read_checkpoint(Path(directory) / WEIGHTS_FILE), str(directory))
    check_state_dict(model, sd)
    model.load_state_dict(sd, strict=True)
    space = AutoFormerSpace.from_dict(meta["space"]) if meta.get("space") else None
    return model.eval(), space


def default_supernet(seed: int | None = None) -> tuple[AutoFormerSupernet, AutoFormerSpace]:
    """The embedded default: the `autoformer-tiny` supernet trained on the digits set, shipped with the package
    (`make default-supernet` rebuilds it). With `seed`, or if the weights are absent, a random initialisation."""
    if seed is None and (DEFAULT_DIR / WEIGHTS_FILE).is_file():
        return load_supernet_dir(DEFAULT_DIR, "autoformer")
    space = SPACES.get(DEFAULT_SPACE)
    model = AutoFormerSupernet(AutoFormerArch.from_space(space))
    model.reset_parameters(torch.Generator().manual_seed(seed or 0))
    return model.eval(), space


def load_supernet(source: str | Path | None = None, family: str = "autoformer",
                  **flags: Any) -> tuple[AutoFormerSupernet, AutoFormerSpace | None]:
    """A supernet and (when known) its space from: None (the embedded default), a supernet directory, or an
    official checkpoint file (`flags` are the import options of `load_official`; the others record their own)."""
    FAMILIES.get(family)
    if source is None:
        return default_supernet()
    path = Path(source)
    if path.is_dir():
        return load_supernet_dir(path, family)
    model = load_official(path, **flags)
    return model, space_for_arch(model.arch)


def space_for_arch(arch: AutoFormerArch) -> AutoFormerSpace | None:
    """The registered space whose super sizes match a supernet (the official T/S/B checkpoints), if any."""
    for name in SPACES:
        s = SPACES.get(name)
        if (s.super_embed_dim, s.super_depth, int(s.super_embed_dim * s.super_mlp_ratio), s.img_size,
                s.patch_size, s.num_classes) == (arch.embed_dim, arch.depth, arch.mlp_hidden, arch.img_size,
                                                 arch.patch_size, arch.num_classes):
            return s
    return None


__all__ = ["AutoFormerArch", "AutoFormerSupernet", "FAMILIES", "load_official", "load_supernet", "save_supernet",
           "default_supernet", "space_for_arch", "load_space"]
