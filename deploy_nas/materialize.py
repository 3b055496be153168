"""supernet + config -> a fresh dense model (the supernet is left untouched)."""
from __future__ import annotations

from typing import Any

import torch

from deploy_nas.dense import VisionTransformer, build_dense


def materialize(supernet: Any, cfg: Any) -> VisionTransformer:
    """Slice the subnet's weights out of the supernet and load them into a plain dense ViT."""
    spec, state = supernet.subnet_state(cfg)
    model = build_dense(spec, state)
    return model.to(next(supernet.parameters()).device, torch.float32).eval()
