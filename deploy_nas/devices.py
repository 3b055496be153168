"""Devices: what "cpu" / "cuda" / "cuda:N" mean here, one resolution for training, search and the torch engine."""
from __future__ import annotations

import torch

from deploy_nas.errors import BackendUnavailable


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None -> cpu; "cuda" -> this process's current CUDA device (the one torchrun's LOCAL_RANK selected)."""
    try:
        dev = torch.device(device or "cpu")
    except (RuntimeError, TypeError) as err:
        raise BackendUnavailable(f"device {str(device)[:40]!r} is not a torch device ({err}); use cpu or cuda") \
            from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailable(f"device {dev} asked for but torch.cuda.is_available() is False; use cpu")
        return torch.device("cuda", torch.cuda.current_device() if dev.index is None else dev.index)
    if dev.type != "cpu":
        raise BackendUnavailable(f"device {dev} is not supported; use cpu or cuda")
    return dev
