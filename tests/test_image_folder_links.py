"""Image folders whose class folders (or folders inside them) are symlinks are read through the links, as torchvision's
ImageFolder reads them (os.walk with followlinks=True). `Path.rglob` on Python 3.11 does not follow a link to a
folder, so a linked class folder was silently dropped: `train` ran on the other classes and exited 0, and with only
train/b linked it claimed that train "does not have" class 'b'. A link back to a folder it is inside (a cycle) is a
DataError naming the link, never an endless walk. Each test failed on the code before the fix."""
from __future__ import annotations

import json
import os
import re
import threading

import numpy as np
import pytest

from deploy_nas.data import _image_files, calibration_images, load_image_folder
from deploy_nas.errors import DataError
from deploy_nas.workflows import search_data, train_data
from tests.cli.test_reliability import one_error_line
from tests.cli_runner import run
from tests.test_image_folders import _png, _space, _split

SPLITS = ("train", "val", "test")


def _linked_dataset(tmp_path, linked=SPLITS, classes="abc", link="b", per_class=2):
    """d/<split>/<class>/<i>.png, where d/<split>/<link> is a symlink to real/<split>/<link> in the `linked` splits
    (a real folder in the others); the same images as a dataset of real folders, `copy`."""
    for root in (tmp_path / "d", tmp_path / "copy"):
        for split in SPLITS:
            _split(root / split, [c for c in classes if c != link or root.name == "copy" or split not in linked],
                   per_class)
    for split in linked:
        _split(tmp_path / "real" / split, link, per_class)
        os.symlink(tmp_path / "real" / split / link, tmp_path / "d" / split / link, target_is_directory=True)
    return tmp_path / "d", tmp_path / "copy"


def _same(a, b):
    assert a.classes == b.classes and a.labels.tolist() == b.labels.tolist()
    assert np.array_equal(a.images, b.images)


def test_a_symlinked_class_folder_in_every_split_is_a_class(tmp_path):
    data, copy = _linked_dataset(tmp_path)
    got, want = train_data(_space(), data), train_data(_space(), copy)
    for split in SPLITS:
        assert got[split].classes == ("a", "b", "c"), split  # b was dropped: ("a", "c")
        assert got[split].labels.tolist() == [0, 0, 1, 1, 2, 2]
        _same(got[split], want[split])
    searched = search_data(_space(), data)
    _same(searched["val"], want["val"])


def test_only_train_b_linked_is_not_a_missing_class(tmp_path):
    """val/b and test/b are real folders: train's linked b must count, or val's b is 'a class train does not have'."""
    data, copy = _linked_dataset(tmp_path, linked=("train",))
    got, want = train_data(_space(), data), train_data(_space(), copy)
    for split in SPLITS:
        _same(got[split], want[split])


def test_linked_folders_inside_a_class_and_linked_images_belong_to_the_class(tmp_path):
    """A link inside a class folder (to a folder or to an image) belongs to that class, as a real one does; the
    walk keeps everything else it did: hidden files and folders, any case of the suffix, no broken links, no
    files of other suffixes, the sorted order."""
    root = tmp_path / "v"
    _png(tmp_path / "elsewhere" / "x" / "1.png")
    _png(root / "a" / "2.png")
    _png(root / "a" / ".hidden.png")
    _png(root / "a" / ".cache" / "3.png")
    _png(root / "b" / "sub" / "4.PNG")
    (root / "b" / "notes.txt").write_text("not an image")
    os.symlink(tmp_path / "elsewhere" / "x", root / "a" / "more", target_is_directory=True)
    os.symlink(root / "a" / "2.png", root / "b" / "same.png")
    os.symlink(tmp_path / "nothing.png", root / "b" / "broken.png")
    os.symlink(tmp_path / "nothing", root / "b" / "broken_dir")
    os.symlink(root / "b" / "loopy", root / "b" / "loopy")  # a link to itself: neither a folder nor a file
    rel = [p.relative_to(root).as_posix() for p in _image_files(root)]
    assert rel == sorted(rel, key=lambda r: r.split("/"))
    assert rel == ["a/.cache/3.png", "a/.hidden.png", "a/2.png", "a/more/1.png", "b/same.png", "b/sub/4.PNG"]
    assert load_image_folder(root, 16).labels.tolist() == [0, 0, 0, 0, 1, 1]


def test_a_linked_folder_reaches_calibration_and_a_limit(tmp_path):
    data, _ = _linked_dataset(tmp_path, classes="ab", link="b", per_class=3)
    split = load_image_folder(data / "val", 16, limit=2)  # spread over the sorted files: one of each class
    assert split.classes == ("a", "b") and split.labels.tolist() == [0, 1]
    assert calibration_images(16, 3, n=6, data_dir=data / "val").shape[0] == 6  # only a's 3 images before


def _walk(root):
    """_image_files(root) in a thread with a deadline: a cycle must end the walk, not hang the test."""
    result = {}

    def target():
        try:
            result["files"] = _image_files(root)
        except Exception as err:  # noqa: BLE001  (reported to the test below)
            result["error"] = err

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the walk did not end"
    return result


@pytest.mark.parametrize("links", [
    {"a/loop": "."},  # to the split folder itself
    {"a/deeper/up": "a"},  # to a class folder it is inside
    {"a/x": "b", "b/y": "a"},  # two folders linking to each other
])
def test_a_symlink_cycle_is_a_data_error_naming_the_link(tmp_path, links):
    root = tmp_path / "v"
    _split(root, "ab")
    (root / "a" / "deeper").mkdir()
    for name, target in links.items():
        os.symlink(root / target, root / name, target_is_directory=True)
    result = _walk(root)
    assert isinstance(result.get("error"), DataError), result  # before: the link was not followed at all
    message = str(result["error"])
    assert "symlink cycle" in message and "\n" not in message
    assert re.search(rf"{re.escape(str(root))}/\S*\b(loop|up|x|y) links back to {re.escape(str(root))}", message)


def test_two_links_to_one_folder_are_no_cycle(tmp_path):
    """Not a cycle: both links are read, each under its own name (ImageFolder does the same)."""
    root = tmp_path / "v"
    _split(root, "a")
    _png(tmp_path / "shared" / "1.png")
    os.symlink(tmp_path / "shared", root / "b", target_is_directory=True)
    os.symlink(tmp_path / "shared", root / "c", target_is_directory=True)
    assert load_image_folder(root, 16).classes == ("a", "b", "c")


def test_train_cli_on_linked_class_folders_trains_on_every_class(tmp_path):
    """The report: train exited 0 on classes a and c only."""
    data, _ = _linked_dataset(tmp_path)
    r = run("train", "--space", "autoformer-tiny", "--data", data, "--epochs", "1", "--batch-size", "4", "--out",
            tmp_path / "t")
    assert r.returncode == 0, r.stderr[-2000:]
    record = json.loads((tmp_path / "t" / "supernet.json").read_text())["trained_on"]
    assert record == {"task": "image folders", "classes": ["a", "b", "c"]}


def test_train_cli_on_a_cycle_exits_2_with_one_error_line(tmp_path):
    data, _ = _linked_dataset(tmp_path)
    os.symlink(data / "train", data / "train" / "a" / "again", target_is_directory=True)
    line = one_error_line(run("train", "--space", "autoformer-tiny", "--data", data, "--epochs", "1",
                              "--batch-size", "4", "--out", tmp_path / "t"))
    assert "again links back to" in line and "symlink cycle" in line and not (tmp_path / "t").exists()
