"""What latency-aware search buys on the embedded default supernet: AutoFormer's evolution against random search
with the same number of evaluations, under the demo's budget, over several seeds.

The budget is measured once, the demo's way (the min and max subnets on OpenVINO fp32 batch 1, one thread; the
budget DEMO_BUDGET_FRACTION of the way up), and shared by every seed so that the seeds are comparable. Each seed
runs the demo's search (`deploy_nas.workflows.demo_search_request`): its own latency predictor (fitted on measured
subnets, validated on a held-out quarter), then evolution and random search, then the top five of each measured
directly. The winners' val top-1 (the split the search optimises), test top-1 (never seen by the search), measured
latency and share of the budget are reported per seed, with the medians and the spread (min..max) over the seeds,
and the Pareto plot of both methods' evaluated subnets.

    python benchmarks/search_vs_random.py --out benchmarks/results [--seeds 0 1 2]

Writes search_vs_random.json, .md and .png into --out.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run_benchmarks import machine, write_results  # noqa: E402

from deploy_nas.search import pareto_front  # noqa: E402
from deploy_nas.supernets import default_supernet  # noqa: E402
from deploy_nas.workflows import DEMO_THREADS, demo_budget, demo_search_request, run_search  # noqa: E402

METHODS = ("evolution", "random")


def run(seeds: list[int], log=print) -> dict[str, Any]:
    supernet, space = default_supernet()
    plan = demo_budget(supernet, space)
    log(f"budget {plan['budget_ms']} ms (min..max subnet {plan['range_ms'][0]:.3f}..{plan['range_ms'][1]:.3f} ms)")
    runs = []
    for seed in seeds:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            request = demo_search_request(plan["budget_ms"], seed=seed)
            result = run_search(supernet, space, Path(tmp) / "search", request, known=plan["known"], log=lambda m: None)
        row = {"seed": seed, "seconds": time.perf_counter() - start, "predictor": result["predictor"]["held_out"],
               "repeatability": result["predictor"].get("repeatability")}
        for m in METHODS:
            w = result[m]["winner"]
            row[m] = {"id": w["id"], "config": w["config"], "val_top1": w["val_top1"], "test_top1": w["test_top1"],
                      "latency_ms": w["latency_ms"], "budget_share": w["latency_ms"] / plan["budget_ms"],
                      "meets_budget": w["meets_budget"], "evaluated": result[m]["evaluated"],
                      "points": result[m]["points"]}
        log(f"seed {seed}: evolution {row['evolution']['val_top1']:.4f}/{row['evolution']['test_top1']:.4f} "
            f"random {row['random']['val_top1']:.4f}/{row['random']['test_top1']:.4f} (val/test), "
            f"tau {_tau(row['predictor']['kendall_tau'])}, {row['seconds']:.0f} s")
        runs.append(row)
    summary = {}
    for m in METHODS:
        for key in ("val_top1", "test_top1", "latency_ms", "budget_share"):
            summary[f"{m}.{key}"] = _spread([r[m][key] for r in runs])
    for key in ("val_top1", "test_top1"):
        diffs = [r["evolution"][key] - r["random"][key] for r in runs]
        summary[f"evolution-random.{key}"] = {**_spread(diffs), "evolution_ahead": sum(d > 0 for d in diffs),
                                              "ties": sum(d == 0 for d in diffs)}
    for key in ("kendall_tau", "mape_percent"):  # a tau is null (undefined) where tied latencies leave no ranking
        if values := [r["predictor"][key] for r in runs if r["predictor"][key] is not None]:
            summary[f"predictor.{key}"] = _spread(values)
    for key in ("kendall_tau", "median_diff_percent"):
        if values := [r["repeatability"][key] for r in runs if r.get("repeatability") and
                      r["repeatability"][key] is not None]:
            summary[f"repeatability.{key}"] = _spread(values)
    return {"machine": machine(), "space": space.to_dict(), "threads": DEMO_THREADS, "budget_ms": plan["budget_ms"],
            "latency_range_ms": list(plan["range_ms"]), "runs": runs, "summary": summary}


def _tau(value: float | None) -> str:
    return "undefined (tied latencies)" if value is None else f"{value:.3f}"


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def markdown(res: dict[str, Any]) -> str:
    s, m = res["summary"], res["machine"]
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    spread = lambda d, f: f"{f(d['median'])} ({f(d['min'])} .. {f(d['max'])})"  # noqa: E731
    lines = [f"Machine: {m['cpu']}, {m['cores_usable']} usable cores. Embedded default supernet, budget "
             f"{res['budget_ms']} ms (OpenVINO fp32 batch 1, {res['threads']} thread; min..max subnet "
             f"{res['latency_range_ms'][0]:.3f}..{res['latency_range_ms'][1]:.3f} ms), {len(res['runs'])} seeds.", "",
             "| seed | method | evaluated | val top-1 | test top-1 | latency ms | of budget |",
             "|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        for name in METHODS:
            w = r[name]
            lines.append(f"| {r['seed']} | {name} | {w['evaluated']} | {pct(w['val_top1'])} | {pct(w['test_top1'])} "
                         f"| {w['latency_ms']:.3f} | {100 * w['budget_share']:.0f}% |")
    lines += ["", "Medians over the seeds (min .. max):", "",
              "| method | val top-1 | test top-1 | latency ms | of budget |", "|---|---|---|---|---|"]
    for name in METHODS:
        lines.append(f"| {name} | {spread(s[f'{name}.val_top1'], pct)} | {spread(s[f'{name}.test_top1'], pct)} | "
                     f"{spread(s[f'{name}.latency_ms'], lambda v: f'{v:.3f}')} | "
                     f"{spread(s[f'{name}.budget_share'], lambda v: f'{100 * v:.0f}%')} |")
    for key in ("val_top1", "test_top1"):
        d = s[f"evolution-random.{key}"]
        lines.append(f"\nEvolution minus random, {key.replace('_', ' ')}: median {100 * d['median']:+.2f} points "
                     f"({100 * d['min']:+.2f} .. {100 * d['max']:+.2f}); evolution ahead in {d['evolution_ahead']} of "
                     f"{len(res['runs'])} seeds, {d['ties']} ties.")
    tau = lambda key: spread(s[key], lambda v: f"{v:.3f}") if key in s else "undefined (tied latencies)"  # noqa: E731
    lines.append(f"\nLatency predictor on its held-out subnets: Kendall tau {tau('predictor.kendall_tau')}, "
                 f"mean abs error {spread(s['predictor.mape_percent'], lambda v: f'{v:.1f}%')}.")
    if "repeatability.median_diff_percent" in s:
        lines.append(f"\nTiming repeatability (the predictor's subnets, the medians of the even passes against those "
                     f"of the odd ones): Kendall tau {tau('repeatability.kendall_tau')}, median difference "
                     f"{spread(s['repeatability.median_diff_percent'], lambda v: f'{v:.1f}%')}.")
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colours = {"evolution": "tab:blue", "random": "tab:orange"}
    for i, r in enumerate(res["runs"]):
        for name in METHODS:
            pts = r[name]["points"]
            ax.scatter([p["predicted_ms"] for p in pts], [p["val_top1"] for p in pts], s=6, alpha=0.15,
                       color=colours[name], label=f"{name}: evaluated (predicted ms)" if i == 0 else None)
            front = pareto_front(pts)
            ax.step([p["predicted_ms"] for p in front], [p["val_top1"] for p in front], where="post",
                    color=colours[name], alpha=0.6, label=f"{name}: Pareto front per seed" if i == 0 else None)
            w = r[name]
            ax.scatter([w["latency_ms"]], [w["val_top1"]], s=120, marker="*", color=colours[name], edgecolor="k",
                       label=f"{name}: winner (measured ms)" if i == 0 else None)
    ax.axvline(res["budget_ms"], color="k", linestyle="--", label="budget")
    ax.set_xlabel("latency, ms (OpenVINO fp32, batch 1)")
    ax.set_ylabel("val top-1 (inherited weights)")
    ax.set_title(f"evolution vs random search, {len(res['runs'])} seeds")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    res = run(args.seeds)
    print(write_results(args.out, "search_vs_random", res, markdown(res), plot))


if __name__ == "__main__":
    main()
