"""Latency-aware subnet search: accuracy (val top-1 with inherited supernet weights) under a latency budget
measured on the backend that will serve the model.

1. Measure a seeded sample of subnets on the backend (the min and max subnets included); fit the latency predictor
   on three quarters of them and report Kendall tau and mean abs % error on the held-out quarter, then refit on all.
   A budget below the min subnet's measured latency cannot be met: InfeasibleBudget names the fastest latency.
2. Evolution (AutoFormer's) and random search with the same number of evaluations, constrained by predicted latency
   (and optional params / FLOPs ranges). Each generation is appended to `generations.jsonl`, so an interrupted
   search keeps its log and `resume=True` continues from it. A resume that adds generations to a finished search
   first removes that search's results (best.json, pareto.json, pareto.png): until its own are written, the
   directory holds an interrupted search, never the shorter search's results beside the longer one's log.
3. The top candidates of each method are measured directly; the winner is the most accurate whose measured
   latency meets the budget. Outputs: best.json (a config `deploy-nas run` accepts), pareto.json, pareto.png.

The latencies measured are kept in measured.json (ms by config id), and the per-pass p50s they are the medians of
in measured_passes.json, so that a resume reports the timings' repeatability as the search it continues did.

Latencies hold for the backend, precision and threads they were measured with: latency.json records them (threads
as resolved: the cores used when none were given), pareto.json repeats them, and a resume under other settings is
refused (LatencySettingsMismatch) before anything is measured. So is a resume of another search (SearchSettingsMismatch,
naming each setting it changes): search.json records the settings that decide the results (the supernet, image size,
space, data, seed, population, budget, ranges, ...: `record`), and pareto.json repeats them; a search from before
that record is resumed as one of the settings given, and says so. Each method's winner meets every constraint of the
run (the ranges as well as the measured latency). Params / FLOPs ranges are checked against the space's
min and max subnets, and against a bounded number of random draws, before anything is measured or written
(UnmetConstraints); so is the first population, before anything is written.

Distributed (`torchrun --nproc_per_node N -m deploy_nas.search ...`): each population is scored in shards, one per
rank, and the scores are all-gathered, so every rank keeps the same cache and breeds the same next generation
(the RNG streams are seeded per generation). Latency is measured on rank 0 alone, so that ranks do not compete for
the cores being timed, and broadcast; rank 0 alone writes the outputs.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import random
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploy_nas.distributed import World
from deploy_nas.errors import MALFORMED, DeployNASError, brief
from deploy_nas.evaluate import top1
from deploy_nas.family import family_of
from deploy_nas.io import (
    check_output_dir,
    make_dirs,
    record_written,
    write_json_atomic,
    write_text_atomic,
    written_here,
)
from deploy_nas.search.evolution import (
    Evolution,
    EvolutionConfig,
    NoFeasibleConfig,
    finite_number,
    first_population_rng,
    log_row_problem,
    random_search,
    sample_feasible,
)
from deploy_nas.search.predictor import LatencyPredictor, repeatability
from deploy_nas.search.record import BEFORE, COMPARED, RECORD_FILE, differences, search_record, space_part

LOG_FILE, MEASURED_FILE, SETTINGS_FILE = "generations.jsonl", "measured.json", "latency.json"
# the per-pass p50s (ms) of the subnets measured, by config id (measured.json holds their medians): a separate file,
# so that measured.json stays what every version reads
PASSES_FILE = "measured_passes.json"
# what a search writes when it ends: a resume that adds generations removes them first
RESULT_FILES = ("best.json", "pareto.json", "pareto.png")
# why a resumed search reports no timing repeatability (pareto.json's predictor.repeatability_note, and the log)
REPEATABILITY_UNKNOWN = (f"not known: latencies reused from {MEASURED_FILE} came without the per-pass times they are "
                         f"the medians of (not in {PASSES_FILE}: a search from before it was written, or edited since)")
# Counting a subnet's FLOPs materializes and traces it (a third of a second for the tests' tiny space): a draw for a
# population is given up on once the FLOPs of this many distinct subnets were counted and none met the constraints.
# A FLOPs range that fewer than about 1 in 50 subnets meet would make every population cost that much again.
FLOPS_PROBE = 50


class InfeasibleBudget(DeployNASError):
    """No subnet of the space can meet the latency budget."""


class DamagedSearchOutput(DeployNASError):
    """A search's output directory cannot be resumed: its log or its measured latencies are damaged."""


class SearchSettingsMismatch(DeployNASError):
    """A resume would continue a search under other settings than it was started with (see `record`)."""


class LatencySettingsMismatch(SearchSettingsMismatch):
    """A resume would measure latency under other settings (backend, precision, threads) than the search did."""


class UnmetConstraints(DeployNASError):
    """The params / FLOPs ranges (with the latency budget) admit no subnet of the space, or none a draw finds."""


@dataclass(frozen=True)
class SearchConstraints:
    latency_budget_ms: float
    params_range: tuple[int, int] | None = None
    flops_range: tuple[float, float] | None = None  # GMAC


@dataclass(frozen=True)
class SearchSetup:
    measure: int = 32  # subnets measured to fit the predictor
    finalists: int = 5  # per method, measured directly at the end
    max_checks: int = 20  # per method, at most this many measured while looking for one that meets the budget
    evolution: EvolutionConfig = EvolutionConfig()


def latency_settings(latency: Any) -> dict[str, Any] | None:
    """What latencies measured by `latency` hold for: {"backend", "precision", "threads"}, threads as the engines
    resolve them (the usable cores when none are given; torch's own thread count on the torch backend). None for a
    latency function that does not describe itself (`describe()`, as BackendLatency does): nothing to record."""
    describe = getattr(latency, "describe", None)
    if describe is None:
        return None
    d = describe()
    threads = d.get("threads")
    if threads is None and d["backend"] == "torch":  # TorchEngine leaves torch's thread count as it is
        import torch

        resolved = torch.get_num_threads()
    else:
        from deploy_nas.export.backends.base import usable_threads

        resolved = usable_threads(threads)
    return {"backend": d["backend"], "precision": d["precision"], "threads": int(resolved)}


def describe_settings(settings: dict[str, Any]) -> str:
    threads = settings["threads"]
    return f"{settings['backend']} {settings['precision']} with {threads} thread{'s' if threads != 1 else ''}"


def _read_settings(path: Path) -> dict[str, Any]:
    return _read_record(path, "the latency settings (backend, precision, threads) of a search", lambda saved: (
        isinstance(saved, dict) and set(saved) == {"backend", "precision", "threads"}
        and isinstance(saved["backend"], str) and isinstance(saved["precision"], str)
        and isinstance(saved["threads"], int) and not isinstance(saved["threads"], bool) and saved["threads"] >= 1))


def _read_record(path: Path, what: str, valid: Callable[[Any], bool]) -> Any:
    """A search's record of its settings (latency.json, search.json), or DamagedSearchOutput naming it."""
    fix = "mend it or search into a new --out"
    saved = _read_json(path, "", fix)
    if not valid(saved):
        raise DamagedSearchOutput(f"{path} is damaged: {brief(saved)} is not {what}; {fix}")
    return saved


def _holds_search(out: Path) -> bool:
    """Whether OUT holds measurements or generations: a search to resume."""
    return any((out / name).is_file() for name in (LOG_FILE, MEASURED_FILE))


def check_latency_settings(out: Path, resume: bool, settings: dict[str, Any] | None) -> bool:
    """Refuse (LatencySettingsMismatch) to resume the search in OUT under other latency settings than those it
    recorded. Returns whether OUT holds measurements or generations with no settings recorded: a search written
    before they were (no latency.json). Nothing tells what such a search measured on, so it is resumed, its
    latencies taken as measured under `settings` (which are then recorded, and pareto.json says so): refusing would
    strand every interrupted search of an older version, and the user resuming it knows it best."""
    out = Path(out)
    if not resume or not out.is_dir():
        return False
    path = out / SETTINGS_FILE
    if not path.is_file():
        return _holds_search(out)
    saved = _read_settings(path)
    if settings is not None and saved != settings:  # None: a latency function that cannot say; nothing to compare
        raise LatencySettingsMismatch(
            f"{out} holds a search whose latencies were measured on {describe_settings(saved)}; this one would "
            f"measure on {describe_settings(settings)}: resume with the same --backend, --precision and --threads "
            "as that search, or search into a new --out")
    return False


def check_search_settings(out: Path, resume: bool, given: dict[str, Any]) -> bool:
    """Refuse (SearchSettingsMismatch, naming each setting that differs) to resume the search in OUT under other
    settings than its search.json records. `given`: this search's record (`record.search_record`), or the part of it
    to compare now. Returns whether OUT holds a search that recorded none (written before the record was): it is
    resumed as a search of the settings given, which are then recorded, and pareto.json says so (as for latency)."""
    out = Path(out)
    if not resume or not out.is_dir():
        return False
    recorded = _recorded(out)
    if recorded is None:
        return _holds_search(out)
    changed = differences(recorded, given)
    if changed:
        raise SearchSettingsMismatch(f"{out} holds a search of other settings than these: {'; '.join(changed)}; "
                                     f"resume with the options it recorded ({RECORD_FILE}), or search into a new --out")
    return False


def _recorded(out: Path) -> dict[str, Any] | None:
    """OUT's record of its search's settings, checked; None when it has none."""
    path = out / RECORD_FILE
    if not path.is_file():
        return None
    return _read_record(path, "the settings record of a search",
                        lambda saved: isinstance(saved, dict) and set(COMPARED) - set(BEFORE) <= set(saved))


def subnet_top1(supernet: Any, cfg: Any, split: Any, calib: Any = None) -> float:
    """Top-1 of `cfg` with weights inherited from the supernet (its fixed-config eval view; a BatchNorm family's
    statistics recalibrated first when `calib` asks for it, `family.Calibration`)."""
    return top1(supernet.fixed(cfg, calib), split)


class Search:
    def __init__(self, supernet: Any, space: Any, data: dict[str, Any], latency: Callable[[Any], float],
                 constraints: SearchConstraints, setup: SearchSetup = SearchSetup(),
                 log: Callable[[str], None] = print, world: World | None = None, calib: Any = None,
                 bn: dict[str, Any] | None = None):
        """`calib`: how a BatchNorm family's subnets get their statistics before they are scored (None: the
        stored ones); `bn`: what search.json records of it (where the images came from)."""
        self.supernet, self.space, self.data, self.latency = supernet, space, data, latency
        self.calib = calib
        if getattr(family_of(space), "batchnorm", False):
            recalibrated = calib is not None and calib.mode == "recalibrate"
            self.bn = bn or ({"mode": "recalibrate", "images": len(calib.images)} if recalibrated
                             else {"mode": "stored"})
        else:
            self.bn = None
        self.constraints, self.setup = constraints, setup
        self.world = world or World()
        self.log = log if self.world.main else (lambda message: None)
        self._val: dict[str, float] = {}
        self._measured: dict[str, float] = {}
        self._passes: dict[str, list[float]] = {}  # per-pass p50s of the subnets measured interleaved
        self._gmacs: dict[str, float] = {}
        self.scored_here = 0  # val top-1 evaluations this rank ran
        self.predictor = LatencyPredictor(space, family_of(space).cost_features)
        self.settings = latency_settings(latency)  # what the latencies measured here hold for
        self.record: dict[str, Any] = {}  # the settings of the search (`record.search_record`), once `run` starts

    # ---------------------------------------------------------------------------------------------- pieces
    def measure(self, cfg: Any) -> float:
        return self.measure_many([cfg])[0]

    def measure_many(self, cfgs: list[Any]) -> list[float]:
        """Measured latencies (ms); those not known yet are measured together, interleaved when the latency
        function can (`BackendLatency.many_passes`), on rank 0 alone."""
        from deploy_nas.materialize import materialize

        new = list({c.id: c for c in cfgs if c.id not in self._measured}.values())
        if new:  # every rank asks for the same configs in the same order

            def measure() -> tuple[list[float], list[list[float]]]:
                models = [materialize(self.supernet, c) for c in new]
                many_passes = getattr(self.latency, "many_passes", None)
                if many_passes is None:
                    return [self.latency(m) for m in models], [[] for _ in models]
                passes = many_passes(models)
                return [statistics.median(p) for p in passes], passes

            values, passes = self.world.run_on_main(measure)
            self._measured.update(zip([c.id for c in new], values))
            self._passes.update(zip([c.id for c in new], passes))
        return [self._measured[c.id] for c in cfgs]

    def val_top1(self, cfg: Any) -> float:
        return self.val_top1_many([cfg])[0]

    def val_top1_many(self, cfgs: list[Any]) -> list[float]:
        """Score the configs not yet cached, shard by shard over the ranks; every rank gets every score."""
        new = list({c.id: c for c in cfgs if c.id not in self._val}.values())
        mine = {c.id: subnet_top1(self.supernet, c, self.data["val"], self.calib)
                for c in new[self.world.rank::self.world.size]}
        self.scored_here += len(mine)
        for shard in self.world.gather(mine):
            self._val.update(shard)
        return [self._val[c.id] for c in cfgs]

    def feasible(self, cfg: Any) -> bool:
        return self.predictor(cfg) <= self.constraints.latency_budget_ms and self.in_ranges(cfg)

    def in_ranges(self, cfg: Any) -> bool:
        """Whether `cfg` meets the params and FLOPs ranges (params first: counting FLOPs is the costly check)."""
        c = self.constraints
        if c.params_range is not None:
            n = self.supernet.param_count(cfg)
            if not c.params_range[0] <= n <= c.params_range[1]:
                return False
        if c.flops_range is not None and not c.flops_range[0] <= self.gmacs(cfg) <= c.flops_range[1]:
            return False
        return True

    def _ranges(self) -> list[tuple[str, tuple[float, float], Callable[[Any], float], Callable[[float], str]]]:
        """The ranges given: (option, (low, high), the measure of a config, how a value of it is shown)."""
        c, ranges = self.constraints, []
        if c.params_range is not None:
            ranges.append(("--params-range", c.params_range, self.supernet.param_count, lambda v: f"{v:,}"))
        if c.flops_range is not None:
            ranges.append(("--flops-range", c.flops_range, self.gmacs, lambda v: f"{v:g}"))
        return ranges

    def _shown_ranges(self) -> list[str]:
        """The ranges given, as messages name them ("--params-range 1..2 parameters")."""
        return [f"{flag} {show(low)}..{show(high)}{_unit(flag)}" for flag, (low, high), _, show in self._ranges()]

    def check_ranges(self) -> None:
        """Refuse params / FLOPs ranges that no subnet meets, before anything is measured or written: a FLOPs range
        outside what the space spans (its min and max subnets have the fewest and the most MACs), or a range that
        no random draw meets within bounded work (FLOPS_PROBE FLOPs counts, or `max_tries` draws
        when only params, which cost nothing to count, are constrained). The draws are the first population's, so
        the FLOPs counted here are not counted again."""
        ranges = self._ranges()
        if not ranges:
            return
        ends = [self.space.sample(None, "min"), self.space.sample(None, "max")]
        spans = []
        for flag, (low, high), measure, show in ranges:
            if flag == "--params-range":  # cheap to count: the draws below decide (a min subnet need not have the
                continue  # fewest params: PSViT's puts its one layer in the widest stage)
            values = [measure(cfg) for cfg in ends]
            lo, hi = min(values), max(values)
            unit = _unit(flag)
            if high < lo or low > hi:
                raise UnmetConstraints(f"{flag} {show(low)}..{show(high)}{unit} is outside what this space spans "
                                       f"({show(lo)}..{show(hi)}{unit}, from its min to its max subnet); choose a "
                                       "range that overlaps it")
            spans.append(f"{show(lo)}..{show(hi)}{unit}")
        drawn: list[Any] = []

        def in_ranges(cfg: Any) -> bool:
            drawn.append(cfg)
            return self.in_ranges(cfg)

        start = len(self._gmacs)
        try:
            sample_feasible(self.space, first_population_rng(self.setup.evolution.seed), in_ranges, 1,
                            self.setup.evolution.max_tries, give_up=lambda: len(self._gmacs) - start >= FLOPS_PROBE)
        except NoFeasibleConfig:
            seen = []
            for flag, (low, high), measure, show in ranges:
                counted = [self._gmacs[c.id] for c in drawn if c.id in self._gmacs] if flag == "--flops-range" \
                    else [measure(c) for c in drawn]
                seen.append(f"{flag} {show(low)}..{show(high)}{_unit(flag)}" + (
                    f" (the {len(counted)} counted: {show(min(counted))}..{show(max(counted))})" if counted else ""))
            spanned = f", although the space spans {' and '.join(spans)}" if spans else ""
            raise UnmetConstraints(f"none of {len(drawn)} distinct random subnets meets {' and '.join(seen)}"
                                   f"{spanned}: too few subnets meet the range(s) for a search to draw its "
                                   "populations from; widen them") from None

    def gmacs(self, cfg: Any) -> float:
        from deploy_nas.flops import count_flops
        from deploy_nas.materialize import materialize

        if cfg.id not in self._gmacs:
            self._gmacs[cfg.id] = count_flops(materialize(self.supernet, cfg)).gmacs
        return self._gmacs[cfg.id]

    def fit_predictor(self, known: dict[str, float] | None = None) -> dict[str, Any]:
        """Measure (or reuse) the predictor's subnets; check the budget can be met; fit and validate."""
        rng = random.Random(self.setup.evolution.seed + 31)
        cfgs = [self.space.sample(rng, "min"), self.space.sample(rng, "max")]
        while len(cfgs) < self.setup.measure:
            cfg = self.space.sample(rng)
            if cfg.id not in {c.id for c in cfgs}:
                cfgs.append(cfg)
        self._measured.update(known or {})
        reused = {c.id for c in cfgs if c.id in self._measured}  # measured before (a resume's measured.json)
        if len(reused) < len(cfgs):  # timed together before any is printed: say so, it can take minutes
            self.log(f"timing {len(cfgs) - len(reused)} subnets for the latency predictor" + (
                f" ({len(reused)} of its {len(cfgs)} measured before)" if reused else ""))
        fastest = self.measure(cfgs[0])
        if fastest > self.constraints.latency_budget_ms:
            raise InfeasibleBudget(f"no subnet can meet {self.constraints.latency_budget_ms:g} ms: the fastest, the "
                                   f"min subnet, measured {fastest:.3f} ms; raise --latency-budget-ms")
        ms = self.measure_many(cfgs)
        for i, (cfg, t) in enumerate(zip(cfgs, ms)):
            self.log(f"measure {i + 1}/{len(cfgs)}: {cfg.id} {t:.3f} ms")
        held = [i for i in range(len(cfgs)) if i % 4 == 3]
        fit = [i for i in range(len(cfgs)) if i % 4 != 3]
        self.predictor.fit([cfgs[i] for i in fit], [ms[i] for i in fit])
        quality = self.predictor.validate([cfgs[i] for i in held], [ms[i] for i in held])
        self.predictor.fit(cfgs, ms)
        self.predictor.coef = self.world.broadcast(self.predictor.coef)  # one feasibility rule on every rank
        # finite latencies > 0 can still be too far apart for a fit (1e-300 against 1e300): refused before any write;
        # the max subnet is among `cfgs` and bounds every prediction
        if not (np.isfinite(self.predictor.coef).all() and not math.isinf(quality["mape_percent"])
                and all(math.isfinite(self.predictor(c)) for c in cfgs)):
            raise DeployNASError("the latencies measured for the predictor give no finite fit (of "
                                 f"{min(ms):g}..{max(ms):g} ms); if they come from a resumed {MEASURED_FILE}, "
                                 "remove it to measure again")
        quality["kendall_tau"] = _defined(quality["kendall_tau"])  # ties (equal latencies): no ranking to score
        repeat = repeatability([self._passes[c.id] for c in cfgs if c.id in self._passes])
        if repeat:
            repeat["kendall_tau"] = _defined(repeat["kendall_tau"])
        note = {}
        if repeat is None and hasattr(self.latency, "many_passes") and \
                any(c.id in reused and c.id not in self._passes for c in cfgs):
            note["repeatability_note"] = REPEATABILITY_UNKNOWN
        return {**self.predictor.to_dict(), "held_out": quality, "measured": len(cfgs),
                "fastest_ms": fastest, "slowest_ms": max(ms), "repeatability": repeat, **note}

    def finalists(self, scores: dict[str, tuple[Any, float]]) -> dict[str, Any]:
        """Measure the top candidates; the winner is the most accurate one whose measured latency meets the budget.

        The top `finalists` are always measured (the Pareto plot shows them); when none of them fits, the ranking
        is walked further, up to `max_checks` measurements in all: the predictor is fitted on subnets all over the
        space, and a search pushes its best candidates against the budget, where a few percent of prediction error
        decides. Only candidates within the params / FLOPs ranges are ranked: each was drawn under them, unless a
        resume of a search that recorded no settings restored generations drawn under others."""
        ranked = self._in_ranges(scores)
        budget = self.constraints.latency_budget_ms
        self.measure_many([cfg for cfg, _ in ranked[:self.setup.finalists]])  # the top ones, side by side
        rows = []
        for cfg, f in ranked[:max(self.setup.finalists, self.setup.max_checks)]:
            if len(rows) >= self.setup.finalists and any(r["latency_ms"] <= budget for r in rows):
                break
            rows.append({"config": cfg.to_dict(), "id": cfg.id, "val_top1": f, "predicted_ms": self.predictor(cfg),
                         "latency_ms": self.measure(cfg)})
        ok = [r for r in rows if r["latency_ms"] <= budget]
        winner = dict(ok[0] if ok else min(rows, key=lambda r: r["latency_ms"]))
        winner["meets_budget"] = bool(ok)
        winner["rank"] = rows.index(ok[0]) + 1 if ok else None  # its place in the val top-1 ranking
        cfg = next(c for c, _ in ranked if c.id == winner["id"])
        winner["test_top1"] = subnet_top1(self.supernet, cfg, self.data["test"], self.calib)
        points = [{"val_top1": f, "predicted_ms": self.predictor(c)} for c, f in scores.values()]
        return {"finalists": rows, "winner": winner, "evaluated": len(scores), "measured": len(rows),
                "points": points, "front": pareto_front(points)}

    def _in_ranges(self, scores: dict[str, tuple[Any, float]]) -> list[tuple[Any, float]]:
        """The best-scored candidates (as many as `finalists` may measure) that meet the params / FLOPs ranges, most
        accurate first; UnmetConstraints when none does. Walked lazily: counting FLOPs is costly."""
        ranked = sorted(scores.values(), key=lambda cs: (-cs[1], cs[0].id))
        kept = list(itertools.islice((cs for cs in ranked if self.in_ranges(cs[0])),
                                     max(self.setup.finalists, self.setup.max_checks)))
        if not kept:
            ranges = " and ".join(self._shown_ranges())
            raise UnmetConstraints(f"none of the {len(scores)} subnets evaluated meets {ranges}: the logged "
                                   "generations were drawn under other constraints (a resumed search that recorded no "
                                   "settings); resume with more --generations, or search into a new --out")
        return kept

    # ------------------------------------------------------------------------------------------------- run
    def run(self, out: str | Path, resume: bool = False, known: dict[str, float] | None = None,
            checked: tuple[dict[str, float] | None, list[dict[str, Any]] | None] | None = None) -> dict[str, Any]:
        """`known`: latencies (ms) already measured, by config id; reused instead of measured again. `checked`:
        what `check_resume` returned for OUT, when the caller ran it already (before reading its data)."""
        out = Path(out)
        # everything a resume reads is read and checked here (or was, `checked`), before any work and any write
        if checked is None:
            checked = self.world.run_on_main(lambda: check_resume(out, resume, self.space, self.supernet.family))
        saved, rows = checked
        # True: a search from before the settings were recorded, resumed under these (see check_latency_settings)
        unrecorded = self.world.run_on_main(lambda: check_latency_settings(out, resume, self.settings)) \
            and self.settings is not None
        # digests of the supernet's weights and the data: computed once, on rank 0, and shared with the others
        self.record = self.world.run_on_main(
            lambda: search_record(self.supernet, self.space, self.data, self.constraints, self.setup, self.bn))
        # True: a search from before its settings were recorded, resumed as a search of these (check_search_settings)
        unrecorded_search = self.world.run_on_main(lambda: check_search_settings(out, resume, self.record))
        if not all(hasattr(self.space, op) for op in ("mutate", "can_cross", "crossover")):
            raise DeployNASError(f"space {self.space.name!r} cannot be evolved (no mutate/crossover); "
                                 "its family searches another way")
        self.check_ranges()  # before anything is measured
        known = {**saved, **(known or {})} if saved is not None else known
        if saved:  # the per-pass p50s of the latencies reused, those that are the medians of theirs
            path = out / PASSES_FILE
            passes = self.world.run_on_main(lambda: _read_passes(path) if path.is_file() else {})
            self._passes.update({k: p for k, p in passes.items() if k in known and statistics.median(p) == known[k]})
        predictor = self.fit_predictor(known)
        self.log(f"predictor: Kendall tau {_tau(predictor['held_out']['kendall_tau'])}, "
                 f"{predictor['held_out']['mape_percent']:.1f}% mean abs error on {predictor['held_out']['n']} "
                 "held-out subnets")
        if repeat := predictor["repeatability"]:
            self.log(f"timing repeatability: the even passes against the odd ones over {repeat['n']} subnets, "
                     f"Kendall tau {_tau(repeat['kendall_tau'])}, "
                     f"median difference {repeat['median_diff_percent']:.1f}%")
        elif "repeatability_note" in predictor:
            self.log(f"timing repeatability {predictor['repeatability_note']}")
        notes = self._unrecorded_notes(out, unrecorded, unrecorded_search)
        if resume and len(rows or ()) < self.setup.evolution.generations:  # generations to add: before any write
            self._drop_results(out, len(rows or ()))
        evo = Evolution(self.space, self.val_top1, self.feasible, self.setup.evolution,
                        fitness_many=self.val_top1_many)
        if rows:  # the directory holds the search already: the new measurements are kept before the replay
            self._write_measured(out)
            self._restore(evo, rows)
        if not evo.population:  # drawn before anything is written: constraints nothing meets leave no files
            self._sample_first(evo)
        self._write_measured(out)
        self._evolve(out, evo, rows)
        rand = random_search(self.space, self.val_top1, self.feasible, len(evo.scores), self.setup.evolution.seed,
                             fitness_many=self.val_top1_many)
        result = {"budget_ms": self.constraints.latency_budget_ms, "constraints": asdict(self.constraints),
                  "latency": self.settings, "predictor": predictor, "evolution": self.finalists(evo.scores),
                  "random": self.finalists(rand), "settings": {**self.record, "generations": evo.generation},
                  "ranks": self.world.size, "scored_per_rank": self.world.gather(self.scored_here), **notes}
        self._write_latencies(out)
        if self.world.main:
            plot_pareto(result, out / "pareto.png")
        self._write(out, "pareto.json", result)
        # best.json last: a search interrupted while it wrote its results never shows a winner without them
        self._write(out, "best.json", result["evolution"]["winner"]["config"])
        return result

    def _unrecorded_notes(self, out: Path, latency: bool, settings: bool) -> dict[str, str]:
        """Log, and return for pareto.json, what the resume of a search that recorded no latency settings (`latency`)
        or no search settings (`settings`) takes as given."""
        notes = {}
        if latency:
            self.log(f"note: {out} records no latency settings (a search from before they were recorded); its "
                     f"measured latencies are taken as measured on {describe_settings(self.settings)}")
            notes["latency_note"] = ("resumed from a search that recorded no latency settings: the latencies it had "
                                     "measured are taken as measured under these")
        if settings:
            self.log(f"note: {out} records no search settings (a search from before they were recorded); it is "
                     "continued as a search of the supernet, data, seed, population, budget and ranges given")
            notes["settings_note"] = ("resumed from a search that recorded no settings: its generations and latencies "
                                      "are taken as those of a search under these")
        return notes

    def _write(self, out: Path, name: str, obj: Any) -> None:
        if self.world.main:
            write_json_atomic(out / name, obj)

    def _write_measured(self, out: Path) -> None:
        """The measured latencies, and (first) the settings they hold for and those of the search."""
        if self.settings is not None:
            self._write(out, SETTINGS_FILE, self.settings)
        self._write(out, RECORD_FILE, self.record)  # after latency.json: a resume needs one of the files it checks
        self._write_latencies(out)

    def _write_latencies(self, out: Path) -> None:
        """measured.json, after the per-pass p50s its latencies are the medians of (`PASSES_FILE`)."""
        self._write(out, PASSES_FILE, {k: p for k, p in self._passes.items() if p and k in self._measured})
        self._write(out, MEASURED_FILE, self._measured)

    def _drop_results(self, out: Path, logged: int) -> None:
        """Remove the results (`RESULT_FILES`, those deploy-nas wrote) of the `logged`-generation search a resume
        adds generations to, before the directory records the longer search: an interrupted resume then holds none,
        as any interrupted search, not the shorter search's as if they were its own. Written anew at the end."""
        if not self.world.main:
            return
        gone = []
        for name in RESULT_FILES:
            path = out / name
            if path.is_file() and written_here(path):
                path.unlink(missing_ok=True)
                gone.append(name)
        if gone:
            self.log(f"removed {', '.join(gone)} of the {logged}-generation search: this one writes them anew when "
                     f"its {self.setup.evolution.generations} generations end")

    def _sample_first(self, evo: Evolution) -> None:
        """The first population, or UnmetConstraints: when counting FLOPs, given up on after FLOPS_PROBE counts
        that met nothing."""
        start = len(self._gmacs)
        try:
            evo.sample_first(give_up=lambda: len(self._gmacs) - start >= FLOPS_PROBE)
        except NoFeasibleConfig as err:
            ranges = "".join(f" and {shown}" for shown in self._shown_ranges())
            raise UnmetConstraints(
                f"none of {err.distinct} distinct random subnets meets a predicted latency within "
                f"{self.constraints.latency_budget_ms:g} ms{ranges}; loosen the constraints (raise "
                "--latency-budget-ms" + (" or widen the ranges" if ranges else "") + ")") from None

    def _restore(self, evo: Evolution, rows: list[dict[str, Any]]) -> None:
        """Replay the generations of a resumed search (`rows`, checked by `_read_log`)."""
        from deploy_nas.spaces import load_config

        evo.restore(rows, lambda d: load_config(d, self.supernet.family))
        self.log(f"resumed after generation {evo.generation - 1}")
        if evo.generation > (asked := self.setup.evolution.generations):
            self.log(f"the log holds {evo.generation} generations, more than the {asked} asked for: none runs, "
                     "and the results use all of them")
            self.record["generations"] = evo.generation  # search.json (written next) says what the results hold

    def _evolve(self, out: Path, evo: Evolution, rows: list[dict[str, Any]] | None) -> Evolution:
        """Run the generations still to run, logging each new one after those of a resumed search (`rows`)."""
        log_path = out / LOG_FILE
        if self.world.main:
            make_dirs(out)
            # the log restarts from what was restored: a last line the interruption cut goes, so that the rows
            # appended next start on a line of their own
            write_text_atomic(log_path, "".join(json.dumps(r) + "\n" for r in rows or ()))
            record_written(log_path)
        with open(log_path, "a") if self.world.main else contextlib.nullcontext() as f:
            while evo.generation < self.setup.evolution.generations:
                row = evo.step()
                if f is not None:
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                best = row["best"][0]
                self.log(f"generation {row['generation']}: best val top-1 {best['fitness']:.4f}, "
                         f"{row['evaluated']} evaluated")
        return evo


def check_resume(out: Path, resume: bool, space: Any, family: str, latency: Any = None
                 ) -> tuple[dict[str, float] | None, list[dict[str, Any]] | None]:
    """OUT checked as a search output (new, or with --resume one holding a search's files), and a resumed search's
    measured latencies and logged generations, each checked (None where there are none). `latency`: the latency
    function the resumed search would measure with, refused when OUT's latencies were measured under other settings
    (`check_latency_settings`; `Search.run` checks that too), and so is a search that recorded another space or
    image size (`check_search_settings` on the part of the record the space decides; `Search.run` compares the
    rest once the supernet and data are loaded). Cheap: callers run it before reading any data."""
    from deploy_nas.spaces import load_config

    out = check_output_dir(out, force=resume, flag="--resume", resumes=(LOG_FILE, MEASURED_FILE, SETTINGS_FILE),
                           swapped=False)  # a search writes into OUT in place: what else OUT holds stays
    if not resume:
        return None, None
    if latency is not None:
        check_latency_settings(out, resume, latency_settings(latency))
    check_search_settings(out, resume, space_part(space))
    recorded = _recorded(out) if out.is_dir() else None
    saved = _read_measured(out / MEASURED_FILE) if (out / MEASURED_FILE).is_file() else None
    if saved is not None and (out / PASSES_FILE).is_file():  # checked here; `Search.run` reads it again
        _read_passes(out / PASSES_FILE)
    rows = _read_log(out / LOG_FILE, lambda d: space.validate(load_config(d, family)), recorded is None) \
        if (out / LOG_FILE).is_file() else None
    return saved, rows


class _KeyTwice(Exception):
    pass


def _read_json(path: Path, what: str, fix: str) -> Any:
    """A search file's JSON, or DamagedSearchOutput naming it (`what` precedes a key given twice; `fix`: what to do)."""
    try:
        return json.loads(path.read_bytes().decode(), object_pairs_hook=_unique_keys)
    except _KeyTwice as err:
        raise DamagedSearchOutput(f"{path} is damaged: {what}{brief(err.args[0])} is given twice; {fix}") from None
    except (ValueError, RecursionError, OSError) as err:  # not UTF-8 / not JSON / nested too deep / unreadable
        raise DamagedSearchOutput(f"{path} is damaged ({type(err).__name__}); {fix}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) < len(keys):
        raise _KeyTwice(next(k for k in keys if keys.count(k) > 1))
    return dict(pairs)


def _read_measured(path: Path) -> dict[str, float]:
    """A resumed search's measured latencies (ms) by config id, each a finite number > 0."""
    def latency(value: Any) -> float | None:
        ms = finite_number(value)
        return ms if ms is not None and ms > 0 else None

    return _read_by_id(path, latency, "latencies", "a latency (a finite number of ms > 0)",
                       "remove it to measure again, or start a new search")


def _read_passes(path: Path) -> dict[str, list[float]]:
    """A resumed search's per-pass p50s (ms) by config id, each a non-empty list of finite numbers > 0."""
    def passes(value: Any) -> list[float] | None:
        ms = [finite_number(v) for v in value] if isinstance(value, list) else []
        return ms if ms and all(m is not None and m > 0 for m in ms) else None

    return _read_by_id(path, passes, "per-pass latencies", "a list of per-pass latencies (finite numbers of ms > 0)",
                       "remove it to resume without the timing repeatability of the subnets measured before, or start "
                       "a new search")


def _read_by_id(path: Path, parse: Callable[[Any], Any], what: str, each: str, fix: str) -> dict[str, Any]:
    """A JSON object of `what` by config id, each value turned by `parse` (None: not `each`); DamagedSearchOutput
    naming the file, the entry and `fix` otherwise."""
    saved = _read_json(path, "entry ", fix)
    if not isinstance(saved, dict):
        raise DamagedSearchOutput(f"{path} is damaged: it holds a {type(saved).__name__}, not {what} by config id; "
                                  f"{fix}")
    known = {}
    for key, value in saved.items():
        parsed = parse(value)
        if not isinstance(key, str) or parsed is None:
            raise DamagedSearchOutput(f"{path} is damaged: entry {brief(key)} is {brief(value)}, not {each}; {fix}")
        known[key] = parsed
    return known


def _read_log(path: Path, load: Callable[[dict], Any], unrecorded: bool = False) -> list[dict[str, Any]]:
    """The generations of an interrupted search, each checked (`log_row_problem`, and each population config loaded
    with `load`). A last line that an interruption cut (no newline after it: each row is written whole with its
    newline) is dropped; any other line that is not a whole generation is damage, refused naming the line.
    `unrecorded`: the search recorded no settings, so a config the space refuses may be another space's search."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DamagedSearchOutput(f"cannot read {path}: {err.strerror}") from None
    lines = data.split(b"\n")  # the last item: the bytes after the last newline (b"" when the file ends with one)
    rows: list[dict[str, Any]] = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        where = f"{path} line {number} is damaged"
        fix = "mend or remove it and the lines after it to resume from the generations before, or start a new search"
        try:
            row = json.loads(raw.decode(), object_pairs_hook=_unique_keys)
        except _KeyTwice as err:
            raise DamagedSearchOutput(f"{where}: {brief(err.args[0])} is given twice; {fix}") from None
        except (ValueError, RecursionError) as err:
            if number == len(lines):  # cut by an interruption: the generations before it stand
                break
            raise DamagedSearchOutput(f"{where}: not JSON ({type(err).__name__}); {fix}") from None
        problem = log_row_problem(row, len(rows))
        for i, cfg in enumerate(row["population"] if problem is None else ()):
            try:
                load(cfg)
            except (DeployNASError, *MALFORMED) as err:
                problem = f"population entry {i} is no config of this search ({brief(str(err), 200)})"
                if unrecorded:  # no record tells a search of another space from a damaged line: name both
                    raise DamagedSearchOutput(
                        f"{path} line {number}: {problem}: the log is of a search of another --space or supernet "
                        f"(resume with those, or search into a new --out), or the line is damaged ({fix})") from None
                break
        if problem is not None:
            raise DamagedSearchOutput(f"{where}: {problem}; {fix}")
        rows.append(row)
    return rows


def _unit(flag: str) -> str:
    return " GMAC" if flag == "--flops-range" else " parameters"


def _defined(value: float) -> float | None:
    """A statistic that ties leave undefined (NaN) as None: JSON has no NaN."""
    return None if math.isnan(value) else value


def _tau(value: float | None) -> str:
    return "undefined (tied latencies)" if value is None else f"{value:.3f}"


def pareto_front(points: list[dict[str, float]]) -> list[dict[str, float]]:
    """Points not beaten on both accuracy (higher) and latency (lower)."""
    front, best = [], -1.0
    for p in sorted(points, key=lambda p: (p["predicted_ms"], -p["val_top1"])):
        if p["val_top1"] > best:
            front.append(p)
            best = p["val_top1"]
    return front


def plot_pareto(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deploy_nas.io import atomic_file

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, colour in (("evolution", "tab:blue"), ("random", "tab:orange")):
        r = result[name]
        pts = np.array([(p["predicted_ms"], p["val_top1"]) for p in r["points"]])
        ax.scatter(pts[:, 0], pts[:, 1], s=8, alpha=0.3, color=colour, label=f"{name}: evaluated (predicted ms)")
        fin = np.array([(f["latency_ms"], f["val_top1"]) for f in r["finalists"]])
        ax.scatter(fin[:, 0], fin[:, 1], s=40, marker="D", color=colour, edgecolor="k",
                   label=f"{name}: finalists (measured ms)")
        w = r["winner"]
        ax.scatter([w["latency_ms"]], [w["val_top1"]], s=160, marker="*", color=colour, edgecolor="k")
    ax.axvline(result["budget_ms"], color="k", linestyle="--", label="budget")
    ax.set_xlabel("latency, ms (batch 1)")
    ax.set_ylabel("val top-1 (inherited weights)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def search_table(result: dict[str, Any]) -> Any:
    """Evolution vs random search, a console Table of the winners (val and test top-1, measured latency, budget)."""
    from deploy_nas.console import Table

    p = result["predictor"]["held_out"]
    r = result["predictor"].get("repeatability")
    repeat = f"; timings repeat with Kendall tau {_tau(r['kendall_tau'])} between passes" if r else \
        ("; timing repeatability not known (resumed without per-pass times)"
         if result["predictor"].get("repeatability_note") else "")
    on = f" on {describe_settings(result['latency'])}" if result.get("latency") else ""
    table = Table(f"search under {result['budget_ms']:.3f} ms{on} (latency predictor: "
                  f"Kendall tau {_tau(p['kendall_tau'])}, "
                  f"{p['mape_percent']:.1f}% mean abs error on {p['n']} held-out subnets{repeat})",
                  ("method", "config", "evaluated", "val top-1", "test top-1", "latency ms", "of budget",
                   "meets budget"))
    for name in ("evolution", "random"):
        w = result[name]["winner"]
        table.add_row(name, w["id"], result[name]["evaluated"], f"{w['val_top1']:.4f}", f"{w['test_top1']:.4f}",
                      f"{w['latency_ms']:.3f}", f"{100 * w['latency_ms'] / result['budget_ms']:.0f}%",
                      "yes" if w["meets_budget"] else "NO")
    return table


__all__ = ["DamagedSearchOutput", "EvolutionConfig", "InfeasibleBudget", "LatencySettingsMismatch", "Search",
           "SearchConstraints", "SearchSettingsMismatch", "SearchSetup", "UnmetConstraints", "check_latency_settings",
           "check_resume", "check_search_settings", "latency_settings", "pareto_front", "search_table", "subnet_top1"]
