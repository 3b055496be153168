"""A seventh hostile try (2026-12-07, sixth session): image folders and output paths. Each test failed on the code
before its fix."""
from __future__ import annotations

import unicodedata

import numpy as np
import pytest
from PIL import Image

from deploy_nas.data import image_folder_splits, load_image_folder
from deploy_nas.errors import DataError
from deploy_nas.io import output_lock
from tests.cli.test_extract_info import run
from tests.cli.test_reliability import one_error_line


def _png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (16, 16), value).save(path)
    return path


def test_16_bit_and_float_images_of_other_modes_are_scaled_not_clipped(tmp_path):
    """A 16-bit PGM or TIFF opens as PIL mode I (not I;16) and came out all white; a float TIFF (mode F, 0..1) all
    black. Values up to 255 stay as they are in either mode; 32-bit values beyond 16 bits, or floats beyond 255,
    have no one meaning of white: a typed error."""
    ramp = np.arange(32 * 32, dtype=np.float64).reshape(32, 32) / (32 * 32 - 1)
    eight = np.rint(ramp * 255).astype(np.uint8)
    (tmp_path / "a").mkdir()
    Image.fromarray(eight).save(tmp_path / "a" / "8.png")
    Image.fromarray(eight.astype(np.int32) * 257).save(tmp_path / "a" / "i.tif")  # mode I, 16-bit values
    Image.fromarray(ramp.astype(np.float32)).save(tmp_path / "a" / "f.tif")  # mode F
    with Image.open(tmp_path / "a" / "i.tif") as im, Image.open(tmp_path / "a" / "f.tif") as fm:
        assert (im.mode, fm.mode) == ("I", "F")
    got = load_image_folder(tmp_path / "a", 32).images
    assert np.array_equal(got[0], got[1]) and np.abs(got[0] - got[2]).max() < 0.02  # each reads as its 8-bit copy
    (tmp_path / "e").mkdir()  # values up to 255 in either mode: 8-bit values, as they are (as before)
    Image.fromarray(eight).save(tmp_path / "e" / "8.png")
    Image.fromarray(eight.astype(np.int32)).save(tmp_path / "e" / "i.tif")
    Image.fromarray(eight.astype(np.float32)).save(tmp_path / "e" / "f.tif")
    got = load_image_folder(tmp_path / "e", 32).images
    assert np.array_equal(got[0], got[1]) and np.array_equal(got[0], got[2])
    Image.fromarray(np.full((8, 8), 70000, np.int32)).save(tmp_path / "b.tif")
    Image.fromarray(np.full((8, 8), 300.5, np.float32)).save(tmp_path / "c.tif")
    for name, why in (("b.tif", "32-bit integer image with values 70000..70000"), ("c.tif", "values 300.5..300.5")):
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        (tmp_path / name).rename(folder / name)
        with pytest.raises(DataError, match=why):
            load_image_folder(folder, 32)


def test_an_image_beside_the_class_folders_is_ignored_as_imagefolder_does(tmp_path, capsys):
    """A stray image directly in DIR/train became a class named '' that shifted every real label by one (and went
    into the supernet's trained_on); torchvision's ImageFolder ignores it."""
    _png(tmp_path / "d" / "train" / "cat" / "1.png", 10)
    _png(tmp_path / "d" / "train" / "dog" / "1.png", 200)
    _png(tmp_path / "d" / "train" / "stray.png", 90)
    split = image_folder_splits(tmp_path / "d", ("train",), 16, 1, 10)["train"]
    assert split.classes == ("cat", "dog") and split.labels.tolist() == [0, 1]
    assert "ignored 1 image(s) directly in" in capsys.readouterr().err
    flat = load_image_folder(tmp_path / "d" / "train" / "cat", 16)  # a flat folder is still one class
    assert flat.classes == ("",) and len(flat.labels) == 1


def test_class_folders_differing_only_in_unicode_form_are_one_class(tmp_path):
    """A folder copied from macOS has NFD names: 'café' (NFD) in val was 'a class train does not have' beside 'café'
    (NFC) in train, a message naming the same class twice."""
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    _png(tmp_path / "d" / "train" / nfc / "1.png")
    _png(tmp_path / "d" / "train" / "tea" / "1.png")
    _png(tmp_path / "d" / "val" / nfd / "1.png")
    splits = image_folder_splits(tmp_path / "d", ("train", "val"), 16, 1, 10)
    assert splits["val"].labels.tolist() == [0] and splits["val"].classes == (nfc, "tea")
    trained = image_folder_splits(tmp_path / "d", ("val",), 16, 1, 10, classes=[nfd, "tea"])  # an older record
    assert trained["val"].labels.tolist() == [0]


def test_no_output_inside_a_directory_that_a_resume_replaces_whole(tmp_path):
    """`extract --out SN/dense` (SN a supernet being trained, not this command's input) and `slim prune --out
    SL/pruned` were written, then deleted with SN by the next `train --resume`. Such outputs are refused, and a
    resume refuses a directory that holds one (written by an older version), before any work."""
    sn = tmp_path / "sn"
    assert run("train", "--space", "autoformer-tiny", "--epochs", "2", "--max-steps", "1", "--batch-size", "8",
               "--out", sn).returncode == 0
    assert (sn / "train_state.pt").is_file()
    line = one_error_line(run("extract", "--config", "min", "--out", sn / "dense"))
    assert f"inside {sn}, a directory that `--resume` replaces whole" in line and not (sn / "dense").exists()
    (sn / "dense").mkdir()  # as an older version let it be written
    (sn / "dense" / "spec.json").write_text("{}")
    before = {p.name for p in sn.iterdir()}
    line = one_error_line(run("train", "--space", "autoformer-tiny", "--epochs", "2", "--max-steps", "1",
                              "--batch-size", "8", "--out", sn, "--resume"))
    assert "holds dense/, which no training run writes" in line
    assert {p.name for p in sn.iterdir()} == before and (sn / "dense" / "spec.json").is_file()


def test_long_output_names_with_one_prefix_have_locks_of_their_own(tmp_path):
    """The lock was named after the first 80 bytes of the output's name: two outputs whose names shared them
    blocked each other ('being written by another deploy-nas process')."""
    a, b = tmp_path / ("x" * 100 + "a"), tmp_path / ("x" * 100 + "b")
    with output_lock(a):
        with output_lock(b):
            locks = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith("-lock"))
    assert len(locks) == 2 and all(len(n.encode()) < 120 for n in locks)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith("-lock")]  # both released


def test_a_run_recorded_with_nfd_class_names_resumes_on_its_own_folders(tmp_path):
    """A review finding: the loader reads class names in NFC now, and `train --resume` compared them with an older
    record's NFD names byte for byte: 'trained on ('bar', 'café'), this run's data is ('bar', 'café')'."""
    import json
    import shutil

    from deploy_nas.supernets import DEFAULT_DIR
    from deploy_nas.train import _check_same_data

    out = tmp_path / "sn"
    shutil.copytree(DEFAULT_DIR, out)
    meta = json.loads((out / "supernet.json").read_text())
    nfd = ["bar", unicodedata.normalize("NFD", "café")]
    (out / "supernet.json").write_text(json.dumps({**meta, "trained_on": {"task": "image folders", "classes": nfd}}))
    _check_same_data(out, {"task": "image folders", "classes": ["bar", unicodedata.normalize("NFC", "café")]})
    with pytest.raises(DataError, match="was trained on image folders of 2 classes"):
        _check_same_data(out, {"task": "image folders", "classes": ["bar", "tea"]})
