"""Image folders (--data, --calib-data) from a hostile tester: decompression bombs, absurd aspect ratios, class labels
numbered per split, and more classes than the model's head. Each test failed on the code before its fix."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from deploy_nas.data import _eval_transform, calibration_images, load_image_folder
from deploy_nas.errors import DataError
from deploy_nas.workflows import search_data, train_data
from tests.cli.test_extract_info import run
from tests.cli.test_reliability import one_error_line


def _png(path, size=(20, 16), value=0, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def _bomb(path):
    """A 24 KB PNG of 200 Mpx: over PIL's hard limit (2 * MAX_IMAGE_PIXELS)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("1", (20000, 10000)).save(path)
    return path


def _split(root, classes, per_class=1):
    """root/<class>/<i>.png, each class an image of its own colour (a function of the class's name)."""
    for c in classes:
        for i in range(per_class):
            _png(root / c / f"{i}.png", value=(ord(c[0]) * 7 % 256,) * 3)
    return root


def _space(num_classes=10, img_size=16, in_chans=3):
    return SimpleNamespace(img_size=img_size, in_chans=in_chans, num_classes=num_classes)


# 1. Decompression bombs: a typed error naming the file, not PIL's DecompressionBombError.

def test_a_decompression_bomb_is_a_data_error_naming_the_file(tmp_path):
    _png(tmp_path / "imgs" / "a" / "ok.png")
    bomb = _bomb(tmp_path / "imgs" / "a" / "big.png")
    assert bomb.stat().st_size < 100_000
    with pytest.raises(DataError, match="big.png"):
        load_image_folder(tmp_path / "imgs", 16)
    with pytest.raises(DataError, match="big.png"):
        calibration_images(16, 3, n=8, data_dir=tmp_path / "imgs")


def test_search_cli_with_a_decompression_bomb_prints_one_error_line(tmp_path):
    _split(tmp_path / "data" / "val", "12")  # digit classes: the embedded default was trained on the digits
    _split(tmp_path / "data" / "test", "12")
    _bomb(tmp_path / "data" / "val" / "1" / "big.png")
    line = one_error_line(run("search", "--latency-budget-ms", "5", "--data", tmp_path / "data",
                              "--out", tmp_path / "o"))
    assert "big.png" in line
    assert not (tmp_path / "o").exists()


# 2. The eval transform's memory is bounded by its output size, for any aspect ratio.

def _old_eval_transform(im, img_size):
    """The transform before the fix: resize the whole image (shorter side to img_size * 256/224), then crop."""
    short = int(round(img_size * 256 / 224))
    w, h = im.size
    scale = short / min(w, h)
    im = im.resize((max(short, round(w * scale)), max(short, round(h * scale))), Image.BICUBIC)
    w, h = im.size
    left, top = (w - img_size) // 2, (h - img_size) // 2
    return np.asarray(im.crop((left, top, left + img_size, top + img_size)))


# Transforms one image in a child whose address space is capped at 1 GB over its imports (so the code before the fix
# fails there with a MemoryError instead of taking gigabytes), and prints the output's shape, its pixels' range and
# how much the peak resident memory grew (kB).
_TRANSFORM = """
import json, resource, sys
from PIL import Image
from deploy_nas.data import _eval_transform, load_image_folder
vm = int(next(ln for ln in open("/proc/self/status") if ln.startswith("VmSize:")).split()[1]) << 10
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), vm + (1 << 30)))  # 1 GB more than the imports took
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with Image.open(sys.argv[1]) as im:
    out = _eval_transform(im.convert("RGB"), 224)
split = load_image_folder(sys.argv[2], 224)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"shape": out.shape, "low": out.min(axis=(0, 1)).tolist(), "high": out.max(axis=(0, 1)).tolist(),
                  "images": split.images.shape, "grown_kb": grown}))
"""


@pytest.mark.parametrize("size", [(1, 100_000), (100_000, 1), (3, 60_000), (1, 1_000_000)])
def test_a_thin_image_is_transformed_in_bounded_memory(tmp_path, size):
    path = _png(tmp_path / "imgs" / "thin.png", size=size, value=(200, 10, 30))
    assert path.stat().st_size < 5_000
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", _TRANSFORM, str(path), str(tmp_path / "imgs")], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]  # before: MemoryError (a 256 x 25.6M px intermediate for 1x100000)
    assert time.perf_counter() - start < 30
    got = json.loads(r.stdout)
    assert got["shape"] == [224, 224, 3] and got["images"] == [1, 3, 224, 224]
    assert all(abs(v - c) <= 1 for v, c in zip(got["low"] + got["high"], (200, 10, 30) * 2))  # stays constant
    assert got["grown_kb"] < 50_000, got["grown_kb"]  # the peak resident memory grew by under 50 MB


@pytest.mark.parametrize("name", ["china.jpg", "flower.jpg"])
def test_ordinary_images_give_the_same_pixels_as_before(name):
    """Real photos (scikit-learn's, shipped in its wheel) at several sizes and aspect ratios. The pixels may move by a
    level or two where PIL would run the whole image's two passes vertical first (Pillow 13 does for some shapes;
    the new transform always runs horizontal first, as Pillow did before): the uint8 rounding between passes."""
    from sklearn.datasets import load_sample_image

    photo = Image.fromarray(load_sample_image(name))
    for size in [(640, 427), (427, 640), (300, 200), (120, 500), (500, 90), (37, 53), (33, 33), (9, 70)]:
        im = photo.resize(size, Image.BILINEAR)
        for img_size in (16, 48, 224):
            for mode in ("RGB", "L"):
                new, old = _eval_transform(im.convert(mode), img_size), _old_eval_transform(im.convert(mode), img_size)
                assert new.shape == old.shape == (img_size, img_size, 3)[:new.ndim]
                diff = np.abs(new.astype(int) - old.astype(int))
                assert diff.max() <= 2 and diff.mean() < 0.25, (size, img_size, mode, diff.max(), diff.mean())


@pytest.mark.parametrize("size", [(1, 3000), (2, 3000), (3000, 1), (5, 400), (400, 7)])
def test_thin_images_give_the_same_centre_as_before(size):
    """A gradient along the long side: the crop is taken from the same place as before (sizes the old transform
    can still afford)."""
    ramp = (np.arange(max(size)) * 7 + 3) % 251
    pixels = np.broadcast_to(ramp[:, None] if size[1] > size[0] else ramp[None, :], size[::-1])
    im = Image.fromarray(np.stack([pixels, 255 - pixels, pixels // 2], -1).astype(np.uint8))
    for img_size in (16, 48):
        new, old = _eval_transform(im, img_size), _old_eval_transform(im, img_size)
        assert new.shape == old.shape == (img_size, img_size, 3)
        assert np.abs(new.astype(int) - old.astype(int)).max() <= 2


# 3. The splits of one data directory share one class list.

def test_train_val_and_test_share_the_train_splits_labels(tmp_path):
    _split(tmp_path / "d" / "train", "abc", per_class=2)
    _split(tmp_path / "d" / "val", "bc")
    _split(tmp_path / "d" / "test", "c")
    splits = train_data(_space(), tmp_path / "d")
    assert splits["train"].labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert splits["val"].labels.tolist() == [1, 2]  # before: b was 0 in val
    assert splits["test"].labels.tolist() == [2]  # before: c was 0 in test
    # the same class's image gives the same pixels in every split: labels and images agree across splits
    assert np.array_equal(splits["val"].images[0], splits["train"].images[2])


def test_search_data_numbers_test_by_the_val_splits_classes(tmp_path):
    _split(tmp_path / "d" / "val", "abc")
    _split(tmp_path / "d" / "test", "bc")
    splits = search_data(_space(), tmp_path / "d")
    assert splits["val"].labels.tolist() == [0, 1, 2]
    assert splits["test"].labels.tolist() == [1, 2]


def test_search_labels_as_training_did_when_there_is_a_train_split(tmp_path):
    """A supernet trained on DIR learned DIR/train's labels: search scores DIR/val and DIR/test with the same ones,
    also when val lacks a class (it gave b and c the labels 0 and 1 before: every subnet scored on wrong labels)."""
    _split(tmp_path / "d" / "train", "abc")
    _split(tmp_path / "d" / "val", "bc")
    _split(tmp_path / "d" / "test", "ac")
    trained, searched = train_data(_space(), tmp_path / "d"), search_data(_space(), tmp_path / "d")
    assert trained["val"].labels.tolist() == searched["val"].labels.tolist() == [1, 2]
    assert trained["test"].labels.tolist() == searched["test"].labels.tolist() == [0, 2]


def test_a_limit_takes_images_spread_over_the_folder(tmp_path):
    """--calib-data and the parity batch read at most N images: spread over the sorted files (every class folder),
    not the first N (the first few classes of an ImageNet-style folder)."""
    _split(tmp_path / "d", "abcd", per_class=4)
    assert load_image_folder(tmp_path / "d", 16, limit=4).labels.tolist() == [0, 1, 2, 3]


def test_a_class_folder_the_reference_split_lacks_is_a_data_error(tmp_path):
    _split(tmp_path / "d" / "train", "ab")
    _split(tmp_path / "d" / "val", "abz")
    with pytest.raises(DataError, match=r"val has class folder 'z' that .*train does not have"):
        train_data(_space(), tmp_path / "d")
    _split(tmp_path / "e" / "val", "ab")
    _split(tmp_path / "e" / "test", "aq")
    with pytest.raises(DataError, match=r"test has class folder 'q' that .*val does not have"):
        search_data(_space(), tmp_path / "e")


def test_flat_splits_share_their_one_class(tmp_path):
    for name in ("train", "val"):
        _png(tmp_path / "d" / name / "x.png")
    splits = train_data(_space(), tmp_path / "d")
    assert splits["train"].labels.tolist() == splits["val"].labels.tolist() == [0]
    assert "test" not in splits  # no DIR/test: nothing stands in for it (val was reported as test accuracy)


def test_load_image_folder_takes_the_class_list(tmp_path):
    _split(tmp_path / "v", "bc")
    assert load_image_folder(tmp_path / "v", 16).labels.tolist() == [0, 1]
    assert load_image_folder(tmp_path / "v", 16, classes=["a", "b", "c"]).labels.tolist() == [1, 2]
    with pytest.raises(DataError, match="'c'"):
        load_image_folder(tmp_path / "v", 16, classes=["a", "b"])


# 4. More classes than the model's head: refused up front, naming both numbers.

def test_more_classes_than_the_models_head_is_a_data_error(tmp_path):
    classes = "abcdefghijkl"
    _split(tmp_path / "d" / "train", classes)
    _split(tmp_path / "d" / "val", classes)
    _split(tmp_path / "d" / "test", classes)
    with pytest.raises(DataError, match=r"12 class.*10"):
        train_data(_space(num_classes=10), tmp_path / "d")
    with pytest.raises(DataError, match=r"12 class.*10"):
        search_data(_space(num_classes=10), tmp_path / "d")
    assert len(train_data(_space(num_classes=12), tmp_path / "d")["train"]) == 12


def test_batchnorm_recalibration_reads_a_folder_only_to_the_official_amount(tmp_path, monkeypatch):
    """--calib-data for BatchNorm statistics takes at most 64 batches of 64 images (the official evaluation's), so a
    huge folder cannot make the memory unbounded; here the cap is lowered to one batch."""
    from deploy_nas import workflows
    from deploy_nas.spaces import SPACES

    for i in range(70):
        _png(tmp_path / "calib" / f"{i:03d}.png")
    monkeypatch.setattr(workflows, "BN_CALIB_BATCHES", 1)
    calib = workflows.calibration(None, tmp_path / "calib", SPACES.get("nasvit-tiny"), "nasvit")
    assert calib.mode == "recalibrate" and calib.images.shape[0] == 64


def test_nested_class_folders_are_their_top_folder(tmp_path):
    """As torchvision's ImageFolder reads them: root/a/x/1.png is class a, so root/a/x and root/b/x stay two classes
    (they merged into one class 'x' before)."""
    _png(tmp_path / "v" / "a" / "x" / "1.png")
    _png(tmp_path / "v" / "a" / "2.png")
    _png(tmp_path / "v" / "b" / "x" / "1.png")
    split = load_image_folder(tmp_path / "v", 16)
    assert split.labels.tolist() == [0, 0, 1]


def test_a_16_bit_png_is_scaled_not_clipped(tmp_path):
    """PIL's convert() clipped a 16-bit grayscale PNG (mode I;16) at 255: 99.6% of a ramp turned white."""
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "x.png")
    eight = np.rint(ramp / 257.0).astype(np.uint8)
    Image.fromarray(eight).save(tmp_path / "y.png")
    got = load_image_folder(tmp_path, 32).images
    assert np.array_equal(got[0], got[1])  # the 16-bit image reads as its 8-bit copy
