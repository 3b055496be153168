"""A few sandwich steps on the tiny NASViT space with the family's recipe (in-place distillation, gradient projection
from the first epoch): everything that should learn moves, the stored BatchNorm statistics move as in the official
training, and the projection changes the update."""
from __future__ import annotations

import copy

import torch

from deploy_nas.data import embedded_splits
from deploy_nas.family import FAMILIES
from deploy_nas.train import TRAIN_RULES, train_config
from tests.nasvit.nasvit_helpers import tiny_space


def _trainer(supernet, **given):
    family = FAMILIES.get("nasvit")
    config = train_config(family, {"batch_size": 8, "epochs": 1, "num_random": 1, "max_steps": 3, **given})
    return TRAIN_RULES.get(family.train_rule)(supernet, tiny_space(), config)


def test_the_recipe_is_the_official_one_where_train_config_has_a_knob():
    config = train_config(FAMILIES.get("nasvit"), {})
    assert (config.lr, config.weight_decay, config.clip_grad, config.grad_projection) == (3e-4, 0.0, 1.0, True)
    assert config.distill and config.shift == 1
    assert train_config(FAMILIES.get("nasvit"), {"grad_projection": False}).grad_projection is False


def test_sandwich_steps_with_gradient_projection_train_every_part():
    space = tiny_space()
    supernet = FAMILIES.get("nasvit").build_supernet(space, 0)
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    trainer = _trainer(supernet)
    train = embedded_splits(space.img_size, space.in_chans)["train"]
    x, y = torch.from_numpy(train.images[:8]), torch.from_numpy(train.labels[:8])
    rows = [trainer.train_step(x, y, total_steps=3, steps_per_epoch=3) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor([r["loss_max"], r["loss_sub"]])).all() for r in rows)
    after = supernet.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    for key in ("blocks.7.rescale_attn", "blocks.7.attn.proj_l.linear.weight", "blocks.7.attn.vconv.weight",
                "blocks.7.attn.relative_position_bias_table", "first_conv.conv.conv.weight",
                "blocks.0.mobile_inverted_conv.point_linear.bn.bn.weight", "classifier.linear.linear.weight",
                "first_conv.bn.bn.running_mean"):  # the stored statistics move in training mode (momentum 0.1)
        assert key in moved, key
    assert "blocks.0.mobile_inverted_conv.rescale" not in moved  # the official unused, frozen tensor
    assert not any("bn_tracking" in k for k in moved)


def test_the_projection_changes_the_update():
    space = tiny_space()
    base = FAMILIES.get("nasvit").build_supernet(space, 1)
    train = embedded_splits(space.img_size, space.in_chans)["train"]
    x, y = torch.from_numpy(train.images[:8]), torch.from_numpy(train.labels[:8])
    results = []
    for projection in (True, False):
        model = copy.deepcopy(base)
        _trainer(model, grad_projection=projection, shift=0).train_step(x, y, total_steps=3, steps_per_epoch=3)
        results.append(model.state_dict())
    differs = [k for k, v in results[0].items() if v.is_floating_point() and not torch.equal(v, results[1][k])]
    assert differs
