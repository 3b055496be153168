"""Supernet training, family-agnostic over `supernet(x, cfg)`, `space.sample(rng, kind)` and the supernet protocol.

Each family names its training rule (`Family.train_rule`), a key of `TRAIN_RULES`; every module of this package
registers the rules it defines (`sandwich.py`: AutoFormer, NASViT, S3; `slim.py`: ViT-Slim's mask search). A rule
is a trainer class `(supernet, space, TrainConfig, World)` with `fit`, `evaluate`, `save` and `resume`;
`train_supernet` is the workflow the CLI calls.
"""
from __future__ import annotations

import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from deploy_nas.distributed import World
from deploy_nas.errors import DeployNASError
from deploy_nas.registry import Registry
from deploy_nas.settings import setting

STATE_FILE = "train_state.pt"
RUN_SETTINGS = ("max_steps", "save_state", "device")  # where and how far one command runs, not how it trains
GROWS_ON_RESUME = ("epochs",)  # a resume may raise it (a longer run: noted, and recorded in supernet.json)


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
    max_steps: int | None = setting(None, "stop after this many steps in all (smoke runs); an epoch it stops in "
                                          "stays unfinished, and a --resume finishes it")
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


class RecipeMismatch(DeployNASError):
    """A resume was given another training setting, family or space than the run it continues recorded."""


@dataclass(frozen=True)
class RecordedRun:
    """What the run in `out` that a --resume continues recorded in its supernet.json: its family and space, and the
    training settings it ran with. A resume goes on as the run started: those are its defaults, and another value
    given for one is refused, except more --epochs (a longer run, noted and recorded under "train_changes")."""

    out: Path
    meta: dict[str, Any]

    @classmethod
    def of(cls, out: str | Path, resume: bool) -> RecordedRun | None:
        """The record of the run a --resume continues; None when nothing is resumed (no training state in `out`)."""
        from deploy_nas.supernets import read_supernet_meta

        if not resume or not (Path(out) / STATE_FILE).is_file():
            return None
        return cls(Path(out), read_supernet_meta(out))

    @property
    def settings(self) -> dict[str, Any] | None:
        """The recipe the run recorded (supernet.json's "train", less RUN_SETTINGS), checked; None for a directory
        of a version that did not record it."""
        from deploy_nas.errors import CheckpointError, brief
        from deploy_nas.supernets import SUPERNET_FILE

        train = self.meta.get("train")
        if train is None:
            return None
        hints = typing.get_type_hints(TrainConfig)
        recipe = {f.name for f in fields(TrainConfig)} - set(RUN_SETTINGS)
        bad = ([f"{k}={brief(v)}" for k, v in train.items() if k in recipe and not _fits(v, hints[k])]
               if isinstance(train, dict) else [f"train={brief(train)}"])
        if bad:
            raise CheckpointError(f"{self.out / SUPERNET_FILE}: the training settings it records are malformed "
                                  f"({', '.join(bad)}); train into a new directory instead of --resume")
        return {k: v for k, v in train.items() if k in recipe}

    @property
    def earlier_changes(self) -> list[dict[str, Any]]:
        """The settings earlier resumes changed (supernet.json's "train_changes"), each at its epoch and step."""
        from deploy_nas.errors import CheckpointError, brief
        from deploy_nas.supernets import SUPERNET_FILE

        changes = self.meta.get("train_changes", [])
        if not (isinstance(changes, list) and all(isinstance(c, dict) for c in changes)):
            raise CheckpointError(f"{self.out / SUPERNET_FILE}: 'train_changes' must be a list of objects, got "
                                  f"{brief(changes)}; train into a new directory instead of --resume")
        return changes

    def changes(self, given: Mapping[str, Any], ignores: tuple[str, ...] = ()) -> dict[str, list]:
        """{setting: [recorded, given]} for the settings `given` changes that a resume may change (more --epochs);
        RecipeMismatch naming every other one given with another value than recorded (`ignores`: settings the
        training rule does not use, left to `train_config`'s own refusal)."""
        recorded = self.settings or {}
        diff = {k: [recorded[k], v] for k, v in given.items() if k in recorded and k not in ignores
                and v != recorded[k]}
        refused = {k: d for k, d in diff.items() if not (k in GROWS_ON_RESUME and d[1] > d[0])}
        if refused:
            shrink = " (--epochs may grow, to train longer, not shrink)" if "epochs" in refused else ""
            raise RecipeMismatch(
                f"{self.out} holds a run trained with {' '.join(_flag(k, old) for k, (old, _) in refused.items())}, "
                f"this resume gives {' '.join(_flag(k, new) for k, (_, new) in refused.items())}: a resume continues "
                f"the run with the settings it recorded{shrink}; leave {'it' if len(refused) == 1 else 'them'} out "
                "(the recorded values are the defaults), or train into a new --out")
        return {k: d for k, d in diff.items() if k not in refused}

    def target(self) -> tuple[Any, Any] | None:
        """(family, space) the run trained; None when its supernet.json records no space."""
        from deploy_nas.errors import MALFORMED, CheckpointError, reason
        from deploy_nas.family import FAMILIES
        from deploy_nas.supernets import SUPERNET_FILE

        fam = FAMILIES.get(self.meta["family"])
        if self.meta.get("space") is None:
            return None
        try:
            return fam, fam.space_from_dict(self.meta["space"])
        except DeployNASError:
            raise
        except MALFORMED as err:
            raise CheckpointError(f"{self.out / SUPERNET_FILE} does not describe the space it was trained on "
                                  f"({type(err).__name__}: {reason(err, 120)}); train into a new directory instead "
                                  "of --resume") from None

    def check_target(self, family: Any, space: Any, flags: str) -> None:
        """RecipeMismatch unless `family` and `space` (given with `flags`) are those the run trained."""
        from deploy_nas.errors import brief

        if family.name != self.meta["family"]:
            raise RecipeMismatch(f"{self.out} holds the training of a supernet of family {brief(self.meta['family'])}, "
                                 f"this run trains family {family.name!r}: resume it with its own family, or train "
                                 "into a new --out")
        recorded = self.target()
        if recorded is not None and recorded[1] != space:
            was, now = (brief(getattr(s, "name", None)) for s in (recorded[1], space))
            raise RecipeMismatch(f"{self.out} was trained on space {was}, this resume gives {now}"
                                 f"{' with other choices' if was == now else ''} ({flags}): leave {flags} out to "
                                 "continue it on its own space (supernet.json records it), or train into a new --out")


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value has a TrainConfig field's type (an int fits a float field; a bool only a bool field)."""
    kinds = set(typing.get_args(hint) or (hint,))
    return type(value) in (kinds | {int} if float in kinds else kinds)


def _flag(name: str, value: Any) -> str:
    """A setting as its option: --lr 0.004, --no-distill, no --ema-decay."""
    flag = f"--{name.replace('_', '-')}"
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    return f"no {flag}" if value is None else f"{flag} {value}"


def resume_target(run: RecordedRun | None, family: str | None, space: str | None) -> tuple[Any, Any]:
    """The (family, space) `deploy-nas train` trains (`workflows.training_target`); on a resume the run's own, and
    a --family or --space given must be those."""
    from deploy_nas.workflows import training_target

    recorded = run.target() if run is not None else None
    if recorded is not None and space is None and family in (None, recorded[0].name):
        return recorded
    fam, chosen = training_target(family, space)
    if run is not None:
        run.check_target(fam, chosen, "--space")
    return fam, chosen


def train_config(family: Any, given: dict[str, Any], run: RecordedRun | None = None) -> TrainConfig:
    """The family's training recipe (`Family.train_defaults`, e.g. NASViT's weak augmentation and gradient
    projection) under the settings the user gave, validated. A recipe with a constant rate (min_lr = lr) stays
    constant at a --lr given without --min-lr. On a resume (`run`) the recipe the run recorded is the default, and a
    setting given with another value is refused (RecipeMismatch) unless a resume may change it (more --epochs)."""
    defaults = dict(getattr(family, "train_defaults", {}))
    if run is not None:
        run.changes(given, TRAIN_RULES.get(family.train_rule).ignores)
        defaults.update(run.settings or {})
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
        # epoch: the epochs finished; epoch_step: the steps of the next one done (--max-steps stopped inside it)
        log({"resumed_from": str(out), "epoch": trainer.epoch, "epoch_step": getattr(trainer, "epoch_step", 0),
             **_resumed_recipe(trainer, RecordedRun.of(out, True))})
    history = trainer.fit(data["train"], data["val"], out, log=log)
    # without a test split (image folders with no DIR/test) nothing is reported as test accuracy
    result = {"history": history, "test_top1": trainer.evaluate(data["test"]) if "test" in data else None}
    log({"test_top1": result["test_top1"]} if result["test_top1"] is not None else
        {"test_top1": None, "note": "no test split (DIR/test): val top-1 is in the last epoch's row"})
    return result


def _resumed_recipe(trainer: Any, run: RecordedRun) -> dict[str, str]:
    """Check the trainer's settings against those the resumed run recorded (RecipeMismatch), carry the record of the
    settings earlier resumes changed, add this resume's (at its epoch and step); the note for the log, if any."""
    settings = run.settings
    if settings is None:
        return {"note": f"{run.out} records no training settings (a run of an older version): resumed with the "
                        "settings given, the defaults for those left out"}
    changes = run.changes(asdict(trainer.config), trainer.ignores)
    now = [{"epoch": trainer.epoch, "step": trainer.step_count, **changes}] if changes else []
    trainer.train_changes = [*run.earlier_changes, *now]
    if not changes:
        return {}
    inside = f", {trainer.epoch_step} into the epoch" if getattr(trainer, "epoch_step", 0) else ""
    return {"note": f"resumed at epoch {trainer.epoch} (step {trainer.step_count}{inside}) with "
                    f"{' '.join(_flag(k, new) for k, (_, new) in changes.items())} instead of the recorded "
                    f"{' '.join(_flag(k, old) for k, (old, _) in changes.items())}: the learning-rate schedule spans "
                    "the new number of epochs from here on (supernet.json records the change in train_changes)"}


def _check_same_data(out: Path, record: dict[str, Any]) -> None:
    """A resumed training goes on with the data it started on: other classes would give its labels other meanings.
    (A directory written before supernet.json recorded its data is not checked.)"""
    from deploy_nas.data import class_names
    from deploy_nas.errors import DataError
    from deploy_nas.supernets import SUPERNET_FILE, read_supernet_meta, trained_on_of

    before = trained_on_of(read_supernet_meta(out), out / SUPERNET_FILE)
    if before is None or _one_form(before) == _one_form(record):
        return

    def what(r: dict[str, Any]) -> str:
        if r["task"] == "embedded":
            return "the embedded task"
        return f"image folders of {len(r['classes'])} classes ({class_names(r['classes'])})"

    raise DataError(f"{out} was trained on {what(before)}, this run's data is {what(record)}; resume with the data "
                    f"it started on (--data), or train into a new --out")


def _one_form(record: dict[str, Any]) -> dict[str, Any]:
    """A data record with its class names in one Unicode form (NFC, as the data loader reads folder names now; a
    run recorded before may hold the NFD names of folders copied from macOS)."""
    from deploy_nas.data import one_form

    classes = record.get("classes")
    return {**record, "classes": one_form(classes)} if classes else record


__all__ = ["STATE_FILE", "TRAIN_RULES", "RecipeMismatch", "RecordedRun", "TrainConfig", "World", "lr_at", "project",
           "resume_target", "train_config", "train_supernet"]
