"""The relative-position lowerings on a CUDA GPU in torch: AutoFormer-T/-S under each lowering ("gather", "augmented",
"compact") next to timm's DeiT-tiny/-small, through the torch engine (`deploy-nas bench --backend torch --device
cuda`: IEEE fp32, TF32 off; the input placed on the GPU once, each run synchronised), at batch 1 (latency: launch
bound on a large GPU) and a larger batch (throughput), in alternated rounds, random weights in the official layouts.
It needs no TensorRT and no OpenVINO; what TensorRT would make of these graphs is not measured here.

    python benchmarks/relpos_cuda.py --out benchmarks/results [--rounds 5] [--batches 1,64]

Writes relpos_cuda.json and relpos_cuda.md into --out.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from relpos_vs_deit import PAIRS, models  # noqa: E402
from run_benchmarks import write_results  # noqa: E402

from deploy_nas.export.backends.torch_backend import TorchEngine  # noqa: E402


def measure(engines: dict[str, TorchEngine], batch: int, runs: int) -> dict[str, float]:
    """Median ms per batch of `runs` synchronised runs per model, after a warm-up of the same size."""
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    out = {}
    for name, engine in engines.items():
        with engine.runner(x) as runner:
            runner.run_async(runs)  # warm-up: cuBLAS heuristics, the caching allocator
            _, times = runner.run_async(runs)
        out[name] = statistics.median(times)
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [f"GPU: {result['gpu']}; torch {result['torch']}; {result['rounds']} alternated rounds, "
             f"{result['runs']} runs per measurement; medians over the rounds (ms per batch) and the median of the "
             "per-round ratios to the DeiT of the same width.", "",
             "| model | " + " | ".join(f"batch {b} ms | / DeiT" for b in result["batches"]) + " |",
             "|---|" + "---|---|" * len(result["batches"])]
    for name in result["models"]:
        cells = []
        for b in result["batches"]:
            cells += [f"{result['median_ms'][str(b)][name]:.3f}", f"{result['ratio'][str(b)][name]:.3f}x"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="autoformer-t,autoformer-s")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("relpos_cuda.py needs a CUDA GPU: torch.cuda.is_available() is False")
    presets = args.presets.split(",")
    built = {name: TorchEngine(model, device="cuda") for name, model in models(presets).items()}
    names = list(built)
    batches = [int(b) for b in args.batches.split(",")]
    rows: dict[str, dict[str, list[float]]] = {str(b): {n: [] for n in names} for b in batches}
    ratios: dict[str, dict[str, list[float]]] = {str(b): {n: [] for n in names} for b in batches}
    for rnd in range(args.rounds):
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        for b in batches:
            ms = measure({n: built[n] for n in order}, b, args.runs)
            for n in names:
                rows[str(b)][n].append(ms[n])
                deit = next(PAIRS[p] for p in presets if n.startswith(p) or n == PAIRS[p])
                ratios[str(b)][n].append(ms[n] / ms[deit])
            print(f"round {rnd + 1} batch {b}: " + ", ".join(f"{n} {ms[n]:.3f}" for n in names), flush=True)
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version(),
              "rounds": args.rounds, "runs": args.runs, "batches": batches, "models": names, "rows_ms": rows,
              "median_ms": {b: {n: statistics.median(v) for n, v in r.items()} for b, r in rows.items()},
              "ratio": {b: {n: statistics.median(v) for n, v in r.items()} for b, r in ratios.items()}}
    print(write_results(args.out, "relpos_cuda", result, markdown(result)))


if __name__ == "__main__":
    main()
