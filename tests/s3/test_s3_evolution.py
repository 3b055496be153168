"""E-T error and space evolution (deploy_nas/search/space_evolution.py): the score, the slope fit, the step rule
(downhill moves, halving on overshoot, bounds), and the loop through `deploy-nas evolve-space` on a briefly trained
tiny supernet: valid files, slopes and moves that follow the recorded data (re-measured here for one dimension), a
final space `deploy-nas search` accepts, and bad input (exit 2, nothing written)."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from deploy_nas.data import embedded_splits
from deploy_nas.errors import DeployNASError, InvalidSubnetConfig
from deploy_nas.family import FAMILIES
from deploy_nas.search.space_evolution import (
    DimensionState,
    EvolveSpaceRequest,
    Scorer,
    SpaceEvolution,
    dimension_points,
    et_error,
    fit_slope,
    move_dimension,
    sample_feasible,
    scoring_split,
    shifted,
    window_ladder,
)
from deploy_nas.spaces import SPACES, load_space
from deploy_nas.spaces.s3 import S3Space, S3StageChoices
from deploy_nas.supernets import load_supernet_dir
from deploy_nas.train import TrainConfig, train_supernet
from tests.cli.test_extract_info import run

FAMILY = FAMILIES.get("s3")
TINY = SPACES.get("s3-tiny")


def test_et_error_is_the_mean_of_the_average_and_the_top_tier():
    r = et_error([0.5, 0.1, 0.3, 0.9, 0.2], top_tier=0.4)  # top tier: the best 2 (0.1, 0.2)
    assert r == pytest.approx({"e": 0.4, "t": 0.15, "et": 0.275, "n": 5})
    assert et_error([0.3], 0.01)["t"] == 0.3  # at least one in the top tier


def test_fit_slope():
    points = [{"value": v, "et": 0.5 - 0.01 * v} for v in (16.0, 24.0, 32.0)]
    assert fit_slope(points) == pytest.approx(-0.01)
    assert fit_slope(points[:1]) is None


def test_choices_move_by_units_and_along_the_window_ladder():
    assert shifted(TINY, (1, "embed_dim"), 1, 1) == (32, 40, 56)
    assert shifted(TINY, (0, "mlp_ratio"), 1, 2) == (2.0, 3.0, 4.0)
    assert shifted(TINY, (0, "window_size"), -1, 1) == (1, 2, 4)  # ladder of an 8x8 map: 1, 2, 4, 8
    assert window_ladder(8) == [1, 2, 4, 8] and window_ladder(14) == [1, 2, 7, 14]
    assert shifted(TINY, (0, "mlp_ratio"), -1, 1) == (0.5, 1.5, 2.5)
    for dim, direction, move in (((0, "window_size"), 1, 1), ((0, "mlp_ratio"), -1, 2), ((2, "depth"), -1, 1)):
        with pytest.raises(InvalidSubnetConfig):  # past the ladder's end, below one unit
            shifted(TINY, dim, direction, move)


def _fits_inside(space: S3Space):
    from dataclasses import replace

    return lambda candidate: replace(candidate, super_stages=space.supers())


def test_the_step_rule():
    poor = TINY.with_choices((1, "embed_dim"), (24, 32))
    dim, inside = (1, "embed_dim"), _fits_inside(TINY)
    state = DimensionState(move=2)
    space, action = move_dimension(poor, dim, slope=0.001, effect=0.008, state=state, min_effect=0.01, fits=inside)
    assert space is poor and action.startswith("kept") and state.last == 0
    space, action = move_dimension(poor, dim, -0.01, -0.08, state, 0.01, inside)  # error falls as width grows: up
    assert space.choices(dim) == (40, 48) and state.last == 1 and state.move == 2 and action.startswith("up by 2")
    space, action = move_dimension(space, dim, 0.01, 0.08, state, 0.01, inside)  # overshoot: halve, go down
    assert space.choices(dim) == (32, 40) and state.move == 1 and state.last == -1
    top = TINY.with_choices(dim, (40, 48))
    same, action = move_dimension(top, dim, -0.01, -0.08, DimensionState(1), 0.01, inside)
    assert same is top and "at bound" in action and "embed_dim 56 > the supernet's 48" in action
    grown, action = move_dimension(top, dim, -0.01, -0.08, DimensionState(1), 0.01, lambda s: s)  # --grow
    assert grown.choices(dim) == (48, 56)


def test_choices_stay_in_the_trained_range_unless_grown():
    supernet = FAMILY.build_supernet(TINY, 0)
    data = embedded_splits(32)
    dim = (1, "embed_dim")  # trained 24..48
    poor = TINY.with_choices(dim, (24, 32))
    bounded = SpaceEvolution(supernet, poor, EvolveSpaceRequest(), data, lambda m: None, trained=TINY)
    same, action = move_dimension(poor, dim, 0.01, 0.08, DimensionState(1), 0.01, bounded._fits)  # downhill: down
    assert same is poor and "leaves the trained range 24..48" in action
    up, _ = move_dimension(poor, dim, -0.01, -0.08, DimensionState(1), 0.01, bounded._fits)
    assert up.choices(dim) == (32, 40)
    grow = SpaceEvolution(supernet, poor, EvolveSpaceRequest(grow=True), data, lambda m: None, trained=TINY)
    down, _ = move_dimension(poor, dim, 0.01, 0.08, DimensionState(1), 0.01, grow._fits)
    assert down.choices(dim) == (16, 24)


def test_heads_and_qkv_moves_that_would_not_split_are_blocked():
    space = TINY.with_choices((2, "num_heads"), (2, 4)).with_choices((2, "qkv_dim"), (16, 32))
    moved, action = move_dimension(space, (2, "num_heads"), -0.01, -0.02, DimensionState(1), 0.0, _fits_inside(TINY))
    assert moved is space and "blocked" in action  # 3 and 5 heads split neither 16 nor 32


def test_an_impossible_budget_is_refused():
    supernet = FAMILY.build_supernet(TINY, 0)
    scorer = Scorer(supernet, embedded_splits(32)["val"], budget_gmac=1e-6)
    with pytest.raises(DeployNASError, match="no subnet of space 's3-tiny' meets the budget"):
        sample_feasible(TINY, 4, scorer.feasible, random.Random(0))


def _poor() -> S3Space:
    stages = (S3StageChoices((1,), (16,), (1.0, 2.0), (1,), (8, 16), (2,)),
              S3StageChoices((1,), (24, 32), (1.0,), (1,), (16,), (2,)),
              S3StageChoices((1,), (32,), (1.0,), (2,), (16,), (2,)),
              S3StageChoices((1,), (48,), (1.0,), (2,), (32,), (1,)))
    return S3Space("s3-tiny-poor", stages, 32, 4, 3, 10, super_stages=TINY.supers())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("s3") / "sn"
    train_supernet(FAMILY, TINY, out, TrainConfig(epochs=1, batch_size=64, max_steps=8, save_state=False))
    return out


def test_evolve_space_writes_valid_files_and_its_slopes_follow_the_data(tmp_path, trained):
    poor = tmp_path / "poor.json"
    poor.write_text(json.dumps(_poor().to_dict()))
    r = run("evolve-space", "--supernet", trained, "--space", poor, "--steps", "2", "--samples", "5", "--per-value",
            "3", "--min-effect", "0", "--finetune-epochs", "1", "--finetune-max-steps", "2", "--batch-size", "256",
            "--val-images", "240", "--out", tmp_path / "ev")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "ev"
    assert {p.name for p in out.iterdir()} >= {"evolution.json", "final.json", "et_error.png", "supernet"}
    record = json.loads((out / "evolution.json").read_text())
    steps = record["steps"]
    assert record["complete"] and [s["step"] for s in steps] == [0, 1, 2] and record["request"]["val_images"] == 240
    assert json.loads((out / "supernet" / "supernet.json").read_text())["trained_on"] == {"task": "embedded"}
    assert record["evaluated"] >= sum(s["scored"] for s in steps)  # counted over every step's weights
    for before, after in zip(steps, steps[1:]):
        assert 0 <= before["t_error"] <= before["e_error"] <= 1 and before["et_error"] == pytest.approx(
            (before["e_error"] + before["t_error"]) / 2)
        space = FAMILY.space_from_dict(before["space"])
        expected = FAMILY.space_from_dict(after["space"])
        for d in before["dimensions"]:
            x = [p["value"] for p in d["points"]]
            y = [p["et"] for p in d["points"]]
            assert d["slope"] == pytest.approx(float(np.polyfit(x, y, 1)[0]), abs=1e-12)
            dim = (d["stage"] - 1, d["dimension"])
            new, old = expected.choices(dim), space.choices(dim)
            if d["action"].startswith(("up", "down")):  # moved against the slope: the way the data says
                assert np.sign(np.mean(new) - np.mean(old)) == -np.sign(d["slope"])
            else:
                assert new == old
    final = load_space(out / "final.json")
    assert final == FAMILY.space_from_dict(steps[-1]["space"]) and final.family == "s3"
    moved = final.to_dict()["stages"] != _poor().to_dict()["stages"]  # other choices: not named as the start space
    assert final.name.startswith("s3-tiny-poor-evolved-") if moved else final.name == "s3-tiny-poor"
    supernet, _ = load_supernet_dir(trained)
    supernet.check_config(final.sample(None, "max"))  # without --grow the final space runs on the input supernet

    # the recorded step-0 points are real measurements: measure the first dimension again
    first = steps[0]["dimensions"][0]
    dim = (first["stage"] - 1, first["dimension"])
    bases = [_poor().sample(random.Random(f"0/bases/1/{i}")) for i in range(3)]
    val = scoring_split(embedded_splits(32)["val"], 240)
    again = dimension_points(Scorer(supernet, val, None), _poor(), dim, bases, 0.2, 1)
    assert len(again) == len(first["points"]) and all(a == pytest.approx(b) for a, b in zip(again, first["points"]))

    r = run("search", "--supernet", trained, "--space", out / "final.json", "--backend", "torch", "--threads", "1",
            "--latency-budget-ms", "1000", "--generations", "1", "--population", "4", "--measure", "8",
            "--out", tmp_path / "search")
    assert r.returncode == 0, r.stderr
    final.validate(FAMILY.config_from_dict(json.loads((tmp_path / "search" / "best.json").read_text())))


def test_evolve_space_bad_input_exits_2_and_writes_nothing(tmp_path, trained):
    empty = _poor().to_dict()
    empty["stages"][1]["window_size"] = []
    too_big = _poor().to_dict()
    too_big["stages"][1]["embed_dim"] = [32, 64]
    too_big["super_stages"] = None
    for name, space, message in (("empty", empty, "dimension window_size has no choices"),
                                 ("big", too_big, "(s3-tiny-poor) does not fit the s3 supernet; its max subnet: "
                                                  "stage 2: depth 1 and width 64 must fit the supernet's 2 blocks of "
                                                  "width 48")):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(space))
        r = run("evolve-space", "--supernet", trained, "--space", path, "--out", tmp_path / name)
        assert r.returncode == 2 and message in r.stderr and not (tmp_path / name).exists(), r.stderr
    r = run("evolve-space", "--supernet", trained, "--top-tier", "1.5", "--out", tmp_path / "tier")
    assert r.returncode == 2 and "top_tier=1.5" in r.stderr and not (tmp_path / "tier").exists()


def test_a_run_that_dies_midway_leaves_the_old_output_whole(tmp_path, trained, monkeypatch):
    """A --force replace is atomic: a run stopped after its first step (an error here; a kill alike) leaves the old
    output byte for byte, not the new evolution.json beside the old final.json and supernet/."""
    from deploy_nas.search import space_evolution

    supernet, _ = load_supernet_dir(trained)
    request = EvolveSpaceRequest(steps=0, samples=5, val_images=64)
    out = tmp_path / "ev"
    space_evolution.evolve_space(supernet, _poor(), out, request)
    # nothing fine-tuned (--steps 0): the supernet keeps the record of what it was trained on
    assert json.loads((out / "supernet" / "supernet.json").read_text())["trained_on"] == {"task": "embedded"}
    before = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert {"evolution.json", "final.json"} <= {str(p) for p in before}
    score = space_evolution.SpaceEvolution.score

    def dies_at_step_2(self, step):
        if step == 2:
            raise KeyboardInterrupt
        return score(self, step)

    monkeypatch.setattr(space_evolution.SpaceEvolution, "score", dies_at_step_2)
    longer = EvolveSpaceRequest(steps=2, samples=5, per_value=3, min_effect=0.0, finetune_max_steps=1,
                                val_images=64, batch_size=64)
    with pytest.raises(KeyboardInterrupt):
        space_evolution.evolve_space(load_supernet_dir(trained)[0], _poor(), out, longer, force=True)
    assert {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ev"]  # no temporary left beside it


def test_a_supernet_trained_on_image_folders_is_not_evolved_on_the_embedded_task(tmp_path, trained):
    from deploy_nas.errors import DataError
    from deploy_nas.search import space_evolution

    supernet, _ = load_supernet_dir(trained)
    supernet.trained_on = {"task": "image folders", "classes": ["a", "b"]}  # as load_supernet_dir sets it
    with pytest.raises(DataError, match="trained on image folders .*--data"):
        space_evolution.evolve_space(supernet, _poor(), tmp_path / "ev", EvolveSpaceRequest(steps=0, samples=5))
    assert not (tmp_path / "ev").exists()


def test_requests_out_of_range_are_refused_by_name():
    EvolveSpaceRequest().check()
    with pytest.raises(DeployNASError, match=r"samples=1, top_tier=0.0, budget_gmac=nan, val_images=0"):
        EvolveSpaceRequest(samples=1, top_tier=0.0, budget_gmac=float("nan"), val_images=0).check()
    # settings a run would not use are refused, not dropped
    EvolveSpaceRequest(steps=0, samples=5).check()
    with pytest.raises(DeployNASError, match=r"--per-value, --grow would change nothing: --steps 0 only scores"):
        EvolveSpaceRequest(steps=0, per_value=7, grow=True).check()
    with pytest.raises(DeployNASError, match=r"--finetune-lr would change nothing: --finetune-epochs 0"):
        EvolveSpaceRequest(finetune_epochs=0, finetune_lr=5.0).check()


def test_scoring_split_takes_the_first_images():
    val = embedded_splits(32)["val"]
    part = scoring_split(val, 10)
    assert len(part) == 10 and np.array_equal(part.images, val.images[:10]) and scoring_split(val, None) is val
