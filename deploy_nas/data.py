"""Data: the embedded digits (scikit-learn's copy, shipped inside its wheel: no download), the embedded task made
from them (cluttered digits, generated deterministically), and an ImageFolder-style loader for real images, all
giving float32 NCHW arrays normalized with ImageNet mean/std.
"""
from __future__ import annotations

import functools
import math
import sys
import unicodedata
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
    classes: tuple[str, ...] | None = None  # image folders: the class name of each label; the embedded task: None

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


def _image_files(root: Path) -> list[Path]:
    """The image files under `root`, sorted; a typed error when `root` is no folder or holds none."""
    if not root.is_dir():
        raise DataError(f"data directory {root} " + ("is a file; point at a folder of images (or of class folders)"
                                                     if root.exists() else "does not exist"))
    files = sorted(_walk_images(root))
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}; point at a folder of images")
    loose = [p for p in files if p.parent == root]
    if loose and len(loose) < len(files):  # class folders, and images beside them: ImageFolder ignores those
        print(f"note: ignored {len(loose)} image(s) directly in {root} beside its class folders (as torchvision's "
              f"ImageFolder does), e.g. {loose[0].name}; move them into a class folder to use them", file=sys.stderr)
        files = [p for p in files if p.parent != root]
    return files


def _walk_images(root: Path) -> list[Path]:
    """Every file under `root` with an image suffix (any case; hidden files and folders too; a symlink to a file
    counts, a broken one does not), following symlinks to folders as torchvision's ImageFolder does (os.walk with
    followlinks=True): a class folder that is a link is read under its link's name. A link back to a folder it is
    inside (a cycle) is a DataError, never an endless walk; two links to one folder (no cycle) read it twice, as
    ImageFolder does. An unreadable folder is skipped, as before. Unsorted: the caller sorts."""
    import os

    def identity(path: Path) -> tuple[int, int]:
        st = os.stat(path)
        return st.st_dev, st.st_ino

    files: list[Path] = []
    stack = [(root, (identity(root),))]  # folders to walk, each with the real folders on its way (itself included)
    while stack:
        folder, ancestors = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:  # unreadable (permissions, vanished): skipped
            continue
        later = []  # sub-folders, walked in name order (so that the first cycle met is always the same one)
        for entry in entries:
            path = folder / entry.name
            try:  # is_dir and is_file follow a symlink; a broken one is neither
                key = identity(path) if entry.is_dir() else None
                image = key is None and path.suffix.lower() in IMAGE_SUFFIXES and entry.is_file()
            except OSError:  # a link loop or a target it cannot stat: neither a folder nor a file here
                continue
            if key is not None:
                if key in ancestors:
                    raise DataError(f"{path} links back to {path.resolve()}, a folder it is inside (a symlink cycle); "
                                    "remove the link or point it outside the data folder's tree")
                later.append((path, (*ancestors, key)))
            elif image:
                files.append(path)
        stack.extend(reversed(later))
    return files


def one_form(classes: list[str] | tuple[str, ...]) -> list[str]:
    """Class names in one Unicode form (NFC): a folder copied from macOS has NFD names, the same classes."""
    return [unicodedata.normalize("NFC", c) for c in classes]


def _class_of(path: Path, root: Path) -> str:
    """An image's class: the folder directly under `root` that holds it, at any depth (torchvision's ImageFolder:
    `root/a/x/1.png` is class "a", so `root/a/x/` and `root/b/x/` stay two classes), "" for one directly under
    `root` (so a flat train/ and a flat val/ have the same one class, whatever their folders are called)."""
    parts = path.relative_to(root).parts
    return one_form([parts[0]])[0] if len(parts) > 1 else ""


def class_names(classes: list[str] | tuple[str, ...], limit: int = 80) -> str:
    """Class names for a one-line message (quoted, so a newline in a folder name stays on the line), shortened."""
    text = ", ".join(repr(c) if c else "(images directly in the folder)" for c in classes)
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def data_record(split: Split) -> dict[str, object]:
    """What a supernet was trained on, for its supernet.json ("trained_on"): the embedded task, or image folders
    with the class name of each label."""
    if split.classes is None:
        return {"task": "embedded"}
    return {"task": "image folders", "classes": list(split.classes)}


def _classes_of(files: list[Path], root: Path) -> list[str]:
    """The class names of the images `files` under `root`, in label order (sorted)."""
    return sorted({_class_of(p, root) for p in files})


def image_folder_splits(data_dir: str | Path, names: tuple[str, ...], img_size: int, in_chans: int,
                        num_classes: int, classes: tuple[str, ...] | list[str] | None = None,
                        owner: str = "the supernet") -> dict[str, Split]:
    """The image folders DIR/<name> for each of `names`, labelled by one class list: `classes` when given (those a
    supernet was trained on, `owner` in messages), else the class folders of DIR/train when there is one (what a
    supernet trained on DIR learned its labels from), else of the first of `names`, so a class has the same label
    in every split and every command. Before any image is decoded: a class folder that list lacks is a typed error
    (a class missing from a split is fine), and so is a list with more classes than the model's head
    (`num_classes`)."""
    data_dir = Path(data_dir)
    files = {name: _image_files(data_dir / name) for name in names}  # each folder walked once
    trained = classes is not None  # the classes a supernet was trained on, not a split's own
    reference: str | Path
    if classes is not None:  # in one Unicode form, as the folders' names are read
        classes, reference = one_form(classes), owner
    else:
        ref = "train" if (data_dir / "train").is_dir() else names[0]
        reference = data_dir / ref
        classes = _classes_of(files[ref] if ref in files else _image_files(reference), reference)
    if len(classes) > num_classes:
        raise DataError(f"{reference} has {len(classes)} classes ({class_names(classes)}) but the model's head has "
                        f"{num_classes}; use data with at most {num_classes} classes")
    for name in names:  # every split's folders first: a stray class is named before hours of decoding
        _check_classes(data_dir / name, _classes_of(files[name], data_dir / name), classes, reference,
                       trained=trained)
    return {name: _load_images(data_dir / name, files[name], img_size, in_chans, classes) for name in names}


def _check_classes(root: Path, found: list[str], classes: list[str], where: str | Path,
                   trained: bool = False) -> None:
    """A class folder of `root` that `classes` (those of `where`: a split, or with `trained` a supernet's) lacks
    is a DataError."""
    extra = [c for c in found if c not in classes]
    if not extra:
        return
    folders = f"class folder{'s' if len(extra) > 1 else ''} {class_names(extra)}"
    if trained:
        raise DataError(f"{root} has {folders} that {where} was not trained on (its {len(classes)} classes: "
                        f"{class_names(classes)}); give image folders of those classes only")
    raise DataError(f"{root} has {folders} that {where} does not have (its {len(classes)} classes: "
                    f"{class_names(classes)}); each split's class folders must be among those of {where}, so that "
                    "a label means one class in every split")


# What a broken or hostile image file makes PIL raise, opening or decoding it, besides UnidentifiedImageError and
# DecompressionBombError (more than twice PIL's MAX_IMAGE_PIXELS: a few KB of PNG that would decode to gigabytes).
_BAD_IMAGE = (OSError, ValueError, SyntaxError, EOFError)


def spread(total: int, limit: int) -> list[int]:
    """At most `limit` indices of range(total), evenly spread over it (all of them when there are no more)."""
    return [i * total // limit for i in range(limit)] if total > limit else list(range(total))


def load_image_folder(root: str | Path, img_size: int, in_chans: int = 3, limit: int | None = None,
                      classes: list[str] | tuple[str, ...] | None = None, reference: str | Path | None = None) -> Split:
    """Images under `root` (class sub-folders, or flat; `limit`: at most that many, evenly spread over the sorted
    files), resized (shorter side to img_size * 256/224, bicubic), centre-cropped to img_size and normalized: the
    standard evaluation transform. Labels index `classes` (the ordered class names of the split named `reference`
    in messages) when given, else the sorted class folders of `root`; a class folder not in `classes` is a typed
    error."""
    root = Path(root)
    files = _image_files(root)
    if limit:  # evenly spread over the sorted files: every class folder, not the first few
        files = [files[i] for i in spread(len(files), limit)]
    found = _classes_of(files, root)
    classes = found if classes is None else one_form(classes)
    _check_classes(root, found, classes, reference if reference is not None else "the class list given")
    return _load_images(root, files, img_size, in_chans, classes)


def _load_images(root: Path, files: list[Path], img_size: int, in_chans: int, classes: list[str]) -> Split:
    """`files` under `root` through the evaluation transform, labelled by their index in `classes`."""
    from PIL import Image, UnidentifiedImageError

    index = {c: i for i, c in enumerate(classes)}
    arrays, labels = [], []
    for p in files:
        try:
            with Image.open(p) as im:
                arrays.append(_eval_transform(_eight_bit(im).convert("RGB" if in_chans == 3 else "L"), img_size))
        except Image.DecompressionBombError as err:
            raise DataError(f"{p} is too large to decode ({err}); remove it from {root}") from err
        except (UnidentifiedImageError, *_BAD_IMAGE) as err:
            why = " ".join(str(err).split())[:200] or type(err).__name__  # one line, however the error reads
            raise DataError(f"{p} is not a readable image ({why}); remove it from {root}") from err
        labels.append(index[_class_of(p, root)])
    rgb = np.stack(arrays).astype(np.float32) / 255.0
    return Split(_normalize(rgb if rgb.ndim == 4 else rgb[..., None]), np.array(labels, dtype=np.int64),
                 tuple(classes))


def _eight_bit(im):
    """A grayscale image of more than 8 bits scaled to 8, by what its mode and values say: a 16-bit PNG (mode I;16)
    by 1/257 (PIL's convert() clipped it: all but its darkest 1/256 turned white); a 32-bit integer image (mode I:
    16-bit PGMs and TIFFs) with values up to 255 as it is, up to 65535 by 1/257; a float image (mode F) with values
    up to 1 by 255 (convert() made it black), up to 255 as it is. Negative values, or larger ones, have no one
    meaning of white: a ValueError."""
    from PIL import Image

    if not (im.mode.startswith("I") or im.mode == "F"):
        return im
    a = np.asarray(im, dtype=np.float64)
    low, high = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    top = 65535.0 if im.mode.startswith("I;16") else next(
        (t for t in ((1.0, 255.0) if im.mode == "F" else (255.0, 65535.0)) if high <= t), None)
    if top is None or low < 0 or not np.isfinite(a).all():
        kind = "float" if im.mode == "F" else "32-bit integer"
        raise ValueError(f"a {kind} image with values {low:g}..{high:g}, not 0..{255 if im.mode == 'I' else 1} or "
                         f"0..{65535 if im.mode == 'I' else 255}; save it as 8 or 16 bits")
    return Image.fromarray(np.rint(a * (255.0 / top)).astype(np.uint8), "L")


def _eval_transform(im, img_size: int) -> np.ndarray:
    """Resize the shorter side to img_size * 256/224 (bicubic), then take the centre img_size square.

    The crop box is mapped back into the source image's coordinates and only the source pixels the bicubic filter
    reads for it are resampled: the work and memory are bounded by the crop (at most the source image), never by the
    resized whole image. (Resizing the whole image first made a 1x100000 px PNG of 274 bytes a 256 x 25.6M px
    intermediate at img_size 224: about 20 GB.) The two passes run as PIL runs them for a whole image, horizontal then
    vertical (one `resize(box=)` call may take them in the other order, which moves pixels by several levels), so
    the pixels are those of resizing the whole image and cropping, up to float rounding (a level at most)."""
    from PIL import Image

    short = int(round(img_size * 256 / 224))
    w, h = im.size
    if not (w and h):
        raise ValueError(f"the image is {w}x{h} px")
    scale = short / min(w, h)
    big_w, big_h = max(short, round(w * scale)), max(short, round(h * scale))  # the whole image, resized
    left, top = (big_w - img_size) // 2, (big_h - img_size) // 2  # the crop, in the resized image
    sx, sy = w / big_w, h / big_h  # source pixels per resized pixel
    x0, x1 = left * sx, min(w, (left + img_size) * sx)  # the crop, in the source image
    y0, y1 = top * sy, min(h, (top + img_size) * sy)
    # The source pixels the filter reads (bicubic: 2 px, times the downscale factor, each side), plus one for rounding;
    # cropped so the box coordinates PIL takes as float32 stay small (exact enough) whatever the image's size.
    rx, ry = 2 * max(sx, 1.0) + 1, 2 * max(sy, 1.0) + 1
    c0, c1 = max(0, math.floor(x0 - rx)), min(w, math.ceil(x1 + rx))
    r0, r1 = max(0, math.floor(y0 - ry)), min(h, math.ceil(y1 + ry))
    region = im.crop((c0, r0, c1, r1))
    rows = region.resize((img_size, r1 - r0), Image.BICUBIC, box=(x0 - c0, 0, x1 - c0, r1 - r0))  # horizontal
    out = rows.resize((img_size, img_size), Image.BICUBIC, box=(0, y0 - r0, img_size, y1 - r0))  # vertical
    return np.asarray(out)


def calibration_images(img_size: int, in_chans: int = 3, n: int = 64, data_dir: str | Path | None = None) -> np.ndarray:
    """Images for int8 calibration: from `data_dir` when given, else the embedded set's train split."""
    if data_dir is not None:
        return load_image_folder(data_dir, img_size, in_chans, limit=n).images
    return embedded_images(n, img_size, in_chans, split="train")
