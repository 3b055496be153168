"""ViT-Slim on DeiT-small: the dense pruned model against the masked full-size model (what the official code
deploys: the whole DeiT with 0/1 masks multiplied in), at budgets attention/MLP 0.7 and 0.5 and tokens 0.7;
params, FLOPs (fvcore on the dense model, and the analytic count) and OpenVINO / onnxruntime fp32 batch-1
latency, in alternated rounds in one run; both ragged-head layouts (zero-padded heads, heads grouped by width).

Random weights in the official layout with random masks (uniform zetas: every head keeps a random subset of its
channels, the worst case for the padded layout); speed does not depend on the weight values.

    python benchmarks/vitslim_bench.py --out benchmarks/results [--rounds 5] [--seconds 2]

Writes vitslim.json (every measurement), vitslim.md and vitslim.png into --out.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run_benchmarks import machine, write_results  # noqa: E402

from deploy_nas.export.backends import BuildConfig, default_threads, get_backend  # noqa: E402
from deploy_nas.export.fps import measure_fps, runs_for_seconds  # noqa: E402
from deploy_nas.export.onnx import export_onnx  # noqa: E402
from deploy_nas.flops import count_flops  # noqa: E402
from deploy_nas.materialize import materialize  # noqa: E402
from deploy_nas.spaces import SPACES  # noqa: E402
from deploy_nas.spaces.vitslim import SlimConfig  # noqa: E402
from deploy_nas.supernets.vitslim import SlimArch, SlimViT  # noqa: E402

BUDGETS = {"0.7": SlimConfig(0.7, 0.7, 0.7), "0.5": SlimConfig(0.5, 0.5, 0.7)}
BACKENDS = ("openvino", "onnxruntime")


class Masked(torch.nn.Module):
    """The masked full-size model with its 0/1 masks as constants (the official retrain/eval model)."""

    def __init__(self, model: SlimViT, cfg: SlimConfig):
        super().__init__()
        self.model = model
        self.masks = [tuple(m.clone() for m in block) for block in model.binary_masks(cfg)]
        a = model.arch
        self.spec = SimpleNamespace(in_chans=a.in_chans, img_size=a.img_size, num_classes=a.num_classes,
                                    arch="masked", source={})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_masked(x, self.masks)


@torch.no_grad()
def deit_small(seed: int = 0) -> SlimViT:
    model = SlimViT(SlimArch.from_space(SPACES.get("vitslim-deit-small")))
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("patch_zeta"):
            p.copy_(4 * torch.rand(p.shape, generator=g) - 1)
        elif name.endswith("zeta"):
            p.copy_(torch.rand(p.shape, generator=g))
        else:
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model.eval()


def models(model: SlimViT) -> tuple[dict[str, torch.nn.Module], dict[str, dict[str, Any]]]:
    out, info = {}, {}
    for label, cfg in BUDGETS.items():
        out[f"masked {label}"] = Masked(model, cfg)
        info[f"masked {label}"] = {"params": sum(p.numel() for n, p in model.named_parameters() if "zeta" not in n),
                                   "gmacs": model.macs(SlimConfig()) / 1e9, "analytic_gmacs": model.macs(cfg) / 1e9}
        for layout in ("padded", "grouped"):
            model.arch = replace(model.arch, head_layout=layout)
            dense = materialize(model, cfg)
            flops = count_flops(dense)
            out[f"dense {label} {layout}"] = dense
            info[f"dense {label} {layout}"] = {"params": flops.params, "gmacs": flops.gmacs,
                                               "gemm_gmacs": (flops.macs - flops.by_operator.get("layer_norm", 0))
                                               / 1e9, "analytic_gmacs": model.macs(cfg) / 1e9,
                                               "tokens": [len(b.tokens) if b.tokens else None
                                                          for b in dense.spec.body.blocks],
                                               "heads": [b.num_heads for b in dense.spec.body.blocks]}
    model.arch = replace(model.arch, head_layout="padded")
    return out, info


def build(built_models: dict[str, torch.nn.Module], work: Path, threads: int) -> dict[str, dict[str, Any]]:
    engines = {}
    for name, m in built_models.items():
        d = work / name.replace(" ", "_")
        onnx = export_onnx(m, d / "model.onnx")
        config = BuildConfig(threads=threads, out_dir=d)
        engines[name] = {b: get_backend(b).build(onnx.path, config) for b in BACKENDS}
        engines[name]["nodes"] = onnx.nodes_after
        print(f"built {name}: {onnx.nodes_after} ONNX nodes", flush=True)
    return engines


def measure(engines: dict[str, dict[str, Any]], rounds: int, seconds: float) -> list[dict[str, Any]]:
    rows, names = [], list(engines)
    for rnd in range(rounds):
        for name in names if rnd % 2 == 0 else names[::-1]:
            for backend in BACKENDS:
                engine = engines[name][backend]
                runs, _ = runs_for_seconds(engine, seconds, 50, 10, 5000)
                r = measure_fps(engine, batch=1, mode="latency", runs=runs, warmup=5)[0]
                rows.append({"model": name, "backend": backend, "round": rnd, "p50_ms": r.p50_ms, "runs": r.runs})
                print(f"round {rnd + 1}: {name:22s} {backend:12s} {r.p50_ms:8.2f} ms", flush=True)
    return rows


def markdown(result: dict[str, Any]) -> str:
    med, info, m = result["medians"], result["info"], result["machine"]
    lines = [f"Machine: {m['cpu']} ({', '.join(m['isa'])}), {m['cores_usable']} usable cores; onnxruntime "
             f"{m['versions']['onnxruntime']}, openvino {m['versions']['openvino']}. {result['rounds']} alternated "
             "rounds, medians of the batch-1 p50 latency.", "",
             "| model | params | GMAC executed | GMAC of the budgets | OpenVINO ms | onnxruntime ms "
             "| OpenVINO speed-up | onnxruntime speed-up |", "|---|---|---|---|---|---|---|---|"]
    for name in result["models"]:
        label = name.split()[1]
        base = {b: med[f"masked {label}|{b}"] for b in BACKENDS}
        row = info[name]
        lines.append(f"| {name} | {row['params'] / 1e6:.2f}M | {row['gmacs']:.3f} | {row['analytic_gmacs']:.3f} | "
                     + " | ".join(f"{med[f'{name}|{b}']:.2f}" for b in BACKENDS) + " | "
                     + " | ".join(f"{base[b] / med[f'{name}|{b}']:.2f}x" for b in BACKENDS) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = result["models"]
    fig, ax = plt.subplots(figsize=(9, 4))
    for i, backend in enumerate(BACKENDS):
        values = [result["medians"][f"{n}|{backend}"] for n in names]
        ax.bar([j + 0.4 * i for j in range(len(names))], values, width=0.4, label=backend)
    ax.set_xticks([j + 0.2 for j in range(len(names))], names, rotation=20, ha="right")
    ax.set_ylabel("batch-1 latency, ms (median)")
    ax.set_title("ViT-Slim on DeiT-small: masked full-size vs dense pruned")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--work", type=Path, default=Path("out/bench-vitslim"))
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0, help="each measurement spans this long")
    args = ap.parse_args()
    built_models, info = models(deit_small())
    engines = build(built_models, args.work, args.threads)
    rows = measure(engines, args.rounds, args.seconds)
    groups: dict[str, list[float]] = {}
    for r in rows:
        groups.setdefault(f"{r['model']}|{r['backend']}", []).append(r["p50_ms"])
    result = {"machine": machine(), "rounds": args.rounds, "models": list(built_models), "info": info,
              "nodes": {k: v["nodes"] for k, v in engines.items()}, "rows": rows,
              "medians": {k: statistics.median(v) for k, v in groups.items()}}
    print(write_results(args.out, "vitslim", result, markdown(result), plot))


if __name__ == "__main__":
    main()
