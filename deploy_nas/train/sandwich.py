"""The sandwich rule (BigNAS / AutoFormer / NASViT): each step trains the max subnet on the labels, then the min
subnet and `num_random` random subnets on the labels mixed with the max subnet's (detached) predictions (in-place
distillation). Optionally NASViT's gradient projection combines, per parameter tensor, the gradient of the subnets
g_sub with that of the max subnet g_s as `(1 + a) g_sub + g_s` with `a = clamp(-<g_sub, g_s> / |g_sub|^2, 0, 2)`,
from a chosen epoch on. AdamW (no decay on `supernet.no_weight_decay()`) with linear warm-up then cosine decay per
step; optional EMA of the weights; checkpoint + resume.

Data-parallel: every rank draws the same subnets (one seeded RNG per step), takes its equal slice of the same
global batch, and gradients are averaged with all-reduce before the update, so every rank holds the same weights
and they equal what one process computes on the global batch.
"""
from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deploy_nas.devices import resolve_device
from deploy_nas.distributed import World
from deploy_nas.errors import DeployNASError, OutputPathError, TrainingDiverged
from deploy_nas.evaluate import top1
from deploy_nas.train import STATE_FILE, TRAIN_RULES, TrainConfig, lr_at, project


def _grads(model: nn.Module) -> list[torch.Tensor]:
    """Each parameter's gradient (zeros where a subnet did not touch it), in parameter order."""
    out = []
    for p in model.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        out.append(p.grad)
    return out


class SandwichTrainer:
    ignores: tuple[str, ...] = ("w_attn", "w_mlp", "w_patch", "freeze_weights")  # TrainConfig fields unused here

    def __init__(self, supernet: nn.Module, space: Any, config: TrainConfig, world: World | None = None):
        self.device = resolve_device(config.device)
        self.model, self.space, self.config = supernet.to(self.device), space, config.validate()
        self.world = world or World()
        if config.batch_size % self.world.size:
            raise DeployNASError(f"batch size {config.batch_size} does not split evenly over {self.world.size} "
                                 "ranks; pick a multiple of the world size")
        skip = supernet.no_weight_decay()
        decay = [p for n, p in supernet.named_parameters() if n not in skip]
        no_decay = [p for n, p in supernet.named_parameters() if n in skip]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
        self.ema = ({k: v.detach().clone() for k, v in supernet.state_dict().items()}
                    if config.ema_decay else None)
        self.step_count, self.epoch = 0, 0
        self.epoch_step = 0  # the batches of epoch `epoch` (0-based: the number of finished ones) done
        self.trained_on: dict[str, Any] | None = None  # supernet.json's record of the data (`data.data_record`)
        self.train_changes: list[dict[str, Any]] = []  # settings resumes changed, each at its epoch and step
        self.calib: Any = None  # a BatchNorm family's recalibration for `evaluate` (`train` sets it; None: stored)

    # --------------------------------------------------------------------------------------------- one step
    def configs_for_step(self, step: int) -> list[Any]:
        rng = random.Random(self.config.seed * 1_000_003 + step)  # the same draw on every rank
        return ([self.space.sample(rng, "max"), self.space.sample(rng, "min")]
                + [self.space.sample(rng) for _ in range(self.config.num_random)])

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Random shifts drawn for the whole global batch from (seed, step), this rank's slice applied: the same
        images get the same shifts whatever the number of ranks."""
        s = self.config.shift
        if not s:
            return x
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.step_count + 17)
        offsets = torch.randint(0, 2 * s + 1, (self.config.batch_size, 2), generator=g)
        per = self.config.batch_size // self.world.size
        offsets = offsets[self.world.rank * per:self.world.rank * per + len(x)]
        padded = F.pad(x, (s, s, s, s))
        h, w = x.shape[-2:]
        return torch.stack([p[:, i:i + h, j:j + w] for p, (i, j) in zip(padded, offsets.tolist())])

    def train_step(self, x: torch.Tensor, y: torch.Tensor, total_steps: int, steps_per_epoch: int) -> dict:
        """One sandwich step on this rank's slice (x, y) of the global batch."""
        c, model = self.config, self.model
        model.train()
        x, y = self.augment(x).to(self.device), y.to(self.device)
        configs = self.configs_for_step(self.step_count)
        projection = c.grad_projection and self.epoch >= c.projection_from_epoch
        self.optimizer.zero_grad(set_to_none=False)
        logits = model(x, configs[0])
        loss_max = F.cross_entropy(logits, y, label_smoothing=c.label_smoothing)
        loss_max.backward()
        if projection:
            g_s = [g.clone() for g in _grads(model)]
            self.optimizer.zero_grad(set_to_none=False)
        teacher = logits.detach().softmax(-1)
        sub_losses = []
        for cfg in configs[1:]:
            out = model(x, cfg)
            loss = F.cross_entropy(out, y, label_smoothing=c.label_smoothing)
            if c.distill:
                kl = F.kl_div(out.log_softmax(-1), teacher, reduction="batchmean")
                loss = (1 - c.distill_weight) * loss + c.distill_weight * kl
            loss.backward()
            sub_losses.append(float(loss.detach()))
        grads = _grads(model)
        if projection:
            self.world.mean_(g_s)
            self.world.mean_(grads)
            for g, gs in zip(grads, g_s):
                g.copy_(project(g, gs))
        else:
            self.world.mean_(grads)
        lr = self._apply_update(model.parameters(), total_steps, steps_per_epoch)
        return {"loss_max": float(loss_max.detach()), "loss_sub": float(np.mean(sub_losses)) if sub_losses else 0.0,
                "lr": lr}

    # ------------------------------------------------------------------------------------------------ loops
    def batches(self, n: int, epoch: int) -> list[np.ndarray]:
        """This rank's index slices of each full global batch of the epoch (a seeded shuffle, same on all ranks)."""
        order = np.random.default_rng(self.config.seed + 7919 * epoch).permutation(n)
        b, per = self.config.batch_size, self.config.batch_size // self.world.size
        return [order[i:i + b][self.world.rank * per:(self.world.rank + 1) * per] for i in range(0, n - b + 1, b)]

    def fit(self, train: Any, val: Any | None = None, out: str | Path | None = None,
            log: Callable[[dict], None] = lambda row: None) -> list[dict]:
        """Train for the configured epochs (from where a resumed state left off, inside an epoch too); returns one
        row per epoch trained in. A stop at `max_steps` inside an epoch leaves it unfinished: its row says
        "partial" and which of its steps were done (`epoch_step` of `steps_per_epoch`), the state saved records that
        position with `epoch` still the number of finished epochs, and a resume trains the epoch's remaining
        batches (the same seeded order), so stopping and resuming ends with the weights of the run not stopped."""
        from deploy_nas.data import spread
        from deploy_nas.family import SCORE_BN_IMAGES, Calibration, family_of

        c = self.config
        x_all, y_all = torch.from_numpy(train.images), torch.from_numpy(train.labels)
        if getattr(family_of(self.model), "batchnorm", False):  # what `evaluate` recalibrates on, as search does
            self.calib = Calibration("recalibrate", train.images[spread(len(train.images), SCORE_BN_IMAGES)])
        steps_per_epoch = len(x_all) // c.batch_size
        if steps_per_epoch == 0:
            raise DeployNASError(f"{len(x_all)} training images < one batch of {c.batch_size}")
        if c.shift >= min(x_all.shape[-2:]):
            raise DeployNASError(f"--shift {c.shift} would move the {x_all.shape[-2]}x{x_all.shape[-1]} training "
                                 f"images out of their frame; give less than {min(x_all.shape[-2:])}")
        total = c.epochs * steps_per_epoch
        history = []
        while self.epoch < c.epochs:
            losses = []
            for idx in self.batches(len(x_all), self.epoch)[self.epoch_step:]:
                if self.stopped():
                    break
                losses.append(self.train_step(x_all[idx], y_all[idx], total, steps_per_epoch))
                self.epoch_step += 1
                self._check_finite(losses[-1])
            partial = self.epoch_step < steps_per_epoch
            if partial and not losses:
                break  # stopped at --max-steps before this call trained a step of the epoch: nothing new to save
            self._check_finite()
            if not partial:
                self.epoch, self.epoch_step = self.epoch + 1, 0
            row = {"epoch": self.epoch + partial, "steps": self.step_count,
                   **({"partial": True, "epoch_step": self.epoch_step, "steps_per_epoch": steps_per_epoch}
                      if partial else {}),
                   "loss_max": float(np.mean([r["loss_max"] for r in losses])) if losses else None,
                   "loss_sub": float(np.mean([r["loss_sub"] for r in losses])) if losses else None}
            if val is not None:
                row.update({f"val_top1_{k}": v for k, v in self.evaluate(val).items()})
            row.update(self.epoch_stats())
            history.append(row)
            log(row)
            if out is not None and self.world.rank == 0:
                self.save(out)
            if partial or self.stopped():
                break
        return history

    def stopped(self) -> bool:
        """Whether --max-steps is reached."""
        return self.config.max_steps is not None and self.step_count >= self.config.max_steps

    def _check_finite(self, step: dict | None = None) -> None:
        """A diverged run stops before it saves: the losses of a step, or (at the end of an epoch, before the save)
        the weights, must be finite. OUT keeps the last epoch that was. Under torchrun every rank decides alike (the
        losses are each rank's slice's: a flag is all-reduced), so all stop with the same message."""
        bad = ([k for k, v in step.items() if k.startswith("loss") and not math.isfinite(v)] if step is not None else
               [n for n, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())][:3])
        if step is not None and self.world.size > 1:
            flag = torch.tensor([float(bool(bad))], device=self.device)
            self.world.mean_([flag])
            bad = bad or (["a loss on another rank"] if float(flag) > 0 else [])
        if bad:
            where = f"step {self.step_count}" if step is not None else f"the end of epoch {self.epoch + 1}"
            raise TrainingDiverged(f"training diverged at {where}: {', '.join(bad)} not finite (NaN or Inf); "
                                   f"nothing of this epoch was saved. Lower --lr (now {self.config.lr:g}) or keep "
                                   "--clip-grad, and train again")

    @torch.no_grad()
    def evaluate(self, split: Any, kinds: tuple[str, ...] = ("max", "min"), batch: int = 256) -> dict[str, float]:
        """Top-1 of the max/min subnets (EMA weights when kept; a BatchNorm family's subnets with their statistics
        recalibrated on training images first, as the official evaluation does: the stored ones are a mixture)."""
        with self.ema_weights():
            return {kind: top1(self.model.fixed(self.space.sample(random.Random(0), kind), self.calib), split, batch,
                               self.device) for kind in kinds}

    def epoch_stats(self) -> dict[str, float]:
        """What a rule logs at the end of each epoch besides losses and top-1 (none here)."""
        return {}

    @torch.no_grad()
    def _apply_update(self, params: Any, total_steps: int, steps_per_epoch: int) -> float:
        """The end of every rule's step: clip, set the scheduled learning rate, step, EMA; returns the rate."""
        c = self.config
        if c.clip_grad:
            nn.utils.clip_grad_norm_(params, c.clip_grad)
        lr = lr_at(self.step_count, total_steps, int(c.warmup_epochs * steps_per_epoch), c.lr, c.min_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self._update_ema()
        self.step_count += 1
        return lr

    def _update_ema(self) -> None:
        if self.ema is not None:
            for k, v in self.model.state_dict().items():
                self.ema[k].mul_(self.config.ema_decay).add_(v.detach(), alpha=1 - self.config.ema_decay)

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[None]:
        """The model holds the EMA weights (when kept) inside the block, its own weights again after."""
        if self.ema is None:
            yield
            return
        saved = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.ema)
        try:
            yield
        finally:
            self.model.load_state_dict(saved)

    # ------------------------------------------------------------------------------------------- checkpoints
    def save(self, out: str | Path) -> None:
        """The supernet directory (weights: EMA when kept) plus train_state.pt to resume from, replacing `out` in
        one rename: a kill at any moment leaves the last save's directory or this one, each with its state. Saved
        at each epoch's end, and where --max-steps stops inside an epoch (with the position in it)."""
        from deploy_nas.family import family_of
        from deploy_nas.supernets import save_supernet

        weights = family_of(self.model).supernet_from_meta(self.model.meta())  # a CPU copy for the directory
        weights.load_state_dict(self.ema if self.ema is not None else self.model.state_dict())
        # "epoch": the epochs finished; "epoch_step": the batches of the next one done (a --max-steps stop inside it)
        record = {"epoch": self.epoch, "epoch_step": self.epoch_step,
                  **({} if self.trained_on is None else {"trained_on": self.trained_on}),
                  **({"train_changes": self.train_changes} if self.train_changes else {})}
        try:
            save_supernet(weights, out, self.space, extra={"train": asdict(self.config), **record}, force=True,
                          also=self.write_extra)
        except OutputPathError as err:  # a file dropped into OUT since the last save, a full disk: OUT keeps that save
            if self.config.save_state and (Path(out) / STATE_FILE).is_file():
                raise OutputPathError(f"{err}; {out} keeps the training state saved before: continue with --resume "
                                      "once that is fixed") from None
            raise

    def write_extra(self, directory: Path) -> None:
        """What the supernet directory holds besides the supernet: train_state.pt (unless --no-save-state)."""
        if self.config.save_state:
            from deploy_nas.io import library_write

            with library_write(directory / STATE_FILE):  # a full disk: one OutputPathError, as for our own writes
                torch.save({"epoch": self.epoch, "epoch_step": self.epoch_step, "step": self.step_count,
                            "optimizer": self.optimizer.state_dict(),
                            "model": self.model.state_dict(), "ema": self.ema}, directory / STATE_FILE)

    def resume(self, out: str | Path) -> bool:
        """Load the state `save` wrote into `out`; False when there is none."""
        from deploy_nas.errors import CheckpointError, brief, reason
        from deploy_nas.supernets.checkpoint import read_checkpoint

        path = Path(out) / STATE_FILE
        if not path.is_file():
            return False
        state = read_checkpoint(path)  # an empty, cut or foreign file: a CheckpointError, nothing unpickled
        try:
            epoch, step = int(state["epoch"]), int(state["step"])
            epoch_step = int(state.get("epoch_step", 0))  # a state of an older version: at an epoch's end
            ema = state["ema"] if state["ema"] is None else {k: v.to(self.device) for k, v in state["ema"].items()}
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as err:
            raise CheckpointError(f"{path} is not the training state of this supernet and space ({type(err).__name__}: "
                                  f"{reason(err, 100)}); train into a new directory instead of --resume") from None
        if epoch < 0 or step < 0 or not 0 <= epoch_step <= step:
            raise CheckpointError(f"{path} records epoch {epoch}, step {step}, epoch step {epoch_step}; train into "
                                  "a new directory instead")
        if (ema is None) != (not self.config.ema_decay):  # an EMA begun at step 0 cannot be added or dropped
            given = "without --ema-decay" if ema is not None else f"with --ema-decay {self.config.ema_decay}"
            raise CheckpointError(f"{path} was trained {'with' if ema is not None else 'without'} an EMA of the "
                                  f"weights, this run {given}; resume with the setting it started with, or train "
                                  "into a new directory")
        tensors = {**state["model"], **{f"ema.{k}": v for k, v in (state["ema"] or {}).items()}}
        bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise CheckpointError(f"{path} holds non-finite weights ({brief(bad)}): the run it saved had diverged; "
                                  "train into a new directory instead of --resume")
        self.ema, self.epoch, self.epoch_step, self.step_count = ema, epoch, epoch_step, step
        return True


TRAIN_RULES.register("sandwich", SandwichTrainer)
