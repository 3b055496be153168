"""Shared by the S3 tests: small official-style networks and their checkpoints in the official SSSTransformer layout
(weights scaled so logits are O(1) and a 1e-5 check means something)."""
from __future__ import annotations

from pathlib import Path

import torch

from deploy_nas.family import FAMILIES
from deploy_nas.materialize import materialize
from deploy_nas.spaces.s3 import S3Config, point_space
from deploy_nas.supernets.s3 import official_state_dict
from tests.families.test_protocol import scaled_random_

OFFICIAL_YAML = Path(__file__).resolve().parents[1] / "fixtures" / "official" / "s3"

# Head dim 32 (official); 64 px with 4 x 4 patches: maps 16, 8, 4, 2; stages 1-2 shift, stage 3 is one window
# (window 4 = map), stage 4 is clipped (window 4 > map 2).
SMALL = S3Config(depths=(2, 2, 3, 2), embed_dim=(32, 64, 96, 128), mlp_ratio=((2.0,) * 2, (3.0,) * 2, (2.0,) * 3,
                                                                             (4.0,) * 2),
                 num_heads=((1,) * 2, (2,) * 2, (3,) * 3, (4,) * 2), qkv_dim=((32,) * 2, (64,) * 2, (96,) * 3,
                                                                                (128,) * 2),
                 window_size=((4,) * 2, (2,) * 2, (4,) * 3, (4,) * 2))
SMALL_IMG, SMALL_PATCH, SMALL_CLASSES = 64, 4, 10


def official_model(cfg: S3Config = SMALL, img: int = SMALL_IMG, patch: int = SMALL_PATCH,
                   classes: int = SMALL_CLASSES, seed: int = 0) -> torch.nn.Module:
    """A dense S3 model of `cfg` with scaled random weights."""
    space = point_space(cfg, "test", img, patch, num_classes=classes)
    supernet = scaled_random_(FAMILIES.get("s3").build_supernet(space, seed), seed)
    return materialize(supernet, cfg)


def official_checkpoint(path: Path, model: torch.nn.Module, edit=None) -> Path:
    """`{'model': state_dict}` as the official code saves it (index and mask buffers included)."""
    sd = official_state_dict(model)
    if edit is not None:
        edit(sd)
    torch.save({"model": sd, "epoch": 299}, path)
    return path


def images(img: int = SMALL_IMG, n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, img, img, generator=torch.Generator().manual_seed(seed))
