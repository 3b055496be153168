"""Tiny NASViT supernets with random weights scaled so logits are O(1), random stored BatchNorm statistics and
switchable scales away from their initial 1e-4 (so that every fold and every row choice shows in the output)."""
from __future__ import annotations

import random

import torch

from deploy_nas.family import FAMILIES
from deploy_nas.spaces import SPACES
from deploy_nas.spaces.nasvit import NASViTSpace
from deploy_nas.supernets.nasvit import NASViTSupernet


def tiny_space() -> NASViTSpace:
    return SPACES.get("nasvit-tiny")


@torch.no_grad()
def random_supernet(space: NASViTSpace | None = None, seed: int = 0) -> NASViTSupernet:
    """Weights ~ N(0, 1/fan_in), norm and BN weights 1 + N(0, .1), biases N(0, .1), stored statistics mean
    N(0, .1) and var U(.5, 1.5), rescale tables N(1, .3) (their effective scale is that times 8 / C)."""
    model = FAMILIES.get("nasvit").build_supernet(space or tiny_space(), seed)
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        if "rescale" in name:
            p.copy_(1 + 0.3 * noise)
        elif p.dim() == 1:
            p.copy_(1 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
        else:
            p.copy_(noise / max(1, p[0].numel()) ** 0.5)
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(0.1 * torch.randn(b.shape, generator=g))
        elif name.endswith("running_var"):
            b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return model.eval()


def images(n: int = 2, size: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def configs(space: NASViTSpace, n: int, seed: int = 0, resolution: int | None = None) -> list:
    """min, max and n random configs (at `resolution` when given)."""
    rng = random.Random(seed)
    out = [space.sample(rng, "min"), space.sample(rng, "max")] + [space.sample(rng) for _ in range(n)]
    if resolution is None:
        return out
    from dataclasses import replace

    return [replace(c, resolution=resolution) for c in out]
