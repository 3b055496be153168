"""supernet + config -> a fresh dense model of whatever arch the family describes (the supernet is left untouched).

`materialize` asks the supernet for the subnet's state (`subnet_state`: the DenseSpec, the sliced weights and the
folds they need), applies the folding passes (pure functions, `deploy_nas.folding`), and builds the dense module
through the ARCHS registry with a strict load.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from deploy_nas.dense import build_dense
from deploy_nas.errors import CheckpointError
from deploy_nas.folding import apply_folds


def materialize(supernet: Any, cfg: Any, *, calib: Any = None) -> nn.Module:
    """The dense model of `cfg`. `calib`: data for families that recalibrate BatchNorm per subnet."""
    family = getattr(supernet, "family", None)
    if not (isinstance(supernet, nn.Module) and isinstance(family, str) and hasattr(supernet, "subnet_state")):
        what = type(supernet).__name__ + (" (a dense model: it is already materialized)" if hasattr(supernet, "spec")
                                          else "")
        raise CheckpointError(f"materialize takes a supernet (from load_supernet or a family's build_supernet), "
                              f"got {what}")
    sub = supernet.subnet_state(cfg, calib=calib)
    spec = sub.spec
    trained_on = getattr(supernet, "trained_on", None)  # what the labels mean travels with the model (spec.json)
    if trained_on is not None:
        spec = replace(spec, source={**spec.source, "trained_on": trained_on})
    state = apply_folds(sub.state, sub.folds)
    check_finite(state, cfg)
    model = build_dense(spec, state)
    return model.to(next(supernet.parameters()).device, torch.float32).eval()


def check_finite(state: dict[str, torch.Tensor], cfg: Any) -> None:
    """CheckpointError naming the dense weights that are not finite: the last line of defence of every family, so
    that no NaN model is built, saved or deployed (a finite checkpoint can still overflow when folded: a huge
    BatchNorm weight over a zero variance)."""
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise CheckpointError(f"the dense model of subnet {getattr(cfg, 'id', '?')} would hold non-finite weights "
                              f"(NaN or Inf): {', '.join(bad[:8])}{' ...' if len(bad) > 8 else ''} ({len(bad)}); the "
                              "supernet's weights overflow when sliced and folded: check or re-export the checkpoint")
