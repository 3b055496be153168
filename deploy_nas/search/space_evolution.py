"""S3's E-T error of a search space and its per-dimension evolution (Chen et al., "Searching the Search Space of
Vision Transformer", NeurIPS 2021; the official repository has no code for either, so every rule below is ours
where the paper leaves it open, and each such choice is marked CHOICE).

**E-T error of a space.** Architectures sampled from the space under a resource constraint (`budget_gmac`, the
per-image GMAC of the dense subnet) are scored with inherited supernet weights (top-1 error on the validation
split, or on its first `val_images` images). E = their mean error; T = the mean error of the top tier (the best
`top_tier` fraction of them). E-T = (E + T) / 2 (the article: "the average of the two").
* CHOICE: rejection sampling, `samples` distinct architectures per space (the paper reportedly used about 1,000 on
  ImageNet; the demo data needs far fewer); the top tier is a fraction of the same sample (at least one).

**Evolution step.** The space splits into dimensions: (stage, depth | embed_dim | mlp_ratio | num_heads | qkv_dim |
window_size). For each dimension with two or more choices, the sub-space that fixes it to one choice gets its own
E-T error; a line is fitted to E-T error against the choice value, and the choices move the way the line goes
down. Then the supernet is fine-tuned on the new space (sandwich rule), inheriting its weights, and the next step
scores again.
* CHOICE (paired sampling): the sub-spaces of one dimension share `per_value` base architectures drawn from the
  whole space; each base is set to the value (every block of the stage for a per-block dimension; a new depth keeps
  the first blocks and draws the genes of added ones), so the values are compared on the same architectures, which
  makes slopes from a few dozen subnets reliable. Bases over the budget after the change are dropped; a value with
  fewer than two feasible bases gives no point, and a dimension with fewer than two points no slope.
* CHOICE (step rule): effect = slope x (largest - smallest choice), the E-T change the line predicts across the
  current choices. |effect| < `min_effect`: the choices stay (the dimension is settled). Otherwise every choice moves
  by `move` units downhill (units: depth 1 block, widths 8 channels, MLP ratio 0.5, heads 1; windows move along the
  ladder of the stage's legal windows: its divisors and the map itself). `move` starts at the median spacing of the
  choices (in units) and halves, down to one unit, whenever the slope's sign flips against the last move
  (overshoot). A move that would leave the legal range (below one unit, or beyond the supernet's sizes without
  `grow`) or make the space invalid (a Q-K-V width not split by some head count) shrinks to the largest move that
  stays valid, else the choices stay ("at bound" / "blocked").
* CHOICE (trained range): without `grow`, choices never leave the range the supernet was trained on (each
  dimension's smallest..largest choice of its own space, when the supernet directory records it): a width, depth
  or window below the trained ones has weights (prefix slicing) but was never trained, and a short fine-tuning
  does not make up for it (measured on an s3-tiny supernet: a step that moved a stage-3 width from 32 to 24, beside
  two moves up, raised E by 3.8 points before fine-tuning and 1.1 after one epoch), so a slope that points there
  reads untrained weights, not the space.
* CHOICE (weights): without `grow`, choices never leave the supernet's sizes, so the final space runs on the
  supernet it started from (`deploy-nas search --supernet SN --space OUT/final.json`); with `grow`, a larger
  supernet (grown again in any step whose moves pass its sizes) inherits every weight where the layouts put it
  (old subnets compute exactly as before) and the new positions start from the official initialisation. Each step
  fine-tunes `finetune_epochs` epochs (default 1) on the new space at a peak learning rate of `finetune_lr`
  (default 1e-4: on a converged s3-tiny supernet, the demo's three steps ended at E-T 0.0873 with 1e-4 and at
  0.0967 with 5e-4, from 0.0929; a warm restart at a high rate undoes more of the training than one epoch
  recovers).

Outputs (built in a temporary directory that replaces OUT when the run ends: a killed or failed run leaves the old
output, if any, as it was, and no partial one; its per-step results are in the printed log): evolution.json (per
step: the space, its E, T and E-T error, each dimension's points, slope, effect and action), final.json (the last
space, a file `search --space` accepts), et_error.png (E-T, E and T per step) and supernet/ (the fine-tuned,
possibly grown supernet).
"""
from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from deploy_nas.errors import DeployNASError, InvalidSubnetConfig
from deploy_nas.settings import setting

Log = Callable[[str], None]
UNITS = {"depth": 1, "embed_dim": 8, "mlp_ratio": 0.5, "num_heads": 1, "qkv_dim": 8}
EVOLUTION_FILE, FINAL_FILE, PLOT_FILE, SUPERNET_DIR = "evolution.json", "final.json", "et_error.png", "supernet"


@dataclass(frozen=True)
class EvolveSpaceRequest:
    """What `deploy-nas evolve-space` asks for (each field is one of its options)."""

    steps: int = setting(3, "evolution steps (each: fit the slopes, move the choices, fine-tune, score)")
    budget_gmac: float | None = setting(None, "resource constraint: per-image GMAC of every subnet scored "
                                              "(default: none)")
    samples: int = setting(40, "subnets sampled to score a space (E over all, T over the top tier)")
    top_tier: float = setting(0.2, "fraction of the scored subnets that forms the top tier")
    val_images: int | None = setting(None, "score on the first N validation images (default: all)")
    per_value: int = setting(12, "base subnets per choice value when fitting a dimension's slope")
    min_effect: float = setting(0.01, "E-T change across a dimension's choices below which they stay")
    finetune_epochs: int = setting(1, "sandwich epochs on each new space, inheriting the weights")
    finetune_lr: float = setting(1e-4, "peak learning rate of the fine-tuning (no warm-up, cosine to 1e-5)")
    finetune_max_steps: int | None = setting(None, "stop each fine-tuning after this many steps (smoke runs)")
    batch_size: int = setting(64, "fine-tuning batch size")
    grow: bool = setting(False, "let choices move past the supernet's sizes (a larger supernet inherits the "
                                "weights; search it from OUT/supernet)")
    data_dir: Path | None = setting(None, "image folders DIR/train and DIR/val (default: the embedded digits)",
                                    flag="--data")
    seed: int = setting(0)

    def check(self) -> EvolveSpaceRequest:
        bounds = (("steps", 0, 100), ("samples", 2, 100_000), ("per_value", 2, 100_000), ("finetune_epochs", 0, 1000),
                  ("batch_size", 1, 1 << 16), ("seed", 0, 2**63 - 1))
        bad = [f"{n}={getattr(self, n)}" for n, low, high in bounds if not low <= getattr(self, n) <= high]
        reals = (("top_tier", self.top_tier, 0 < self.top_tier <= 1), ("min_effect", self.min_effect,
                 self.min_effect >= 0), ("finetune_lr", self.finetune_lr, self.finetune_lr > 0),
                 ("budget_gmac", self.budget_gmac, self.budget_gmac is None or self.budget_gmac > 0),
                 ("finetune_max_steps", self.finetune_max_steps,
                  self.finetune_max_steps is None or self.finetune_max_steps >= 1),
                 ("val_images", self.val_images, self.val_images is None or self.val_images >= 1))
        bad += [f"{n}={v!r}" for n, v, ok in reals if v is not None and (not math.isfinite(v) or not ok)]
        if bad:
            raise DeployNASError(f"evolve-space settings out of range: {', '.join(bad)} (steps 0..100; samples and "
                                 "per-value >= 2; top tier in (0, 1]; min effect >= 0; lr and budget > 0; "
                                 "fine-tune max steps and val images >= 1)")
        # settings given (away from their defaults) that this run would never use are refused, not dropped
        finetuning, idle, why = ("finetune_lr", "finetune_max_steps", "batch_size"), (), ""
        if self.steps == 0:
            idle, why = ("per_value", "min_effect", "finetune_epochs", *finetuning, "grow"), "--steps 0 only scores " \
                "the start space"
        elif self.finetune_epochs == 0:
            idle, why = finetuning, "--finetune-epochs 0 fine-tunes nothing"
        unused = [n for n in idle if getattr(self, n) != getattr(EvolveSpaceRequest, n)]
        if unused:
            raise DeployNASError(f"{', '.join('--' + n.replace('_', '-') for n in unused)} would change nothing: "
                                 f"{why}; leave {'it' if len(unused) == 1 else 'them'} out")
        return self


# ------------------------------------------------------------------------------------------------ E-T error


def et_error(errors: list[float], top_tier: float) -> dict[str, float]:
    """{"e": mean error, "t": mean error of the best `top_tier` fraction (at least one), "et": their mean, "n"}."""
    if not errors:
        raise ValueError("E-T error of no architectures")
    ranked = sorted(errors)
    top = ranked[:max(1, round(top_tier * len(ranked)))]
    e, t = statistics.fmean(ranked), statistics.fmean(top)
    return {"e": e, "t": t, "et": (e + t) / 2, "n": len(ranked)}


class Scorer:
    """Top-1 error of subnets with inherited weights on a split, cached by config id (reset when the weights
    change), and their GMAC."""

    def __init__(self, supernet: Any, split: Any, budget_gmac: float | None):
        self.supernet, self.split, self.budget = supernet, split, budget_gmac
        self.errors: dict[str, float] = {}
        self.evaluated = 0

    def error(self, cfg: Any) -> float:
        from deploy_nas.evaluate import top1

        if cfg.id not in self.errors:
            self.errors[cfg.id] = 1.0 - top1(self.supernet.fixed(cfg), self.split)
            self.evaluated += 1
        return self.errors[cfg.id]

    def feasible(self, cfg: Any) -> bool:
        return self.budget is None or self.supernet.macs(cfg) / 1e9 <= self.budget

    def space_et(self, space: Any, n: int, top_tier: float, rng: random.Random) -> dict[str, float]:
        cfgs = sample_feasible(space, n, self.feasible, rng)
        return et_error([self.error(c) for c in cfgs], top_tier)


def scoring_split(split: Any, n: int | None) -> Any:
    """The first `n` images of `split` (all of them when n is None)."""
    return split if n is None or n >= len(split) else replace(split, images=split.images[:n], labels=split.labels[:n])


def sample_feasible(space: Any, n: int, feasible: Callable[[Any], bool], rng: random.Random) -> list[Any]:
    """Up to `n` distinct configs of `space` meeting the constraint (rejection sampling, the min subnet first)."""
    found: dict[str, Any] = {}
    for i in range(100 * n):
        cfg = space.sample(rng, "min" if i == 0 else "random")
        if cfg.id not in found and feasible(cfg):
            found[cfg.id] = cfg
            if len(found) == n:
                break
    if not found:
        raise DeployNASError(f"no subnet of space {space.name!r} meets the budget (its min subnet is over it); "
                             "raise --budget-gmac or start from smaller choices")
    return list(found.values())


# ------------------------------------------------------------------------------------------ slopes and moves


def dimension_points(scorer: Scorer, space: Any, dim: tuple[int, str], bases: list[Any], top_tier: float,
                     seed: int) -> list[dict[str, float]]:
    """One point per choice value: the E-T error of the bases set to that value (feasible ones, at least two)."""
    points = []
    for value in space.choices(dim):
        rng = random.Random(f"{seed}/{dim}/{value}")
        cfgs = [space.with_value(c, dim, value, rng) for c in bases]
        cfgs = list({c.id: c for c in cfgs if scorer.feasible(c)}.values())
        if len(cfgs) >= 2:
            points.append({"value": float(value), **et_error([scorer.error(c) for c in cfgs], top_tier)})
    return points


def fit_slope(points: list[dict[str, float]]) -> float | None:
    """Least-squares slope of E-T error against the choice value; None with fewer than two distinct values."""
    if len({p["value"] for p in points}) < 2:
        return None
    x = np.array([p["value"] for p in points])
    y = np.array([p["et"] for p in points])
    return float(np.polyfit(x, y, 1)[0])


@dataclass
class DimensionState:
    """A dimension's move size (units or ladder positions) and the direction it last moved (-1, 0, 1)."""

    move: int
    last: int = 0


def window_ladder(resolution: int) -> list[int]:
    """The stage's legal windows: the divisors of its map, the map itself last (global attention)."""
    return [w for w in range(1, resolution + 1) if resolution % w == 0]


def initial_move(space: Any, dim: tuple[int, str]) -> int:
    values = list(space.choices(dim))
    if dim[1] == "window_size":
        ladder = window_ladder(space.resolutions[dim[0]])
        values = [ladder.index(min(w, ladder[-1])) for w in values]
        unit = 1
    else:
        unit = UNITS[dim[1]]
    gaps = [(b - a) / unit for a, b in zip(values, values[1:])]
    return max(1, round(statistics.median(gaps))) if gaps else 1


def shifted(space: Any, dim: tuple[int, str], direction: int, move: int) -> tuple:
    """The choices moved `move` units (or ladder positions) in `direction`."""
    values = space.choices(dim)
    if dim[1] == "window_size":
        ladder = window_ladder(space.resolutions[dim[0]])
        pos = [ladder.index(min(w, ladder[-1])) + direction * move for w in values]
        if min(pos) < 0 or max(pos) >= len(ladder):
            raise InvalidSubnetConfig("window ladder end")
        return tuple(ladder[p] for p in pos)
    unit = UNITS[dim[1]]
    moved = tuple(v + direction * move * unit for v in values)
    if min(moved) < unit:
        raise InvalidSubnetConfig(f"{dim[1]} below {unit}")
    return tuple(float(v) for v in moved) if dim[1] == "mlp_ratio" else tuple(int(v) for v in moved)


def move_dimension(space: Any, dim: tuple[int, str], slope: float | None, effect: float, state: DimensionState,
                   min_effect: float, fits: Callable[[Any], None]) -> tuple[Any, str]:
    """(the space after this dimension's move, what happened); `fits(space)` raises if the space cannot be used."""
    if slope is None:
        return space, "kept (no slope: fewer than two feasible values)"
    if slope == 0 or abs(effect) < min_effect:
        state.last = 0
        return space, f"kept (effect {effect:+.4f} below {min_effect:g})"
    direction = -1 if slope > 0 else 1  # downhill
    if state.last and direction != state.last:
        state.move = max(1, state.move // 2)  # overshoot: halve the step
    for move in range(state.move, 0, -1):
        try:
            candidate = space.with_choices(dim, shifted(space, dim, direction, move))
            fits(candidate)
        except InvalidSubnetConfig as err:
            reason = str(err)
            continue
        state.last, state.move = direction, move
        return candidate, f"{'up' if direction > 0 else 'down'} by {move} -> {list(candidate.choices(dim))}"
    state.last = 0
    return space, f"at bound or blocked ({reason[:120]})"


# -------------------------------------------------------------------------------------------------- the loop


class SpaceEvolution:
    def __init__(self, supernet: Any, space: Any, request: EvolveSpaceRequest, data: dict[str, Any], log: Log,
                 trained: Any = None):
        self.supernet, self.space, self.request, self.data, self.log = supernet, space, request, data, log
        self.start_name = space.name
        self.trained = trained  # the space the supernet was trained on (None: unknown, its sizes bound alone)
        self.val = scoring_split(data["val"], request.val_images)
        self.scorer = Scorer(supernet, self.val, request.budget_gmac)
        self.states = {dim: DimensionState(initial_move(space, dim)) for dim in space.dimensions()}
        self.rows: list[dict[str, Any]] = []
        self.evaluated = 0  # subnets evaluated by the scorers of earlier weights

    def score(self, step: int) -> dict[str, Any]:
        r = self.request
        et = self.scorer.space_et(self.space, r.samples, r.top_tier, random.Random(f"{r.seed}/score/{step}"))
        self.log(f"step {step}: E-T error {et['et']:.4f} (E {et['e']:.4f}, T {et['t']:.4f}, {et['n']} subnets)")
        return {"step": step, "space": self.space.to_dict(), "et_error": et["et"], "e_error": et["e"],
                "t_error": et["t"], "scored": et["n"]}

    def evolve(self, step: int) -> list[dict[str, Any]]:
        """Fit every dimension's slope on the current space, then move them all (the new space is self.space)."""
        r = self.request
        # the moves see the choices alone: the supernet's sizes that the last fine-tuning stored on the space would
        # bound every move by them (each replace() checks them), growing the supernet in the first step only;
        # `_fits` bounds the moves by the sizes without --grow, and `finetune` stores the (grown) sizes again
        space = replace(self.space, super_stages=None)
        bases = [space.sample(random.Random(f"{r.seed}/bases/{step}/{i}")) for i in range(r.per_value)]
        rows, new = [], space
        for dim in space.dimensions():
            if len(space.choices(dim)) < 2:
                continue
            points = dimension_points(self.scorer, space, dim, bases, r.top_tier, r.seed + step)
            slope = fit_slope(points)
            values = space.choices(dim)
            effect = slope * (float(max(values)) - float(min(values))) if slope is not None else 0.0
            new, action = move_dimension(new, dim, slope, effect, self.states[dim], r.min_effect, self._fits)
            rows.append({"stage": dim[0] + 1, "dimension": dim[1], "choices": list(values), "points": points,
                         "slope": slope, "effect": effect, "action": action})
            self.log(f"  stage {dim[0] + 1} {dim[1]:<11} {list(values)}: slope {_fmt(slope)}, {action}")
        if new != space:  # other choices: another space, named so (final.json is not the registered space it began as)
            self.space = replace(new, name=f"{self.start_name}-evolved-{step}")
        return rows

    def _fits(self, space: Any) -> None:
        """Raise InvalidSubnetConfig unless `space` is valid (and, without grow, inside the supernet's sizes)."""
        supers = None if self.request.grow else self.supernet.arch.stages
        replace(space, super_stages=supers)  # __post_init__ checks the choices (against the sizes when given)
        if self.request.grow or self.trained is None:
            return
        for dim in space.dimensions():
            low, high = min(self.trained.choices(dim)), max(self.trained.choices(dim))
            if min(space.choices(dim)) < low or max(space.choices(dim)) > high:
                raise InvalidSubnetConfig(f"stage {dim[0] + 1} {dim[1]} {list(space.choices(dim))} leaves the "
                                          f"trained range {low}..{high}")

    def finetune(self, step: int) -> dict[str, Any]:
        """Grow the supernet if the space needs it, then fine-tune it on the new space (sandwich rule)."""
        from deploy_nas.supernets.s3 import S3Arch, grown
        from deploy_nas.train import TrainConfig
        from deploy_nas.train.sandwich import SandwichTrainer

        info: dict[str, Any] = {"grown": False, "epochs": self.request.finetune_epochs}
        need = S3Arch.from_space(self.space)
        if self.request.grow and need.stages != self.supernet.arch.stages:
            sizes = tuple(replace(a, **{k: max(v, getattr(b, k)) for k, v in asdict(a).items()})
                          for a, b in zip(self.supernet.arch.stages, need.stages))
            self.supernet = grown(self.supernet, replace(self.supernet.arch, stages=sizes), self.request.seed + step)
            info["grown"] = True
        self.space = replace(self.space, super_stages=self.supernet.arch.stages)
        if self.request.finetune_epochs:
            cfg = TrainConfig(epochs=self.request.finetune_epochs, lr=self.request.finetune_lr,
                              min_lr=min(1e-5, self.request.finetune_lr), warmup_epochs=0.0,
                              batch_size=self.request.batch_size, seed=self.request.seed + step, save_state=False,
                              max_steps=self.request.finetune_max_steps)
            trainer = SandwichTrainer(self.supernet, self.space, cfg)
            history = trainer.fit(self.data["train"])
            info["loss_max"] = history[-1]["loss_max"] if history else None
            self.supernet.eval()
        self.evaluated += self.scorer.evaluated
        self.scorer = Scorer(self.supernet, self.val, self.request.budget_gmac)  # new weights, new scores
        return info


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4g}"


def evolve_space(supernet: Any, space: Any, out: str | Path, request: EvolveSpaceRequest,
                 log: Log = lambda m: None, force: bool = False, trained: Any = None) -> dict[str, Any]:
    """Score `space` (E-T error), then `request.steps` times: fit per-dimension slopes, move the choices, fine-tune
    the supernet on the new space and score it. `trained`: the space the supernet was trained on (choices stay in
    its range unless `request.grow`). Writes OUT/evolution.json, OUT/final.json, OUT/et_error.png and
    OUT/supernet; returns the evolution record."""
    from deploy_nas.io import atomic_dir, check_output_dir

    request.check()
    out = Path(out)
    space = _usable_space(supernet, space)
    check_output_dir(out, force)
    if trained is not None:
        _usable_space(supernet, trained)
    evolution = SpaceEvolution(supernet, space, request, _data(space, request.data_dir, supernet), log, trained)
    rows = [evolution.score(0)]
    # OUT appears whole when the run ends: a failed or killed run (a --force replace included) leaves the old output
    # as it was, and no partial one; the per-step results of such a run are in its log (each step is printed)
    with atomic_dir(out, force) as tmp:
        for step in range(1, request.steps + 1):
            rows[-1]["dimensions"] = evolution.evolve(step)
            rows[-1]["finetune"] = evolution.finetune(step)
            rows.append(evolution.score(step))
            _write(tmp, request, rows, evolution, final=False)
        return _write(tmp, request, rows, evolution, final=True)


def _usable_space(supernet: Any, space: Any) -> Any:
    if space is None:
        raise DeployNASError("this supernet has no search space; pass --space")
    if getattr(space, "family", None) != "s3" or getattr(supernet, "family", None) != "s3":
        raise DeployNASError(f"evolve-space evolves S3 spaces on S3 supernets, not {getattr(space, 'family', '?')!r} "
                             f"on {getattr(supernet, 'family', '?')!r}")
    replace(space, super_stages=supernet.arch.stages)  # every choice must fit the supernet (InvalidSubnetConfig)
    return space


def _data(space: Any, data_dir: Path | None, supernet: Any) -> dict[str, Any]:
    from deploy_nas.supernets import trained_classes
    from deploy_nas.workflows import train_data

    return train_data(space, data_dir, trained_classes(supernet))  # labelled as the supernet learned them


def _write(out: Path, request: EvolveSpaceRequest, rows: list[dict[str, Any]], evolution: SpaceEvolution,
           final: bool) -> dict[str, Any]:
    from deploy_nas.data import data_record
    from deploy_nas.io import write_json_atomic
    from deploy_nas.supernets import save_supernet

    record = {"request": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(request).items()},
              "steps": rows, "final_space": evolution.space.to_dict(),
              "evaluated": evolution.evaluated + evolution.scorer.evaluated, "complete": final}
    write_json_atomic(out / EVOLUTION_FILE, record)
    if final:
        write_json_atomic(out / FINAL_FILE, evolution.space.to_dict())
        plot_et(rows, out / PLOT_FILE)
        tuned = request.steps and request.finetune_epochs  # on evolution.data, else as it came
        on = data_record(evolution.data["train"]) if tuned else getattr(evolution.supernet, "trained_on", None)
        save_supernet(evolution.supernet, out / SUPERNET_DIR, evolution.space, force=True,
                      extra=None if on is None else {"trained_on": on})
    return record


def plot_et(rows: list[dict[str, Any]], path: Path) -> None:
    """E-T error (and E, T) per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deploy_nas.io import atomic_file

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, [r["et_error"] for r in rows], "o-", color="k", label="E-T error")
    ax.plot(steps, [r["e_error"] for r in rows], "s--", color="tab:blue", alpha=0.7, label="E (sampled mean)")
    ax.plot(steps, [r["t_error"] for r in rows], "^--", color="tab:orange", alpha=0.7, label="T (top tier)")
    ax.set_xlabel("evolution step")
    ax.set_ylabel("top-1 error (inherited weights)")
    ax.set_xticks(steps)
    ax.legend()
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


__all__ = ["DimensionState", "EvolveSpaceRequest", "Scorer", "SpaceEvolution", "dimension_points", "et_error",
           "evolve_space", "fit_slope", "move_dimension", "plot_et", "sample_feasible",
           "scoring_split", "shifted", "window_ladder"]
