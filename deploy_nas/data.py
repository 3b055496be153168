"""Data: the embedded digits set (scikit-learn's copy, shipped inside its wheel: no download) and an
ImageFolder-style loader for real images, both giving float32 NCHW arrays normalized with ImageNet mean/std.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploy_nas.errors import DataError

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


def embedded_images(n: int, img_size: int, in_chans: int = 3, split: str = "test") -> np.ndarray:
    """A fixed batch of `n` real images from the embedded set (for parity and int8 calibration)."""
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
