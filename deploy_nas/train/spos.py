"""Single-path one-shot training (SPOS, Guo et al.; PSViT's supernet rule): each step samples one candidate
uniformly from the space (`space.sample(rng)`: every stage size and every cell choice uniform) and trains only its
path on the labels; no max or min subnet, no distillation, no sandwich.

Everything else is the sandwich trainer's machinery, reused: AdamW (no decay on `supernet.no_weight_decay()`),
linear warm-up then cosine decay per step, optional EMA, checkpoint + resume, the seeded shuffles and shifts, and
data-parallel training: every rank draws the same path for a step (one RNG seeded by (seed, step)), takes its
slice of the global batch, and gradients are averaged before the update, so the weights equal what one process
computes on the global batch. (The SPOS paper does not fix how ranks share paths; one path per global step keeps
that equivalence and the rule "one candidate per iteration".)
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deploy_nas.errors import DeployNASError
from deploy_nas.evaluate import top1
from deploy_nas.train import TRAIN_RULES, TrainConfig
from deploy_nas.train.sandwich import SandwichTrainer, _grads

EVAL_PATHS = 3  # seeded random paths scored by `evaluate`, besides the max and min subnets


class SposTrainer(SandwichTrainer):
    """The rule "spos": one uniformly sampled path per step."""

    ignores = (*SandwichTrainer.ignores, "distill_weight")

    def __init__(self, supernet: nn.Module, space: Any, config: TrainConfig, world: Any = None):
        unused = [flag for flag, on in (("--grad-projection", config.grad_projection), ("--distill", config.distill),
                                        ("--num-random", config.num_random)) if on]
        if unused:
            raise DeployNASError(f"SPOS trains one path per step on the labels: {', '.join(unused)} (sandwich-rule "
                                 "settings: a max subnet to distil from or project onto, extra random subnets) do "
                                 "not apply; leave them out (the family's recipe, train_config(family, ...), turns "
                                 "them off)")
        super().__init__(supernet, space, config, world)

    def configs_for_step(self, step: int) -> list[Any]:
        rng = random.Random(self.config.seed * 1_000_003 + step)  # the same draw on every rank
        return [self.space.sample(rng)]

    def train_step(self, x: torch.Tensor, y: torch.Tensor, total_steps: int, steps_per_epoch: int) -> dict:
        """One step of the sampled path on this rank's slice (x, y) of the global batch."""
        c, model = self.config, self.model
        model.train()
        x, y = self.augment(x).to(self.device), y.to(self.device)
        (cfg,) = self.configs_for_step(self.step_count)
        self.optimizer.zero_grad(set_to_none=False)
        loss = F.cross_entropy(model(x, cfg), y, label_smoothing=c.label_smoothing)
        loss.backward()
        self.world.mean_(_grads(model))  # parameters off the path get zero gradients (AdamW still decays them)
        lr = self._apply_update(model.parameters(), total_steps, steps_per_epoch)
        # logged under the sandwich trainer's names: the epoch rows and the CLI read loss_max / loss_sub
        return {"loss_max": float(loss.detach()), "loss_sub": 0.0, "lr": lr, "layers": cfg.num_layers}

    @torch.no_grad()
    def evaluate(self, split: Any, kinds: tuple[str, ...] = ("max", "min", "paths"), batch: int = 256
                 ) -> dict[str, float]:
        """Top-1 of the max and min subnets and the mean over EVAL_PATHS seeded random paths (EMA when kept)."""
        result = {}
        with self.ema_weights():
            for kind in kinds:
                if kind == "paths":
                    rng = random.Random(0)
                    paths = [self.space.sample(rng) for _ in range(EVAL_PATHS)]
                    result[kind] = float(np.mean([top1(self.model.fixed(p), split, batch, self.device)
                                                  for p in paths]))
                else:
                    result[kind] = top1(self.model.fixed(self.space.sample(random.Random(0), kind)), split, batch,
                                        self.device)
        return result


TRAIN_RULES.register("spos", SposTrainer)
