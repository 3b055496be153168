"""`train --resume` / `slim search --resume` continue the run OUT recorded: its space and training settings are the
defaults, another value given is refused (more --epochs: a longer run, noted and recorded). Before, options left out
fell back to the defaults, changed ones were taken silently, and supernet.json / ckpt.pth were rewritten as if the
whole run had used them (hostile test 7, finding 5). Each test failed on the code before the fix."""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from deploy_nas.family import FAMILIES
from deploy_nas.train import TrainConfig, train_config
from tests.cli.test_extract_info import run
from tests.cli.test_reliability import one_error_line

TINY = ("--epochs", "2", "--max-steps", "1", "--batch-size", "8")  # 2 epochs planned, stopped after 1 step
# (a --max-steps stop leaves its epoch unfinished: supernet.json's "epoch" counts the finished ones, "epoch_step" the
# steps of the next one done; tests/train/test_train_max_steps_resume.py)
RECIPE = ("--lr", "0.004", "--num-random", "1", "--seed", "3")  # none of them the defaults


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sn = tmp_path_factory.mktemp("recipe") / "sn"
    r = run("train", "--space", "autoformer-tiny", *TINY, *RECIPE, "--out", sn)
    assert r.returncode == 0, r.stderr[-2000:]
    return sn


@pytest.fixture
def sn(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained run, for a test that resumes it."""
    return Path(shutil.copytree(trained, tmp_path / "sn"))


def _meta(sn: Path) -> dict:
    return json.loads((sn / "supernet.json").read_text())


def _rows(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def _files(sn: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sn.iterdir()}


def test_a_resume_alone_continues_the_run_with_its_space_and_settings(sn):
    """`train --out SN --resume` failed ('not the training state of this supernet ... train into a new directory'):
    it trained the default space; with --space, it trained on with the default batch, lr, seed, ..."""
    r = run("train", "--out", sn, "--resume", "--max-steps", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    meta = _meta(sn)
    assert (meta["epoch"], meta["epoch_step"]) == (0, 2) and meta["space"]["name"] == "autoformer-tiny"
    assert {k: meta["train"][k] for k in ("epochs", "batch_size", "lr", "num_random", "seed")} == {
        "epochs": 2, "batch_size": 8, "lr": 0.004, "num_random": 1, "seed": 3}
    assert "train_changes" not in meta and "note" not in _rows(r.stdout)[0]


@pytest.mark.parametrize("given, recorded", [
    (("--batch-size", "16"), "--batch-size 8"), (("--lr", "0.01"), "--lr 0.004"),
    (("--num-random", "2"), "--num-random 1"), (("--seed", "0"), "--seed 3"), (("--no-distill",), "--distill"),
    (("--ema-decay", "0.9"), "no --ema-decay"), (("--epochs", "1"), "--epochs 2")])
def test_a_resume_refuses_a_setting_other_than_the_recorded_one(sn, given, recorded):
    """Such a resume went on with the setting given, and supernet.json then recorded it for the whole run."""
    before = _files(sn)
    line = one_error_line(run("train", "--space", "autoformer-tiny", "--out", sn, "--resume", "--max-steps", "2",
                              *given))
    assert f"{sn} holds a run trained with {recorded}, this resume gives {' '.join(given)}: " in line, line
    assert "leave it out (the recorded values are the defaults), or train into a new --out" in line
    assert ("may grow, to train longer, not shrink" in line) == (given[0] == "--epochs")
    assert _files(sn) == before


def test_a_resume_refuses_another_space_or_family_naming_the_recorded_one(sn):
    before = _files(sn)
    line = one_error_line(run("train", "--space", "autoformer-demo", "--out", sn, "--resume"))
    assert (f"{sn} was trained on space 'autoformer-tiny', this resume gives 'autoformer-demo' (--space): leave "
            "--space out to continue it on its own space") in line, line
    line = one_error_line(run("train", "--family", "nasvit", "--out", sn, "--resume"))
    assert f"{sn} holds the training of a supernet of family 'autoformer', this run trains family 'nasvit'" in line
    assert _files(sn) == before


def test_more_epochs_train_longer_with_a_note_and_a_record_of_the_change(sn):
    """More --epochs was taken silently and supernet.json said the whole run was scheduled over them."""
    r = run("train", "--out", sn, "--resume", "--epochs", "3", "--max-steps", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert ("resumed at epoch 0 (step 1, 1 into the epoch) with --epochs 3 instead of the recorded --epochs 2"
            in _rows(r.stdout)[0]["note"])
    meta = _meta(sn)
    assert (meta["epoch"], meta["epoch_step"], meta["train"]["epochs"]) == (0, 2, 3)
    assert meta["train_changes"] == [{"epoch": 0, "step": 1, "epochs": [2, 3]}]


def test_train_supernet_keeps_the_record_of_changes_and_refuses_another_recipe(tmp_path):
    """The library's entry (on 16 random images): a later resume keeps what an earlier one changed; a config with
    another recipe than the run's is refused there too."""
    from deploy_nas.data import Split
    from deploy_nas.spaces import load_space
    from deploy_nas.train import RecipeMismatch, train_supernet

    rng = np.random.default_rng(0)
    split = Split(rng.standard_normal((16, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 16))
    fam, space, out = FAMILIES.get("autoformer"), load_space("autoformer-tiny"), tmp_path / "sn"

    def train(resume: bool, **settings: object) -> list[dict]:
        rows: list[dict] = []
        config = TrainConfig(batch_size=8, **settings)
        train_supernet(fam, space, out, config, resume, {"train": split, "val": split}, log=rows.append)
        return rows

    train(False, epochs=2, max_steps=1)  # 2 steps an epoch: stopped inside the first
    assert "--epochs 3 instead of the recorded --epochs 2" in train(True, epochs=3, max_steps=3)[0]["note"]
    assert "note" not in train(True, epochs=3, max_steps=5)[0]  # 2 epochs finished, 1 step into the third
    meta = _meta(out)
    assert (meta["epoch"], meta["epoch_step"], meta["train"]["epochs"]) == (2, 1, 3)
    assert meta["train_changes"] == [{"epoch": 0, "step": 1, "epochs": [2, 3]}]
    before = _files(out)
    with pytest.raises(RecipeMismatch, match="with --lr 0.002, this resume gives --lr 0.01: "):
        train(True, epochs=3, lr=0.01)
    assert _files(out) == before


def test_a_run_that_records_no_settings_resumes_with_those_given_and_a_note(sn):
    meta = _meta(sn)
    del meta["train"]  # as a version before the settings were recorded
    (sn / "supernet.json").write_text(json.dumps(meta))
    r = run("train", "--space", "autoformer-tiny", "--batch-size", "8", "--out", sn, "--resume", "--max-steps", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "records no training settings" in _rows(r.stdout)[0]["note"]
    assert (_meta(sn)["train"]["batch_size"], _meta(sn)["train"]["lr"]) == (8, TrainConfig().lr)


def test_a_malformed_recorded_setting_is_one_error_line(sn):
    meta = _meta(sn)
    meta["train"]["lr"] = "fast"
    (sn / "supernet.json").write_text(json.dumps(meta))
    line = one_error_line(run("train", "--out", sn, "--resume", "--max-steps", "2"))
    assert "the training settings it records are malformed (lr='fast')" in line, line


def test_the_recorded_recipe_is_the_default_of_train_config():
    """The library's entry: the run's settings win over the family's recipe; a changed one is refused, more epochs
    are taken."""
    from deploy_nas.train import RecipeMismatch, RecordedRun

    fam = FAMILIES.get("nasvit")  # a recipe of its own (lr 3e-4, no weight decay, ...)
    recorded = asdict(train_config(fam, {"lr": 1e-3, "weight_decay": 0.01, "epochs": 5}))
    resumed = RecordedRun(Path("sn"), {"family": "nasvit", "train": recorded})
    assert train_config(fam, {}, resumed) == TrainConfig(**recorded)
    assert train_config(fam, {"epochs": 8}, resumed).epochs == 8
    with pytest.raises(RecipeMismatch, match="with --weight-decay 0.01, this resume gives --weight-decay 0.0: "):
        train_config(fam, {"weight_decay": 0.0}, resumed)


def test_slim_search_resume_continues_its_masks_and_l1_weights(tmp_path):
    """`slim search --resume` without --head-search failed on the state; with it, ckpt.pth's args took the default
    --w-attn for the whole run."""
    sl = tmp_path / "sl"
    assert run("slim", "search", *TINY, "--w-attn", "0.001", "--head-search", "--out", sl).returncode == 0
    line = one_error_line(run("slim", "search", "--head-search", "--w-attn", "0.002", "--out", sl, "--resume"))
    assert f"{sl} holds a run trained with --w-attn 0.001, this resume gives --w-attn 0.002" in line, line
    r = run("slim", "search", "--out", sl, "--resume", "--max-steps", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    args = torch.load(sl / "ckpt.pth", weights_only=True)["args"]
    assert (args["w1"], args["head_search"], args["epoch"]) == (0.001, True, 0)  # 2 steps: the first epoch unfinished
    assert torch.load(sl / "ckpt.pth", weights_only=True)["epoch_step"] == 2
