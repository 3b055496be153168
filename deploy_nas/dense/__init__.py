"""The materialized form: spec.json (a DenseSpec envelope) + weights.safetensors, rebuilt through the ARCHS
registry with no supernet code and no pickle."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn

from deploy_nas.dense import vit  # noqa: F401  (registers the built-in archs)
from deploy_nas.dense.spec import ARCHS, FORMAT_VERSION, DenseSpec
from deploy_nas.dense.vit import VisionTransformer, ViTBlockSpec, ViTSpec
from deploy_nas.errors import MALFORMED, DenseModelError, DeployNASError, OutputPathError, as_path, reason
from deploy_nas.io import atomic_dir, load_safetensors

SPEC_FILE, WEIGHTS_FILE = "spec.json", "weights.safetensors"


def build_dense(spec: DenseSpec, state_dict: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """The dense model of `spec` (its arch's module); with a state dict, loaded strictly (every key, every shape)."""
    if not isinstance(spec, DenseSpec):
        raise DenseModelError(f"build_dense takes a DenseSpec (e.g. DenseSpec.from_json), got {type(spec).__name__}")
    if state_dict is not None and not isinstance(state_dict, Mapping):
        raise DenseModelError(f"build_dense takes a state dict (name -> tensor) or None, got "
                              f"{type(state_dict).__name__}")
    model = ARCHS.get(spec.arch)(spec)
    if state_dict is not None:
        try:
            model.load_state_dict(state_dict, strict=True)
        except RuntimeError as err:
            raise DenseModelError(f"weights do not match spec.json: {str(err).splitlines()[0][:300]} ... "
                                  "re-extract the model") from err
    return model.eval()


def write_dense(model: nn.Module, directory: Path) -> None:
    """Write spec.json + weights.safetensors into an existing directory."""
    from deploy_nas.io import library_write, write_text_atomic

    write_text_atomic(directory / SPEC_FILE, model.spec.to_json())
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # one metadata entry: safetensors writes its metadata map in an order that differs between processes
    with library_write(directory / WEIGHTS_FILE):
        save_file(weights, str(directory / WEIGHTS_FILE), metadata={"format": f"deploy_nas.dense/{FORMAT_VERSION}"})


def save_dense(model: nn.Module, out: str | Path, force: bool = False) -> Path:
    """Save atomically: the directory appears complete or not at all."""
    if not isinstance(model, nn.Module) or not isinstance(getattr(model, "spec", None), DenseSpec):
        hint = "; save a supernet with save_supernet" if hasattr(model, "subnet_state") else ""
        raise DenseModelError(f"save_dense takes a dense model (from materialize, build_dense or load_dense), got "
                              f"{type(model).__name__}{hint}")
    as_path(out, OutputPathError, "save_dense's output directory")
    with atomic_dir(out, force) as tmp:
        write_dense(model, tmp)
    return Path(out)


def load_dense(directory: str | Path) -> nn.Module:
    """Rebuild a dense model from spec.json + weights.safetensors (no supernet code, no pickle)."""
    directory = as_path(directory, DenseModelError, "load_dense's directory")
    spec_path, weights_path = directory / SPEC_FILE, directory / WEIGHTS_FILE
    for p in (spec_path, weights_path):
        if not p.is_file():
            raise DenseModelError(f"{p} not found; point at a directory written by `deploy-nas extract`")
    try:
        text = spec_path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise DenseModelError(f"cannot read {spec_path} ({err}); re-extract the model") from err
    try:
        with open(weights_path, "rb"):  # the OS's reason first: safetensors says "No such file" for "Permission denied"
            pass
    except OSError as err:
        raise DenseModelError(f"cannot read {weights_path} ({err.strerror or err})") from err
    try:
        state = load_safetensors(weights_path)
    except (SafetensorError, OSError, ValueError) as err:
        raise DenseModelError(f"{weights_path} is corrupt or not safetensors ({err}); re-extract the model") from err
    try:
        return build_dense(DenseSpec.from_json(text), state)
    except DeployNASError:
        raise
    except MALFORMED as err:  # sizes no dense model has (0, negative, huge), values of the wrong type
        raise DenseModelError(f"{spec_path} does not describe a model its weights fit ({type(err).__name__}: "
                              f"{reason(err, 150)}); re-extract the model") from None


__all__ = ["ARCHS", "DenseSpec", "ViTBlockSpec", "ViTSpec", "VisionTransformer", "build_dense", "save_dense",
           "load_dense", "write_dense", "SPEC_FILE", "WEIGHTS_FILE"]
