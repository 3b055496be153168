"""SPOS, the psvit training rule: one uniformly drawn path per step (the same on every rank), only that path's
weights move, sandwich-only settings refused, and a short run on the embedded digits that learns and resumes."""
from __future__ import annotations

import random

import pytest
import torch

from deploy_nas.data import Split, digits_splits
from deploy_nas.errors import DeployNASError
from deploy_nas.family import FAMILIES
from deploy_nas.spaces import SPACES
from deploy_nas.train import TRAIN_RULES, TrainConfig, train_config
from deploy_nas.train.spos import SposTrainer

FAMILY = FAMILIES.get("psvit")
SPACE = SPACES.get("psvit-tiny-2d")


def trainer(**settings) -> SposTrainer:
    return SposTrainer(FAMILY.build_supernet(SPACE, 0), SPACE, train_config(FAMILY, settings))


def test_the_family_trains_with_spos_and_refuses_sandwich_settings():
    assert FAMILY.train_rule == "spos" and TRAIN_RULES.get("spos") is SposTrainer
    for given in ({"grad_projection": True}, {"distill": True}, {"num_random": 2}):
        with pytest.raises(DeployNASError, match="SPOS trains one path per step"):
            trainer(**given)
    with pytest.raises(DeployNASError, match="--distill, --num-random"):
        SposTrainer(FAMILY.build_supernet(SPACE, 0), SPACE, TrainConfig())  # the sandwich defaults, not psvit's


def test_one_path_per_step_drawn_the_same_way_every_time():
    t = trainer(seed=3)
    paths = [t.configs_for_step(step) for step in range(60)]
    assert all(len(p) == 1 and SPACE.validate(p[0]) for p in paths)
    assert paths == [t.configs_for_step(step) for step in range(60)]  # what every rank draws for that step
    assert len({p[0].id for p in paths}) > 50
    rng = random.Random(3 * 1_000_003 + 7)
    assert t.configs_for_step(7) == [SPACE.sample(rng)]


def test_a_step_moves_only_the_sampled_path():
    t = trainer(weight_decay=0.0, lr=1e-2, warmup_epochs=0.0, clip_grad=None)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    (cfg,) = t.configs_for_step(0)
    data = digits_splits(32, 3)["train"]
    t.train_step(torch.from_numpy(data.images[:8]), torch.from_numpy(data.labels[:8]), 10, 10)
    changed = {k for k, v in t.model.state_dict().items() if not torch.equal(v, before[k])}
    on_path = {k for k in before if ".cells." not in k}
    for s, stage in enumerate(cfg.cells):
        for c, choice in enumerate(stage):
            if choice != "identity":
                on_path |= {k for k in before if k.startswith(f"stages.{s}.cells.{c}.{choice}.")}
    assert changed == on_path
    w = cfg.widths[0]  # prefix slicing: the rows past this subnet's width did not move either
    key = next(k for k in sorted(changed) if k.startswith("stages.0.") and k.endswith("fc2.weight"))
    if w < t.model.arch.widths[0]:
        assert torch.equal(t.model.state_dict()[key][w:], before[key][w:])


def test_short_training_on_the_digits_learns_and_resumes(tmp_path):
    splits = digits_splits(32, 3)
    config = dict(epochs=6, batch_size=32, warmup_epochs=0.5, ema_decay=0.5)
    t = trainer(**config)
    history = t.fit(Split(splits["train"].images[:512], splits["train"].labels[:512]), out=tmp_path / "sn")
    scores = t.evaluate(splits["val"])
    print(f"\nSPOS psvit-tiny-2d, {t.step_count} steps: loss {history[0]['loss_max']:.3f} -> "
          f"{history[-1]['loss_max']:.3f}, val top-1 {scores}")
    assert history[-1]["loss_max"] < history[0]["loss_max"] - 0.5 and scores["paths"] > 0.4  # chance: 0.1
    again = trainer(**config)
    assert again.resume(tmp_path / "sn") and (again.epoch, again.step_count) == (6, t.step_count)
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k
