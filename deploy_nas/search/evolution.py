"""AutoFormer's evolution search and a random-search baseline with the same evaluation budget.

Per generation: the top `parents` of everything evaluated so far are the parents; `mutations` children come from
`space.mutate` (per-layer probability `m_prob`, depth/embed probability `s_prob`) and `crossovers` from
`space.crossover` between two parents the space can cross (AutoFormer: equal depth); only children that meet the
constraints are kept.
Fitness values are cached by config id, so a config is never evaluated twice. A population is scored in one call
(`fitness_many`), which is where the search spreads it over torch.distributed ranks.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from deploy_nas.errors import DeployNASError, brief

Fitness = Callable[[Any], float]
FitnessMany = Callable[[list], list]  # configs -> their fitness values, in order
Feasible = Callable[[Any], bool]


@dataclass(frozen=True)
class EvolutionConfig:
    population: int = 50
    parents: int = 10
    mutations: int = 25
    crossovers: int = 25
    generations: int = 20
    m_prob: float = 0.2
    s_prob: float = 0.4
    max_tries: int = 10_000  # draws allowed to find one feasible config / child
    seed: int = 0

    @classmethod
    def for_population(cls, population: int, generations: int, seed: int = 0) -> EvolutionConfig:
        """AutoFormer's proportions for any population size: the top fifth as parents (top 10 of 50; at least 2),
        half mutations, half crossovers."""
        return cls(population=population, parents=max(2, round(population / 5)), mutations=population // 2,
                   crossovers=population - population // 2, generations=generations, seed=seed)


def first_population_rng(seed: int) -> random.Random:
    """The stream an evolution of this seed draws its first population from."""
    return random.Random(seed * 7919 - 1)


class NoFeasibleConfig(DeployNASError):
    """Random draws found no config that meets the constraints."""

    def __init__(self, message: str, draws: int, distinct: int):
        super().__init__(message)
        self.draws, self.distinct = draws, distinct


def sample_feasible(space: Any, rng: random.Random, feasible: Feasible, n: int, max_tries: int,
                    seen: set[str] | None = None, give_up: Callable[[], bool] | None = None) -> list[Any]:
    """`n` distinct feasible random configs (fewer when `max_tries` draws find fewer; at least one, or
    NoFeasibleConfig). `give_up()`, asked after each draw rejected while none has been found yet, ends the search
    for a first one early (a caller whose feasibility check is costly bounds its work that way)."""
    out, seen = [], set(seen or ())
    rejected: set[str] = set()  # a feasibility check is not repeated for a config drawn again
    draws = 0
    if n <= 0:
        return out
    while draws < max_tries:
        draws += 1
        cfg = space.sample(rng)
        if cfg.id in seen or cfg.id in rejected:
            continue
        if feasible(cfg):
            seen.add(cfg.id)
            out.append(cfg)
            if len(out) == n:
                return out
            continue
        rejected.add(cfg.id)
        if not out and give_up is not None and give_up():
            break
    if not out:
        raise NoFeasibleConfig(f"no config meeting the constraints in {draws} random draws ({len(rejected)} distinct "
                               "configs); loosen them", draws, len(rejected))
    return out


class Evolution:
    """Stateful so that a search can stop after any generation and resume from its log."""

    def __init__(self, space: Any, fitness: Fitness, feasible: Feasible, config: EvolutionConfig,
                 fitness_many: FitnessMany | None = None):
        self.space, self.fitness, self.feasible, self.config = space, fitness, feasible, config
        self.fitness_many = fitness_many or (lambda cfgs: [fitness(c) for c in cfgs])
        self.scores: dict[str, tuple[Any, float]] = {}  # id -> (config, fitness)
        self.population: list[Any] = []
        self.generation = 0

    def evaluate(self, cfgs: Iterable[Any]) -> None:
        new = list({c.id: c for c in cfgs if c.id not in self.scores}.values())
        for cfg, f in zip(new, self.fitness_many(new)):
            self.scores[cfg.id] = (cfg, f)

    def top(self, k: int) -> list[tuple[Any, float]]:
        return sorted(self.scores.values(), key=lambda cs: (-cs[1], cs[0].id))[:k]

    def first_rng(self) -> random.Random:
        return first_population_rng(self.config.seed)

    def sample_first(self, give_up: Callable[[], bool] | None = None) -> list[Any]:
        """Draw the first population (`step` does when there is none; a caller may do it ahead, before it writes
        anything, so that constraints nothing meets end the search with no output): NoFeasibleConfig if no draw
        meets the constraints."""
        c = self.config
        self.population = sample_feasible(self.space, self.first_rng(), self.feasible, c.population, c.max_tries,
                                          give_up=give_up)
        return self.population

    def rng(self) -> random.Random:
        return random.Random(self.config.seed * 7919 + self.generation)  # resumable: one stream per generation

    def step(self) -> dict[str, Any]:
        """Evaluate the current population (sampling the first one), then breed the next."""
        c = self.config
        if not self.population:
            self.sample_first()
        self.evaluate(self.population)
        parents = [cfg for cfg, _ in self.top(c.parents)]
        children = self._children(parents, self.rng())
        row = {"generation": self.generation, "evaluated": len(self.scores),
               "best": [{"config": cfg.to_dict(), "fitness": f} for cfg, f in self.top(3)],
               "population": [cfg.to_dict() for cfg in self.population]}
        self.population = children
        self.generation += 1
        return row

    def _children(self, parents: list[Any], rng: random.Random) -> list[Any]:
        """Feasible children never scored before (as the official search skips visited candidates), so that every
        generation spends its evaluations on new subnets."""
        c = self.config
        mutated, crossed, seen = [], [], set(self.scores)

        def fresh(child: Any) -> bool:
            if child.id in seen or not self.feasible(child):
                return False
            seen.add(child.id)
            return True

        for _ in range(c.max_tries):
            if len(mutated) >= c.mutations:
                break
            child = self.space.mutate(rng.choice(parents), rng, c.m_prob, c.s_prob)
            if fresh(child):
                mutated.append(child)
        for _ in range(c.max_tries):
            if len(crossed) >= c.crossovers:
                break
            a, b = rng.choice(parents), rng.choice(parents)
            if not self.space.can_cross(a, b):
                continue
            child = self.space.crossover(a, b, rng)
            if fresh(child):
                crossed.append(child)
        return mutated + crossed

    def restore(self, rows: list[dict[str, Any]], load: Callable[[dict], Any]) -> None:
        """Replay logged generations: re-score their populations (cached fitness is cheap to recompute). The rows
        must continue this evolution's generations (0, 1, 2, ... on a new one), each as `step` wrote it."""
        for row in rows:
            problem = log_row_problem(row, self.generation)
            if problem is not None:
                raise DeployNASError(f"logged generation {self.generation} cannot be restored: {problem}")
            self.population = [load(d) for d in row["population"]]
            self.generation = row["generation"]
            self.evaluate(self.population)
            self.population = self._children([cfg for cfg, _ in self.top(self.config.parents)], self.rng())
            self.generation += 1


def log_row_problem(row: Any, generation: int) -> str | None:
    """What makes `row` unusable as logged generation `generation` (the row `Evolution.step` returns), or None.
    Every value a restore reads or keeps is checked: a number is a number (never a bool), a config is a mapping
    (never a string, which a config loader would take for a preset name or a file path)."""
    if not isinstance(row, dict):
        return f"it is a JSON {_json_kind(row)}, not a generation (an object)"
    g = row.get("generation")
    if not _is_int(g):
        return f"its generation is {brief(g)}, not a whole number"
    if g != generation:
        return f"it is generation {brief(g)} where generation {generation} comes next (the generations are " \
               "numbered 0, 1, 2, ... line by line)"
    population = row.get("population")
    if not isinstance(population, list) or not population:
        return f"its population is {brief(population)}, not a non-empty list of configs"
    for i, cfg in enumerate(population):
        if not isinstance(cfg, dict):
            return f"population entry {i} is {brief(cfg)}, not a config (a mapping)"
    if not _is_int(row.get("evaluated")) or row["evaluated"] < 1:
        return f"its evaluated count is {brief(row.get('evaluated'))}, not a whole number >= 1"
    best = row.get("best")
    if not isinstance(best, list) or not best:
        return f"its best is {brief(best)}, not a non-empty list of configs with their fitness"
    for i, entry in enumerate(best):
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
            return f"best entry {i} is {brief(entry)}, not a config (a mapping) with its fitness"
        if finite_number(entry.get("fitness")) is None:
            return f"best entry {i} has fitness {brief(entry.get('fitness'))}, not a finite number"
    return None


def finite_number(value: Any) -> float | None:
    """`value` as a float if it is a finite JSON number (an int or a float, never a bool), else None."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float
        return None
    return number if math.isfinite(number) else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_kind(value: Any) -> str:
    kinds = ((bool, "boolean"), (int, "number"), (float, "number"), (str, "string"), (list, "array"),
             (dict, "object"))
    return next((name for t, name in kinds if isinstance(value, t)), "null" if value is None else type(value).__name__)


def random_search(space: Any, fitness: Fitness, feasible: Feasible, evaluations: int, seed: int = 0,
                  max_tries: int = 100_000, fitness_many: FitnessMany | None = None) -> dict[str, tuple[Any, float]]:
    """The baseline: `evaluations` distinct feasible random configs, scored."""
    cfgs = sample_feasible(space, random.Random(seed + 104729), feasible, evaluations, max_tries)
    scores = fitness_many(cfgs) if fitness_many else [fitness(c) for c in cfgs]
    return {cfg.id: (cfg, f) for cfg, f in zip(cfgs, scores)}
