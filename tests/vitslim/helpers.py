"""Masked DeiTs with random weights (scaled so logits are O(1)) and random masks, at the sizes of the issue."""
from __future__ import annotations

from dataclasses import replace

import torch

from deploy_nas.spaces import SPACES
from deploy_nas.supernets.vitslim import SlimArch, SlimViT

# DeiT-tiny and DeiT-small as they are, but 64 px (16 tokens + CLS) so the matrix stays fast on 2 cores;
# embed dim, heads, head dim, MLP width and depth are the real ones.
SIZES = {"deit-tiny": dict(img_size=64), "deit-small": dict(img_size=64)}


def arch(size: str = "deit-tiny", **changes) -> SlimArch:
    base = SlimArch.from_space(SPACES.get(f"vitslim-{size}"))
    return replace(base, **{**SIZES.get(size, {}), **changes})


@torch.no_grad()
def random_masked(a: SlimArch, seed: int = 0) -> SlimViT:
    """Weights ~ N(0, 1/fan_in), norms 1 + N(0, .1), biases N(0, .1); masks uniform in [0, 1) (attention, MLP)
    and patch_zeta uniform in [-1, 3) (tanh from -0.76 to 0.995): every budget cuts somewhere random."""
    model = SlimViT(a)
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("patch_zeta"):
            p.copy_(4 * torch.rand(p.shape, generator=g) - 1)
        elif name.endswith("zeta"):
            p.copy_(torch.rand(p.shape, generator=g))
        elif p.dim() == 1:
            base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.5)
    return model.eval()


def images(a: SlimArch, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, a.in_chans, a.img_size, a.img_size, generator=torch.Generator().manual_seed(seed))
