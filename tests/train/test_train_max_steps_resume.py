"""A --max-steps stop inside an epoch leaves that epoch unfinished: the state and supernet.json record the epochs
finished ("epoch") and the steps of the next one done ("epoch_step"), the log row says "partial", and a --resume
trains the epoch's remaining batches in the same seeded order, so a run stopped and resumed ends with the weights of
the run not stopped, bit for bit. Before, the epoch a --max-steps stop fell in counted as done: a resume skipped its
remaining batches (`--epochs 3 --max-steps 20` then `--resume` did 36 steps, not 48) or did nothing at all. A state
of an older version (no position recorded) still resumes at the next epoch."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deploy_nas.data import Split
from deploy_nas.family import FAMILIES
from deploy_nas.spaces import SPACES, load_space
from deploy_nas.supernets import WEIGHTS_FILE
from deploy_nas.train import STATE_FILE, TrainConfig, train_supernet

STEPS_PER_EPOCH, BATCH = 3, 8


def _split(img_size: int, chans: int = 3) -> Split:
    rng = np.random.default_rng(0)
    n = STEPS_PER_EPOCH * BATCH + 5  # a remainder the epoch leaves out
    return Split(rng.standard_normal((n, chans, img_size, img_size)).astype(np.float32), rng.integers(0, 10, n))


AUTOFORMER = (FAMILIES.get("autoformer"), load_space("autoformer-tiny"))
# every setting that depends on the step or the epoch: shifts and subnets drawn per step, the schedule, the EMA,
# gradient projection from the second epoch on
RECIPE = dict(epochs=2, batch_size=BATCH, num_random=1, warmup_epochs=0.5, shift=2, ema_decay=0.5,
              grad_projection=True, projection_from_epoch=1)


def _train(out: Path, resume: bool = False, target: tuple = AUTOFORMER, **settings: object) -> list[dict]:
    """The rows logged: the resume's, then one per epoch trained in (the closing test_top1 row left out)."""
    fam, space = target
    data = _split(space.img_size, space.in_chans)
    rows: list[dict] = []
    train_supernet(fam, space, out, TrainConfig(**settings), resume, {"train": data, "val": data}, log=rows.append)
    assert rows[-1]["test_top1"] is None
    return rows[:-1]


def _state(out: Path) -> dict:
    return torch.load(out / STATE_FILE, weights_only=False)


def _meta(out: Path) -> dict:
    return json.loads((out / "supernet.json").read_text())


def _position(out: Path) -> tuple:
    """(epoch, epoch_step, step) of the state, (epoch, epoch_step) of supernet.json (None: not recorded)."""
    state, meta = _state(out), _meta(out)
    return (state["epoch"], state.get("epoch_step"), state["step"]), (meta["epoch"], meta.get("epoch_step"))


def _assert_same_run(a: Path, b: Path) -> None:
    """The same weights, EMA and optimizer state, bit for bit, at the same place."""
    sa, sb = _state(a), _state(b)
    for key in ("model", "ema"):
        assert sa[key].keys() == sb[key].keys()
        for k, v in sa[key].items():
            assert torch.equal(v, sb[key][k]), f"{key}.{k}"
    oa, ob = sa["optimizer"]["state"], sb["optimizer"]["state"]
    assert oa.keys() == ob.keys()
    for i in oa:
        for k, v in oa[i].items():
            assert torch.equal(v, ob[i][k]), f"optimizer {i}.{k}"
    assert (a / WEIGHTS_FILE).read_bytes() == (b / WEIGHTS_FILE).read_bytes()  # the EMA weights
    assert _position(a) == _position(b)


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run not stopped: 2 epochs of 3 steps."""
    out = tmp_path_factory.mktemp("whole") / "sn"
    rows = _train(out, **RECIPE)
    assert [(r["epoch"], r["steps"], "partial" in r) for r in rows] == [(1, 3, False), (2, 6, False)]
    return out


def test_a_stop_inside_an_epoch_leaves_it_unfinished_and_resumes_bit_for_bit(whole, tmp_path):
    out, runs = tmp_path / "sn", []
    for resume, max_steps in ((False, 4), (True, 5), (True, None)):
        # the first epoch and 1 of the 3 steps of the second; one more step; a plain --resume: the rest
        runs.append((_train(out, resume, **RECIPE, max_steps=max_steps), _position(out)))
    _assert_same_run(out, whole)  # first: what a stop and resume got wrong before
    (rows, at), (rows2, at2), (rows3, at3) = runs
    assert [(r["epoch"], r["steps"], r.get("partial"), r.get("epoch_step")) for r in rows] == [
        (1, 3, None, None), (2, 4, True, 1)]
    assert rows[-1]["steps_per_epoch"] == STEPS_PER_EPOCH
    assert at == ((1, 1, 4), (1, 1))
    assert rows2[0] == {"resumed_from": str(out), "epoch": 1, "epoch_step": 1}
    assert [(r["epoch"], r["steps"], r.get("partial"), r.get("epoch_step")) for r in rows2[1:]] == [(2, 5, True, 2)]
    assert at2 == ((1, 2, 5), (1, 2))
    assert rows3[0] == {"resumed_from": str(out), "epoch": 1, "epoch_step": 2}
    assert [(r["epoch"], r["steps"], "partial" in r) for r in rows3[1:]] == [(2, 6, False)]
    assert at3 == ((2, 0, 6), (2, 0))


def test_a_stop_at_an_epochs_end_finishes_it_and_a_resume_already_stopped_changes_nothing(whole, tmp_path):
    out = tmp_path / "sn"
    rows = _train(out, **RECIPE, max_steps=3)
    assert [(r["epoch"], r["steps"], "partial" in r) for r in rows] == [(1, 3, False)]
    assert _position(out) == ((1, 0, 3), (1, 0))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # --max-steps already reached: nothing trained, nothing logged as an epoch, nothing written (it counted an
    # empty epoch as done before, and saved it)
    rows = _train(out, True, **RECIPE, max_steps=2)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert rows == [{"resumed_from": str(out), "epoch": 1, "epoch_step": 0}]
    _train(out, True, **RECIPE)
    _assert_same_run(out, whole)


def test_more_epochs_on_a_resume_inside_an_epoch_finish_it_first(tmp_path):
    out = tmp_path / "sn"
    _train(out, **{**RECIPE, "epochs": 1}, max_steps=2)
    rows = _train(out, True, **RECIPE, max_steps=4)
    assert "resumed at epoch 0 (step 2, 2 into the epoch) with --epochs 2 instead of the recorded --epochs 1" in (
        rows[0]["note"])
    assert [(r["epoch"], r["steps"], r.get("partial")) for r in rows[1:]] == [(1, 3, None), (2, 4, True)]
    meta = _meta(out)
    assert (meta["epoch"], meta["epoch_step"], meta["train"]["epochs"]) == (1, 1, 2)
    assert meta["train_changes"] == [{"epoch": 0, "step": 2, "epochs": [1, 2]}]


def test_a_state_of_an_older_version_resumes_at_the_next_epoch(tmp_path):
    """Without "epoch_step" the state's epoch counted as done, as the old code counted it."""
    out = tmp_path / "sn"
    _train(out, **RECIPE, max_steps=2)
    state = _state(out)
    state.pop("epoch_step")
    state["epoch"] = 1  # what the old code recorded for a stop inside the first epoch
    torch.save(state, out / STATE_FILE)
    meta = _meta(out)
    meta.pop("epoch_step")
    meta["epoch"] = 1
    (out / "supernet.json").write_text(json.dumps(meta))
    rows = _train(out, True, **RECIPE)
    assert rows[0] == {"resumed_from": str(out), "epoch": 1, "epoch_step": 0}
    assert [(r["epoch"], r["steps"], "partial" in r) for r in rows[1:]] == [(2, 2 + STEPS_PER_EPOCH, False)]
    assert _position(out) == ((2, 0, 5), (2, 0))


def test_slim_search_stopped_inside_an_epoch_resumes_bit_for_bit(tmp_path):
    from deploy_nas.train.slim import OFFICIAL_CHECKPOINT

    target = (FAMILIES.get("vitslim"), SPACES.get("vitslim-tiny"))
    recipe = dict(epochs=2, batch_size=BATCH, lr=1e-2, w_attn=1e-3, w_mlp=1e-3, w_patch=1e-3, ema_decay=0.5, shift=1)
    whole, out = tmp_path / "whole", tmp_path / "sl"
    _train(whole, target=target, **recipe)

    def ckpt() -> dict:
        return torch.load(out / OFFICIAL_CHECKPOINT, weights_only=True)

    rows, at, stopped = _train(out, target=target, **recipe, max_steps=2), _position(out), ckpt()
    rows2 = _train(out, True, target=target, **recipe)  # `slim search --out SL --resume`
    _assert_same_run(out, whole)
    a = torch.load(whole / OFFICIAL_CHECKPOINT, weights_only=True)["model"]
    assert all(torch.equal(v, ckpt()["model"][k]) for k, v in a.items())
    assert [(r["epoch"], r["steps"], r.get("partial"), r.get("epoch_step")) for r in rows] == [(1, 2, True, 2)]
    assert at == ((0, 2, 2), (0, 2))
    assert (stopped["epoch"], stopped.get("epoch_step"), stopped["args"]["epoch"]) == (0, 2, 0)
    assert rows2[0] == {"resumed_from": str(out), "epoch": 0, "epoch_step": 2}
    assert [(r["epoch"], r["steps"]) for r in rows2[1:]] == [(1, 3), (2, 6)]
    assert (ckpt()["epoch"], ckpt()["epoch_step"], ckpt()["args"]["epoch"]) == (2, 0, 2)


def test_the_command_line_logs_a_partial_epoch_and_resumes_inside_it(tmp_path):
    from tests.cli.test_extract_info import run

    sn = tmp_path / "sn"
    r = run("train", "--space", "autoformer-tiny", "--epochs", "2", "--max-steps", "1", "--batch-size", "8",
            "--num-random", "0", "--out", sn)
    assert r.returncode == 0, r.stderr[-2000:]
    row = json.loads(r.stdout.splitlines()[0])
    assert (row["epoch"], row["steps"], row["partial"], row["epoch_step"]) == (1, 1, True, 1)
    assert (_meta(sn)["epoch"], _meta(sn)["epoch_step"]) == (0, 1)
    r = run("train", "--out", sn, "--resume", "--max-steps", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert rows[0] == {"resumed_from": str(sn), "epoch": 0, "epoch_step": 1}
    assert (rows[1]["epoch"], rows[1]["steps"], rows[1]["partial"], rows[1]["epoch_step"]) == (1, 2, True, 2)
    assert (_meta(sn)["epoch"], _meta(sn)["epoch_step"]) == (0, 2)
