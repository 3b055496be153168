"""What a supernet was trained on (supernet.json's `trained_on`): `train --data` records the class names of the image
folders, and every later command labels images by them (a search on other folders, a resumed training), or refuses
data that would give the labels other meanings. Each refusal failed (silently mislabelled) on the code before."""
from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from PIL import Image

from deploy_nas.errors import CheckpointError, DataError
from deploy_nas.spaces import load_space
from deploy_nas.supernets import load_supernet_dir, trained_classes
from deploy_nas.workflows import search_data, train_data
from tests.cli.test_extract_info import run
from tests.cli.test_reliability import one_error_line

SPACE = "autoformer-tiny"  # 32 px, 10 classes
TRAIN = ("train", "--space", SPACE, "--epochs", "1", "--batch-size", "8", "--max-steps", "1", "--no-save-state")


def _folders(root, classes, splits=("train", "val", "test"), per_class=3):
    """root/<split>/<class>/<i>.png: noise images, a different seed per file."""
    for s in splits:
        for c in classes:
            for i in range(per_class):
                rng = np.random.default_rng(zlib.crc32(f"{s}/{c}/{i}".encode()))
                path = root / s / c / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray((rng.random((36, 36, 3)) * 255).astype(np.uint8)).save(path)
    return root


@pytest.fixture(scope="module")
def folder_trained(tmp_path_factory):
    """A supernet trained (one step) on image folders of classes a, b, c; and the data."""
    base = tmp_path_factory.mktemp("trained_on")
    data = _folders(base / "d", "abc")
    r = run(*TRAIN, "--data", data, "--out", base / "sn")
    assert r.returncode == 0, r.stderr[-2000:]
    return base / "sn", data


def test_train_on_image_folders_records_their_class_names(folder_trained):
    sn, _ = folder_trained
    meta = json.loads((sn / "supernet.json").read_text())
    assert meta["trained_on"] == {"task": "image folders", "classes": ["a", "b", "c"]}
    assert trained_classes(load_supernet_dir(sn)[0]) == ("a", "b", "c")


def test_the_embedded_default_says_it_was_trained_on_the_embedded_task():
    from deploy_nas.supernets import default_supernet

    supernet, _ = default_supernet()
    assert supernet.trained_on == {"task": "embedded"}


def test_search_labels_other_folders_by_the_supernets_classes(tmp_path):
    # val has only class "a", test only "c": by their own folders both would be label 0
    data = _folders(tmp_path / "e", "a", splits=("val",))
    _folders(data, "c", splits=("test",))
    space = load_space(SPACE)
    splits = search_data(space, data, ("a", "b", "c"))
    assert set(splits["val"].labels) == {0} and set(splits["test"].labels) == {2}
    assert splits["test"].classes == ("a", "b", "c")
    with pytest.raises(DataError, match="'z' that the supernet was not trained on"):
        search_data(space, _folders(tmp_path / "z", "az", splits=("val", "test")), ("a", "b", "c"))
    with pytest.raises(DataError, match="trained on image folders .*pass --data"):
        train_data(space, None, ("a", "b", "c"))


def test_search_cli_refuses_foreign_classes_and_the_embedded_task(folder_trained, tmp_path):
    sn, _ = folder_trained
    search = ("search", "--supernet", sn, "--latency-budget-ms", "5", "--generations", "1", "--population", "4",
              "--measure", "8")
    line = one_error_line(run(*search, "--out", tmp_path / "s1"))
    assert "trained on image folders (3 classes: 'a', 'b', 'c')" in line and "--data" in line
    other = _folders(tmp_path / "other", "abz", splits=("val", "test"), per_class=1)
    line = one_error_line(run(*search, "--data", other, "--out", tmp_path / "s2"))
    assert "'z'" in line and "'a', 'b', 'c'" in line
    assert not (tmp_path / "s1").exists() and not (tmp_path / "s2").exists()


def test_a_resumed_training_keeps_the_data_it_started_on(tmp_path):
    data = _folders(tmp_path / "d", "abc", per_class=4)
    sn = tmp_path / "sn"
    resumable = [a for a in TRAIN if a != "--no-save-state"]
    assert run(*resumable, "--data", data, "--out", sn).returncode == 0
    before = {p.name: p.read_bytes() for p in sn.iterdir()}
    fewer = _folders(tmp_path / "f", "bc", per_class=4)
    line = one_error_line(run(*resumable, "--data", fewer, "--out", sn, "--resume"))
    assert "3 classes ('a', 'b', 'c')" in line and "2 classes ('b', 'c')" in line
    line = one_error_line(run(*resumable, "--out", sn, "--resume"))
    assert "this run's data is the embedded task" in line
    assert {p.name: p.read_bytes() for p in sn.iterdir()} == before


@pytest.mark.parametrize("record", [{"task": "imagenet"}, {"task": "image folders"}, {"task": "image folders",
                         "classes": ["a", "a"]}, {"task": "image folders", "classes": [1, 2]}, "embedded", []])
def test_a_malformed_record_is_a_checkpoint_error(folder_trained, tmp_path, record):
    import shutil

    sn = tmp_path / "sn"
    shutil.copytree(folder_trained[0], sn)
    meta = json.loads((sn / "supernet.json").read_text())
    (sn / "supernet.json").write_text(json.dumps({**meta, "trained_on": record}))
    with pytest.raises(CheckpointError, match="trained_on"):
        load_supernet_dir(sn)


def test_the_class_names_travel_with_the_deployed_model(folder_trained, tmp_path):
    """spec.json (source.trained_on), the ONNX graph's `class_names` metadata, the OpenVINO IR's rt_info and the
    report's model section all name the class of each output index."""
    import onnxruntime as ort
    import openvino as ov

    from deploy_nas import load_dense

    dep = tmp_path / "dep"
    assert run("extract", "--supernet", folder_trained[0], "--config", "min", "--out", dep / "dense").returncode == 0
    assert load_dense(dep / "dense").spec.class_names == ["a", "b", "c"]
    assert run("export", "onnx", dep).returncode == 0 and run("export", "openvino", dep).returncode == 0
    meta = ort.InferenceSession(str(dep / "model.onnx")).get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == ["a", "b", "c"]
    ir = ov.Core().read_model(str(dep / "openvino" / "fp32" / "model.xml"))
    assert json.loads(ir.get_rt_info(["framework", "class_names"]).astype(str)) == ["a", "b", "c"]


def test_a_model_of_the_embedded_task_has_no_class_names(tmp_path):
    from deploy_nas import load_dense

    assert run("extract", "--config", "min", "--out", tmp_path / "d").returncode == 0
    assert load_dense(tmp_path / "d").spec.source["trained_on"] == {"task": "embedded"}
    assert load_dense(tmp_path / "d").spec.class_names is None


@pytest.mark.parametrize("record", [{"task": "image folders", "classes": "abc"}, ["a"], {"task": "image folders",
                         "classes": [str(i) for i in range(11)]}])
def test_a_hand_edited_record_in_spec_json_names_no_classes(tmp_path, record):
    from deploy_nas import load_dense

    assert run("extract", "--config", "min", "--out", tmp_path / "d").returncode == 0
    spec = json.loads((tmp_path / "d" / "spec.json").read_text())
    spec["source"]["trained_on"] = record  # 11 names for the model's 10 outputs, a string, a list
    (tmp_path / "d" / "spec.json").write_text(json.dumps(spec))
    assert load_dense(tmp_path / "d").spec.class_names is None


def test_a_supernet_of_the_embedded_task_scores_only_digit_folders(tmp_path):
    """`search --data` on the embedded default scored folders a/b/c as the digits 0/1/2 (exit 0)."""
    from deploy_nas.supernets import EMBEDDED_CLASSES, default_supernet

    supernet, space = default_supernet()
    assert trained_classes(supernet) == EMBEDDED_CLASSES
    digits = _folders(tmp_path / "dg", "3", splits=("val",), per_class=1)
    _folders(digits, "7", splits=("test",), per_class=1)
    splits = search_data(space, digits, trained_classes(supernet))
    assert list(splits["val"].labels) == [3] and list(splits["test"].labels) == [7]  # the digit, not 0
    letters = _folders(tmp_path / "ab", "ab", splits=("val", "test"), per_class=1)
    line = one_error_line(run("search", "--latency-budget-ms", "5", "--data", letters, "--out", tmp_path / "s"))
    assert "'a', 'b'" in line and "'0', '1', '2'" in line and not (tmp_path / "s").exists()


def test_without_a_test_split_no_val_accuracy_is_reported_as_test(tmp_path):
    data = _folders(tmp_path / "d", "ab", splits=("train", "val"), per_class=4)
    r = run(*TRAIN, "--data", data, "--out", tmp_path / "sn")
    assert r.returncode == 0, r.stderr[-2000:]
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert last["test_top1"] is None and "no test split" in last["note"]
