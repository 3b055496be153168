"""The demo's search policy: a budget between the measured min and max subnets of the embedded default that binds,
latency on one core, and a search table that says how much of the budget each winner uses. (`make demo` runs the
whole job; the search machinery itself is tested in test_search.py.)"""
from __future__ import annotations

import pytest

from deploy_nas.search import search_table
from deploy_nas.supernets import default_supernet
from deploy_nas.workflows import DEMO_BUDGET_FRACTION, DEMO_SEARCH, DEMO_THREADS, demo_budget, demo_search_request


@pytest.mark.openvino
def test_demo_budget_lies_between_the_measured_min_and_max_subnets():
    supernet, space = default_supernet()
    plan = demo_budget(supernet, space)
    fast, slow = plan["range_ms"]
    assert 0 < fast < plan["budget_ms"] < slow
    assert plan["budget_ms"] == pytest.approx(fast + DEMO_BUDGET_FRACTION * (slow - fast), abs=1e-4)
    assert plan["known"] == {space.sample(None, "min").id: fast, space.sample(None, "max").id: slow}
    request = demo_search_request(plan["budget_ms"], seed=3)
    assert (request.threads, request.seed, request.population, request.measure) == (
        DEMO_THREADS, 3, DEMO_SEARCH["population"], DEMO_SEARCH["measure"])
    assert demo_search_request(1.0, generations=2).generations == 2
    request.check()


def test_search_table_gives_each_winner_its_share_of_the_budget():
    def winner(ms: float, ok: bool) -> dict:
        return {"id": "abc", "val_top1": 0.9, "test_top1": 0.8, "latency_ms": ms, "meets_budget": ok}

    result = {"budget_ms": 2.0, "predictor": {"held_out": {"kendall_tau": 0.8, "mape_percent": 7.0, "n": 10},
                                              "repeatability": {"kendall_tau": 0.95, "median_diff_percent": 1.2,
                                                                "n": 38}},
              "evolution": {"winner": winner(1.7, True), "evaluated": 40},
              "random": {"winner": winner(2.2, False), "evaluated": 40}}
    table = search_table(result)
    assert "of budget" in table.columns
    col = list(table.columns).index("of budget")
    assert [row[col] for row in table.rows] == ["85%", "110%"]
    assert "Kendall tau 0.800" in table.title and "timings repeat with Kendall tau 0.950" in table.title
