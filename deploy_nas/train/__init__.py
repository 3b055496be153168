"""Supernet training, family-agnostic over `supernet(x, cfg)`, `space.sample(rng, kind)` and the supernet protocol.

Each family names its training rule (`Family.train_rule`), a key of `TRAIN_RULES`; every module of this package
registers the rules it defines (`sandwich.py`: AutoFormer, NASViT, S3; `slim.py`: ViT-Slim's mask search). A rule
is a trainer class `(supernet, space, TrainConfig, World)` with `fit`, `evaluate`, `save` and `resume`;
`train_supernet` is the workflow the CLI calls.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deploy_nas.distributed import World
from deploy_nas.errors import DeployNASError
from deploy_nas.registry import Registry
from deploy_nas.settings import setting

STATE_FILE = "train_state.pt"


def _load_rules() -> None:
    """Import every module of this package: each registers the rules it defines (sandwich, spos, ...)."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


TRAIN_RULES: Registry[type] = Registry("training rule", DeployNASError, loader=_load_rules)


@dataclass(frozen=True)
class TrainConfig:
    """How to train a supernet; each field is also a `deploy-nas train` option (`--batch-size` for batch_size)."""

    epochs: int = setting(30)
    batch_size: int = setting(64, "global batch, split evenly across ranks")
    lr: float = setting(2e-3, "peak learning rate (AdamW)")
    min_lr: float = setting(1e-5, "learning rate at the end of the cosine decay")
    weight_decay: float = setting(0.05)
    warmup_epochs: float = setting(2.0)
    num_random: int = setting(2, "random subnets per step besides max and min")
    # smaller subnets learn the max subnet's predictions mixed with the labels: (1 - w) CE + w KL (a pure KL
    # target stalls early training on small data, when the max subnet's predictions are still near-uniform)
    distill: bool = setting(True, "in-place distillation from the max subnet")
    distill_weight: float = setting(0.5, "w in (1 - w) CE + w KL(max || sub)")
    label_smoothing: float = setting(0.1)
    grad_projection: bool = setting(False, "NASViT's gradient projection")
    projection_from_epoch: int = setting(0)
    # ViT-Slim's mask search (rule "slim"): loss = CE + w_attn sum|attn.zeta| + w_mlp sum|mlp.zeta|
    # + w_patch sum|tanh(patch_zeta)| over all layers (search.py's --w1/--w2/--w3, there divided by the world size)
    w_attn: float = setting(1e-4, "mask search: weight of the L1 term of the attention masks")
    w_mlp: float = setting(1e-4, "mask search: weight of the L1 term of the MLP masks")
    w_patch: float = setting(1e-4, "mask search: weight of the L1 term of the token masks")
    freeze_weights: bool = setting(False, "mask search: train only the masks and the norms")
    ema_decay: float | None = setting(None, "keep an EMA of the weights (saved instead of the raw weights)")
    clip_grad: float | None = setting(5.0)
    seed: int = setting(0)
    max_steps: int | None = setting(None, "stop after this many steps (smoke runs)")
    shift: int = setting(0, "augmentation: random translation by up to this many pixels")
    save_state: bool = setting(True, "keep train_state.pt beside the weights (needed by --resume)")
    device: str = setting("cpu", "cpu or cuda (under torchrun: cuda:LOCAL_RANK, NCCL)")

    def validate(self) -> TrainConfig:
        checks = (("epochs", 1 <= self.epochs <= 1_000_000), ("batch_size", 1 <= self.batch_size <= 1 << 16),
                  ("lr", 0 < self.lr < math.inf), ("min_lr", 0 <= self.min_lr <= self.lr),
                  ("num_random", 0 <= self.num_random <= 64), ("seed", 0 <= self.seed < 2**63),
                  ("weight_decay", 0 <= self.weight_decay < math.inf),
                  ("label_smoothing", 0 <= self.label_smoothing < 1),
                  ("clip_grad", self.clip_grad is None or 0 < self.clip_grad < math.inf),
                  ("distill_weight", 0 <= self.distill_weight <= 1),
                  ("warmup_epochs", 0 <= self.warmup_epochs <= 1_000_000),
                  ("shift", self.shift >= 0), ("ema_decay", self.ema_decay is None or 0 <= self.ema_decay < 1),
                  ("max_steps", self.max_steps is None or self.max_steps >= 1),
                  ("projection_from_epoch", self.projection_from_epoch >= 0),
                  *((w, 0 <= getattr(self, w) < math.inf) for w in ("w_attn", "w_mlp", "w_patch")))
        bad = [name for name, ok in checks if not ok]
        if bad:
            raise DeployNASError(f"training config out of range: {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}")
        return self


def lr_at(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Linear warm-up to `lr`, then cosine decay to `min_lr`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def project(g_sub: torch.Tensor, g_s: torch.Tensor) -> torch.Tensor:
    """NASViT's per-tensor combination (1 + a) g_sub + g_s, a = clamp(-<g_sub, g_s> / |g_sub|^2, 0, 2)."""
    norm = g_sub.pow(2).sum()
    if norm == 0:
        return g_s.clone()
    a = (-(g_sub * g_s).sum() / norm).clamp(0, 2)
    return (1 + a) * g_sub + g_s


def train_config(family: Any, given: dict[str, Any]) -> TrainConfig:
    """The family's training recipe (`Family.train_defaults`, e.g. NASViT's weak augmentation and gradient
    projection) under the settings the user gave, validated. A recipe with a constant rate (min_lr = lr) stays
    constant at a --lr given without --min-lr."""
    defaults = dict(getattr(family, "train_defaults", {}))
    if "lr" in given and "min_lr" not in given and defaults.get("min_lr", -1.0) == defaults.get("lr"):
        defaults["min_lr"] = given["lr"]
    config = TrainConfig(**{**defaults, **given}).validate()
    # a setting given that this run would not use is refused, not dropped, with the reason
    rule = family.train_rule
    unused = {k: f"{family.name} trains with rule {rule!r}, which does not use it"
              for k in given if k in TRAIN_RULES.get(rule).ignores}
    for k, needs, why in (("distill_weight", "distill", "distillation is off"),
                          ("projection_from_epoch", "grad_projection", "gradient projection is off")):
        if k in given and k not in unused and not getattr(config, needs):
            unused[k] = why
    if unused:
        reasons = "; ".join(f"--{k.replace('_', '-')} ({why})" for k, why in unused.items())
        raise DeployNASError(f"settings that would change nothing in this training: {reasons}; leave "
                             f"{'it' if len(unused) == 1 else 'them'} out")
    return config


def train_supernet(family: Any, space: Any, out: Path, config: TrainConfig, resume: bool = False,
                   data: dict[str, Any] | None = None, log: Callable[[dict], None] = lambda row: None,
                   supernet: Any = None) -> dict:
    """Train `supernet` (default: the family's, built for `space`, seeded) with the family's rule into `out` (a
    supernet directory, written after every epoch); returns {"history", "test_top1"} (None without a test split).
    Runs under torchrun too."""
    from deploy_nas.data import data_record, embedded_splits

    torch.manual_seed(config.seed)
    world = World()
    supernet = supernet if supernet is not None else family.build_supernet(space, config.seed)
    trainer = TRAIN_RULES.get(family.train_rule)(supernet, space, config, world)
    data = data or embedded_splits(space.img_size, space.in_chans)
    trainer.trained_on = data_record(data["train"])
    if resume and trainer.resume(out):
        _check_same_data(Path(out), trainer.trained_on)
        log({"resumed_from": str(out), "epoch": trainer.epoch})
    history = trainer.fit(data["train"], data["val"], out, log=log)
    # without a test split (image folders with no DIR/test) nothing is reported as test accuracy
    result = {"history": history, "test_top1": trainer.evaluate(data["test"]) if "test" in data else None}
    log({"test_top1": result["test_top1"]} if result["test_top1"] is not None else
        {"test_top1": None, "note": "no test split (DIR/test): val top-1 is in the last epoch's row"})
    return result


def _check_same_data(out: Path, record: dict[str, Any]) -> None:
    """A resumed training goes on with the data it started on: other classes would give its labels other meanings.
    (A directory written before supernet.json recorded its data is not checked.)"""
    from deploy_nas.data import class_names
    from deploy_nas.errors import DataError
    from deploy_nas.supernets import SUPERNET_FILE, read_supernet_meta, trained_on_of

    before = trained_on_of(read_supernet_meta(out), out / SUPERNET_FILE)
    if before is None or before == record:
        return

    def what(r: dict[str, Any]) -> str:
        if r["task"] == "embedded":
            return "the embedded task"
        return f"image folders of {len(r['classes'])} classes ({class_names(r['classes'])})"

    raise DataError(f"{out} was trained on {what(before)}, this run's data is {what(record)}; resume with the data "
                    f"it started on (--data), or train into a new --out")


__all__ = ["STATE_FILE", "TRAIN_RULES", "TrainConfig", "World", "lr_at", "project", "train_config", "train_supernet"]
