"""Search: the latency predictor, AutoFormer's evolution operators and budget, the random baseline, outputs, resume,
and bad input through the console script. Latency is measured for real on the torch backend (fast); no test
asserts a time."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import time

import numpy as np
import pytest

from deploy_nas.family import FAMILIES
from deploy_nas.search import InfeasibleBudget, Search, SearchConstraints, SearchSetup, pareto_front
from deploy_nas.search.evolution import Evolution, EvolutionConfig, random_search
from deploy_nas.search.predictor import LatencyPredictor, kendall_tau, mape, repeatability
from deploy_nas.spaces import SPACES
from deploy_nas.supernets import default_supernet
from tests.cli.test_extract_info import EXE, run

SPACE = SPACES.get("autoformer-tiny")
COSTS = FAMILIES.get("autoformer").cost_features


def test_predictor_recovers_a_linear_cost_model_and_scores_itself():
    rng = random.Random(0)
    cfgs = [SPACE.sample(rng) for _ in range(40)]
    true = np.array([0.2, 0.05, 0.001, 0.3, 0.1, 0.02])
    ms = [float(np.array(list(COSTS(SPACE, c).values())) @ true) for c in cfgs]
    p = LatencyPredictor(SPACE, COSTS).fit(cfgs[:30], ms[:30])
    q = p.validate(cfgs[30:], ms[30:])
    assert q["kendall_tau"] == pytest.approx(1.0) and q["mape_percent"] < 1e-6
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0) and mape([110], [100]) == pytest.approx(10.0)


def test_repeatability_compares_the_even_passes_with_the_odd_ones():
    # three subnets, five passes each: the halves (passes 0, 2, 4 and 1, 3) rank them alike, 10% apart at the median
    passes = [[1.0, 1.1, 1.0, 1.1, 5.0], [2.0, 2.2, 2.0, 2.2, 2.0], [3.0, 3.3, 3.0, 3.3, 3.0]]
    r = repeatability(passes)
    assert r["n"] == 3 and r["kendall_tau"] == pytest.approx(1.0)
    assert r["median_diff_percent"] == pytest.approx(100 * 0.1 / 1.05)
    swapped = repeatability([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])  # the halves rank the subnets in reverse
    assert swapped["kendall_tau"] == pytest.approx(-1.0)
    assert repeatability([[1.0, 1.0], [2.0, 2.0]]) is None and repeatability([[1.0]] * 5) is None


def test_pareto_front_keeps_only_undominated_points():
    pts = [{"predicted_ms": 1, "val_top1": 0.5}, {"predicted_ms": 2, "val_top1": 0.4},
           {"predicted_ms": 3, "val_top1": 0.9}, {"predicted_ms": 2.5, "val_top1": 0.7}]
    assert [p["val_top1"] for p in pareto_front(pts)] == [0.5, 0.7, 0.9]


def _evolution(generations: int, seed: int = 0) -> Evolution:
    cost = LatencyPredictor(SPACE, COSTS, coef=np.array([0, 0, 0, 1.0, 1.0, 1.0]))
    budget = cost(SPACE.sample(None, "max")) * 0.6
    fitness = lambda c: sum(c.num_heads) + c.embed_dim / 16 + sum(c.mlp_ratio)  # noqa: E731 (deterministic)
    evo = Evolution(SPACE, fitness, lambda c: cost(c) <= budget,
                    EvolutionConfig(population=20, parents=5, mutations=10, crossovers=10, generations=generations,
                                    seed=seed))
    evo.budget, evo.cost = budget, cost
    return evo


def test_evolution_breeds_feasible_children_and_improves():
    evo = _evolution(4)
    rows = [evo.step() for _ in range(4)]
    assert all(len(r["population"]) == 20 for r in rows)
    assert all(evo.cost(c) <= evo.budget for c, _ in evo.scores.values())
    best = [r["best"][0]["fitness"] for r in rows]
    assert best == sorted(best) and best[-1] > best[0]
    with pytest.raises(ValueError, match="equal depth"):
        SPACE.crossover(SPACE.sample(None, "min"), SPACE.sample(None, "max"), random.Random(0))


def test_evolution_resumes_from_its_log_to_the_same_state():
    from deploy_nas.spaces import load_config

    whole = _evolution(5)
    rows = [whole.step() for _ in range(5)]
    resumed = _evolution(5)
    resumed.restore(rows[:2], lambda d: load_config(d, "autoformer"))
    rest = [resumed.step() for _ in range(3)]
    assert [r["population"] for r in rest] == [r["population"] for r in rows[2:]]
    assert set(resumed.scores) == set(whole.scores)


def test_random_search_spends_the_same_budget():
    evo = _evolution(3)
    for _ in range(3):
        evo.step()
    rand = random_search(SPACE, evo.fitness, evo.feasible, len(evo.scores))
    assert len(rand) == len(evo.scores) and all(evo.feasible(c) for c, _ in rand.values())


@pytest.fixture(scope="module")
def torch_latency():
    from deploy_nas.export.latency import BackendLatency

    return BackendLatency("torch", threads=1)


def test_search_writes_best_pareto_and_log(tmp_path, torch_latency):
    from deploy_nas.spaces import load_config

    supernet, space = default_supernet()
    from deploy_nas.data import digits_splits

    data = digits_splits(space.img_size, space.in_chans)
    setup = SearchSetup(measure=8, finalists=2, evolution=EvolutionConfig(
        population=8, parents=3, mutations=4, crossovers=4, generations=2))
    search = Search(supernet, space, data, torch_latency, SearchConstraints(1e9), setup, log=lambda m: None)
    result = search.run(tmp_path / "s")
    best = load_config(json.loads((tmp_path / "s" / "best.json").read_text()))
    space.validate(best)
    assert best.to_dict() == result["evolution"]["winner"]["config"]
    assert result["random"]["evaluated"] == result["evolution"]["evaluated"]
    for m in ("evolution", "random"):
        w = result[m]["winner"]
        assert w["meets_budget"] and 0 <= w["test_top1"] <= 1 and w["latency_ms"] > 0
        assert len(result[m]["finalists"]) == 2 and result[m]["front"]
    assert set(result["predictor"]["held_out"]) == {"kendall_tau", "mape_percent", "n"}
    # 7 of the 8 predictor subnets were timed interleaved in 5 passes (the min subnet alone first, to check the
    # budget): how well the halves of those passes agree
    repeat = json.loads((tmp_path / "s" / "pareto.json").read_text())["predictor"]["repeatability"]
    assert repeat["n"] == 7 and -1 <= repeat["kendall_tau"] <= 1 and repeat["median_diff_percent"] >= 0
    assert len((tmp_path / "s" / "generations.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "s" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    # best.json last: a search stopped while writing its results never shows a winner without them
    written = [(tmp_path / "s" / name).stat().st_mtime_ns for name in ("pareto.png", "pareto.json", "best.json")]
    assert written == sorted(written)


def test_infeasible_budget_names_the_fastest_latency_and_writes_nothing(tmp_path, torch_latency):
    supernet, space = default_supernet()
    search = Search(supernet, space, {}, torch_latency, SearchConstraints(1e-6), SearchSetup(measure=8),
                    log=lambda m: None)
    with pytest.raises(InfeasibleBudget, match=r"the fastest, the min subnet, measured [\d.]+ ms"):
        search.run(tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_search_cli_bad_input_exits_2_without_output(tmp_path):
    (tmp_path / "empty" / "val").mkdir(parents=True)
    (tmp_path / "empty" / "test").mkdir(parents=True)
    r = run("search", "--latency-budget-ms", "fast", "--out", tmp_path / "a")
    assert r.returncode == 2 and "latency-budget-ms" in r.stderr
    r = run("search", "--latency-budget-ms", "5", "--data", tmp_path / "empty", "--out", tmp_path / "b")
    assert r.returncode == 2 and "no images" in r.stderr
    other = tmp_path / "other"
    other.mkdir()
    (other / "supernet.json").write_text(json.dumps({"family": "nasvit", "arch": {}}))
    r = run("search", "--supernet", other, "--latency-budget-ms", "5", "--out", tmp_path / "c")
    assert r.returncode == 2 and "nasvit" in r.stderr
    r = run("search", "--latency-budget-ms", "0.000001", "--backend", "torch", "--out", tmp_path / "d")
    assert r.returncode == 2 and "fastest" in r.stderr
    assert not any((tmp_path / n).exists() for n in "abcd")


@pytest.mark.slow
def test_interrupted_search_keeps_its_log_and_resumes(tmp_path, tiny_supernet_dir):
    out = tmp_path / "s"
    # more generations than the search can run before the signal (a fraction of a second each), however late a loaded
    # machine lets this test see the log
    args = ["search", "--supernet", str(tiny_supernet_dir), "--backend", "torch", "--threads", "1",
            "--latency-budget-ms", "1000", "--generations", "500", "--population", "4", "--measure", "8",
            "--out", str(out)]
    # SIGINT as a terminal delivers it: a run started in the background of a non-interactive shell (`.ci/run &`)
    # inherits it ignored, and the search would not see the interrupt at all
    proc = subprocess.Popen([EXE, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log = out / "generations.jsonl"
    deadline = time.monotonic() + 600  # a loaded machine: start-up alone can take a minute
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "--resume" in err
    done = len(log.read_text().splitlines())
    assert 2 <= done < 500 and not (out / "best.json").exists()
    r = run(*args[:-2], "--generations", str(done + 1), "--out", out, "--resume")  # finish, one generation more
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [row["generation"] for row in rows] == list(range(done + 1)) and (out / "best.json").is_file()


def test_finalists_walk_the_ranking_until_one_meets_the_budget():
    """The most accurate candidates sit against the budget: when the top five all measure over it, the winner is
    the best-ranked one that measures within it (not the fastest of five over-budget ones)."""
    supernet, space = default_supernet()
    size = lambda model: sum(p.numel() for p in model.parameters()) / 1e5  # noqa: E731 (a latency that grows with size)
    from deploy_nas.materialize import materialize

    rng = random.Random(0)
    cfgs = list({c.id: c for c in (space.sample(rng) for _ in range(40))}.values())
    sized = sorted(cfgs, key=lambda c: size(materialize(supernet, c)))
    budget = size(materialize(supernet, sized[-8]))  # the 7 largest (and most accurate) do not fit
    scores = {c.id: (c, i / len(sized)) for i, c in enumerate(sized)}  # the larger, the more accurate
    search = Search(supernet, space, {"test": None}, size, SearchConstraints(budget), SearchSetup(finalists=5),
                    log=lambda m: None)
    search.data["test"] = _tiny_split(space)
    search.predictor.fit(sized, [size(materialize(supernet, c)) for c in sized])
    out = search.finalists(scores)
    w = out["winner"]
    assert w["meets_budget"] and w["id"] == sized[-8].id and w["rank"] == 8  # the most accurate that fits
    assert out["measured"] == 8 <= search.setup.max_checks
    assert all(r["latency_ms"] > budget for r in out["finalists"][:-1])


def _tiny_split(space):
    from deploy_nas.data import embedded_splits

    full = embedded_splits(space.img_size, space.in_chans)["test"]
    return type(full)(full.images[:16], full.labels[:16])
