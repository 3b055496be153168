"""Top-1 accuracy of a model (x -> logits) on a split: the one evaluation loop of search, training and the demo."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


@torch.no_grad()
def top1(model: nn.Module, split: Any, batch: int = 512, device: torch.device | str | None = None) -> float:
    """Fraction of `split` (images, labels as numpy arrays; `.batches(n)`) whose argmax logit is the label."""
    if len(split) == 0:
        raise ValueError("cannot evaluate on an empty split")
    model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    correct = 0
    for x, y in split.batches(batch):
        pred = model(torch.from_numpy(x).to(device)).argmax(-1).cpu().numpy()
        correct += int((pred == y).sum())
    return correct / len(split)
