"""Data: the embedded digits (scikit-learn's copy, shipped inside its wheel: no download), the embedded task made
from them (cluttered digits, generated deterministically), and an ImageFolder-style loader for real images, all
giving float32 NCHW arrays normalized with ImageNet mean/std.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deploy_nas.errors import DataError

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, C, H, W) float32, normalized
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int):
        for i in range(0, len(self), batch_size):
            yield self.images[i:i + batch_size], self.labels[i:i + batch_size]


def _normalize(rgb: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) in [0, 1] -> (N, 3, H, W) normalized with ImageNet statistics."""
    mean, std = IMAGENET_MEAN[: rgb.shape[-1]], IMAGENET_STD[: rgb.shape[-1]]
    return np.ascontiguousarray(((rgb - mean) / std).transpose(0, 3, 1, 2), dtype=np.float32)


def _resize(gray: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of (N, h, w) images in [0, 1] to (N, size, size), with torch (no PIL round trip)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(gray.astype(np.float32))[:, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()


def digits_splits(img_size: int = 32, in_chans: int = 3, seed: int = 0) -> dict[str, Split]:
    """scikit-learn's 1,797 8x8 digits as small RGB images, split 60/20/20 into train/val/test with a fixed seed.

    Each digit is drawn white-on-black, resized bilinearly to `img_size`, and tinted per class-independent random
    colour so the three channels differ (a fixed function of the seed, not of the label).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = _resize(digits.images / 16.0, img_size).clip(0, 1)  # (N, S, S)
    rng = np.random.default_rng(seed)
    tint = rng.uniform(0.5, 1.0, size=(len(gray), 1, 1, in_chans)).astype(np.float32)
    rgb = gray[..., None] * tint  # (N, S, S, C)
    order = rng.permutation(len(gray))
    n_train, n_val = int(0.6 * len(order)), int(0.2 * len(order))
    parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    return {k: Split(_normalize(rgb[idx]), digits.target[idx].astype(np.int64)) for k, idx in parts.items()}


# The embedded task: how many renderings of each base digit per split, and the rendering ranges.
RENDERS = {"train": 4, "val": 1, "test": 2}
SCALE, ROTATE, SHEAR = (0.55, 0.85), 0.35, 0.2  # digit height as a fraction of the canvas; radians
OFFSET = 0.35  # how far off-centre a digit may sit, as a fraction of the room the canvas leaves around it
CLUTTER, CLUTTER_LEVEL, NOISE = 2, 0.6, 0.1  # fragments of other digits per image, their brightness; pixel noise


@functools.lru_cache(maxsize=4)
def cluttered_digits_splits(img_size: int = 48, in_chans: int = 3, seed: int = 0) -> dict[str, Split]:
    """The embedded task the default supernet and the demo use: scikit-learn's digits, split 60/20/20 by base digit
    (no digit appears in two splits), each rendered `RENDERS[split]` times on a noisy, tinted canvas of `img_size`
    px at a random scale, rotation, shear and position, among `CLUTTER` fragments of other digits. Deterministic in
    `seed` (generated in a second; nothing downloaded). Hard enough that small and large subnets differ clearly."""
    import torch

    base, targets = _digits()
    g = torch.Generator().manual_seed(seed)
    parts = _parts(len(base), g)
    return {name: _rendered(base, targets, idx.repeat(RENDERS[name]), img_size, in_chans, g)
            for name, idx in parts.items()}


# Search scores subnets on more renderings of the val digits than training reports on: with one rendering (359
# images) a subnet's top-1 moves in steps of 0.28 points and the demo's subnets, 69-75% apart, tie in whole groups.
SEARCH_VAL_RENDERS = 4


@functools.lru_cache(maxsize=4)
def search_splits(img_size: int = 48, in_chans: int = 3, seed: int = 0) -> dict[str, Split]:
    """The embedded task as the search sees it: the test split of `cluttered_digits_splits`, and a val split of
    `SEARCH_VAL_RENDERS` renderings of the same val digits (the first is the training's val split; the others come
    from a second random stream, so the train and test renderings are those of `cluttered_digits_splits`)."""
    import torch

    splits = cluttered_digits_splits(img_size, in_chans, seed)
    base, targets = _digits()
    idx = _parts(len(base), torch.Generator().manual_seed(seed))["val"]
    more = _rendered(base, targets, idx.repeat(SEARCH_VAL_RENDERS - 1), img_size, in_chans,
                     torch.Generator().manual_seed(seed + 1))
    val = splits["val"]
    return {"val": Split(np.concatenate([val.images, more.images]), np.concatenate([val.labels, more.labels])),
            "test": splits["test"]}


def _digits() -> tuple[torch.Tensor, np.ndarray]:
    """scikit-learn's 1,797 digits as (N, 1, 8, 8) floats in [0, 1], and their labels."""
    import torch
    from sklearn.datasets import load_digits

    digits = load_digits()
    return torch.from_numpy(digits.images / 16.0).float()[:, None], digits.target


def _parts(n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """The 60/20/20 split of the base digits (the first draw of the task's random stream)."""
    import torch

    order = torch.randperm(n, generator=g)
    n_train, n_val = int(0.6 * n), int(0.2 * n)
    return {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}


def _rendered(base: torch.Tensor, targets: np.ndarray, idx: torch.Tensor, img_size: int, in_chans: int,
              g: torch.Generator) -> Split:
    """The base digits `idx` (repeats give new renderings), each on its own cluttered canvas."""
    import torch

    canvas = _render(base[idx], img_size, g, SCALE)  # (n, 1, S, S)
    for _ in range(CLUTTER):  # a window of another digit (of the same split) at a random place
        other = _render(base[idx[torch.randint(len(idx), (len(idx),), generator=g)]], img_size, g, SCALE)
        canvas = torch.maximum(canvas, other * _window(len(idx), img_size, g) * CLUTTER_LEVEL)
    tint = 0.4 + 0.6 * torch.rand(len(idx), in_chans, 1, 1, generator=g)
    background = 0.3 * torch.rand(len(idx), in_chans, 1, 1, generator=g)
    rgb = background + (tint - background) * canvas + NOISE * torch.randn(len(idx), in_chans, img_size, img_size,
                                                                           generator=g)
    rgb = rgb.clamp(0, 1).permute(0, 2, 3, 1).numpy()  # (n, S, S, C)
    return Split(_normalize(rgb), targets[idx.numpy()].astype(np.int64))


def _render(digits: torch.Tensor, size: int, g: torch.Generator, scale: tuple[float, float]) -> torch.Tensor:
    """(n, 1, 8, 8) digits drawn on (n, 1, size, size) canvases by a random similarity + shear transform."""
    import torch
    import torch.nn.functional as F

    n = len(digits)
    s = scale[0] + (scale[1] - scale[0]) * torch.rand(n, generator=g)  # digit height / canvas
    angle = ROTATE * (2 * torch.rand(n, generator=g) - 1)
    shear = SHEAR * (2 * torch.rand(n, generator=g) - 1)
    shift = OFFSET * (1 - s)[:, None] * (2 * torch.rand(n, 2, generator=g) - 1)  # the digit stays on the canvas
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack([torch.stack([cos, -sin + shear, -(cos * shift[:, 0] + (-sin + shear) * shift[:, 1])], -1),
                         torch.stack([sin, cos, -(sin * shift[:, 0] + cos * shift[:, 1])], -1)], 1)  # (n, 2, 3)
    big = F.interpolate(digits, size=(32, 32), mode="bilinear", align_corners=False)
    grid = F.affine_grid(theta, [n, 1, size, size], align_corners=False)
    return F.grid_sample(big, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0, 1)


def _window(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """(n, 1, size, size) 0/1 masks of one random square of a quarter to a third of the canvas side."""
    import torch

    side = (size * (0.25 + 0.1 * torch.rand(n, generator=g))).long()
    top = (torch.rand(n, generator=g) * (size - side)).long()
    left = (torch.rand(n, generator=g) * (size - side)).long()
    r = torch.arange(size)
    rows = (r[None] >= top[:, None]) & (r[None] < (top + side)[:, None])  # (n, size)
    cols = (r[None] >= left[:, None]) & (r[None] < (left + side)[:, None])
    return (rows[:, :, None] & cols[:, None, :]).float()[:, None]


def embedded_splits(img_size: int, in_chans: int = 3, seed: int = 0) -> dict[str, Split]:
    """The embedded task training, search and the demo use when no image folder is given: the cluttered digits."""
    return cluttered_digits_splits(img_size, in_chans, seed)


def embedded_images(n: int, img_size: int, in_chans: int = 3, split: str = "test") -> np.ndarray:
    """A fixed batch of `n` real images (the plain digits: any real images do, and these cost nothing to make) for
    parity batches and int8 calibration."""
    images = digits_splits(img_size, in_chans)[split].images
    if n > len(images):
        images = np.concatenate([images] * (n // len(images) + 1))
    return images[:n]


def load_image_folder(root: str | Path, img_size: int, in_chans: int = 3, limit: int | None = None) -> Split:
    """Images under `root` (class sub-folders, or flat), resized (shorter side to img_size * 256/224, bicubic),
    centre-cropped to img_size and normalized: the standard evaluation transform."""
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data directory {root} " + ("is a file; point at a folder of images (or of class folders)"
                                                     if root.exists() else "does not exist"))
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}; point at a folder of images")
    files = files[:limit] if limit else files
    classes = sorted({p.parent.name for p in files})
    arrays, labels = [], []
    for p in files:
        try:
            with Image.open(p) as im:
                arrays.append(_eval_transform(im.convert("RGB" if in_chans == 3 else "L"), img_size))
        except (UnidentifiedImageError, OSError) as err:
            raise DataError(f"{p} is not a readable image ({err}); remove it from {root}") from err
        labels.append(classes.index(p.parent.name))
    rgb = np.stack(arrays).astype(np.float32) / 255.0
    return Split(_normalize(rgb if rgb.ndim == 4 else rgb[..., None]), np.array(labels, dtype=np.int64))


def _eval_transform(im, img_size: int) -> np.ndarray:
    from PIL import Image

    short = int(round(img_size * 256 / 224))
    w, h = im.size
    scale = short / min(w, h)
    im = im.resize((max(short, round(w * scale)), max(short, round(h * scale))), Image.BICUBIC)
    w, h = im.size
    left, top = (w - img_size) // 2, (h - img_size) // 2
    return np.asarray(im.crop((left, top, left + img_size, top + img_size)))


def calibration_images(img_size: int, in_chans: int = 3, n: int = 64, data_dir: str | Path | None = None) -> np.ndarray:
    """Images for int8 calibration: from `data_dir` when given, else the embedded set's train split."""
    if data_dir is not None:
        return load_image_folder(data_dir, img_size, in_chans, limit=n).images
    return embedded_images(n, img_size, in_chans, split="train")
