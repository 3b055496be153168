"""AutoFormer-T/-S next to timm's DeiT-tiny/-small: what AutoFormer's relative-position attention costs under each
lowering of the dense models, side by side in one run: "gather" (GatherElements/ScatterElements over (N, N)
indices, the form before 2026-12), "augmented" (the first 2026-12 form) and "compact" (the current form); and
"none", the same model with its relative-position terms dropped (not the same function: the floor that any lowering
of those terms adds its cost to, so that "compact / none" is what the terms cost).

Every model is exported by the same exporter (TorchScript, opset 17, onnxsim) and measured on OpenVINO fp32 (2 and
1 threads) and onnxruntime fp32 (from that ONNX file) and torch eager, at batch 1 (latency) and 8 (throughput), in
alternated rounds (the model order rotates each round, each measurement sized to `--seconds` of runs), random
weights in the official layouts (speed does not depend on the values). The tables give the medians over the
rounds, the medians of the per-round ratios to the DeiT of the same width (robust to the machine's drift: a round's
measurements sit next to each other in time), and where the time goes (the runtimes' own profilers, batch 1).
Optionally `benchmark_app -hint latency` on the OpenVINO IRs, alternated.

    python benchmarks/relpos_vs_deit.py --out benchmarks/results [--rounds 5] [--benchmark-app]

Writes relpos.json (every measurement and profile), relpos.md and relpos.png into --out.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run_benchmarks import benchmark_app_p50, machine, write_results  # noqa: E402

from deploy_nas.dense import build_dense  # noqa: E402
from deploy_nas.export.backends import BuildConfig, default_threads, get_backend  # noqa: E402
from deploy_nas.export.backends.torch_backend import TorchEngine  # noqa: E402
from deploy_nas.export.fps import measure_fps, mode_for_batch, runs_for_seconds  # noqa: E402
from deploy_nas.export.onnx import export_onnx  # noqa: E402
from deploy_nas.export.profile import index_share  # noqa: E402
from deploy_nas.flops import count_flops  # noqa: E402
from deploy_nas.materialize import materialize  # noqa: E402
from deploy_nas.spaces import PRESETS, SPACES  # noqa: E402
from deploy_nas.supernets.autoformer import AutoFormerArch, AutoFormerSupernet  # noqa: E402

PAIRS = {"autoformer-t": "deit_tiny_patch16_224", "autoformer-s": "deit_small_patch16_224"}
LOWERINGS = ("gather", "augmented", "compact", "none")  # "none": the floor, relative-position terms dropped
BEST = "compact"  # the dense models' default lowering, in bold
BACKENDS = ("openvino", "openvino-1t", "onnxruntime", "torch")


class Timm(torch.nn.Module):
    """A timm model with the `spec` the exporter and the torch engine read (input size, classes)."""

    def __init__(self, name: str):
        super().__init__()
        import timm

        self.model = timm.create_model(name, pretrained=False).eval()
        self.spec = SimpleNamespace(in_chans=3, img_size=224, num_classes=1000, arch="timm", source={})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def autoformer(preset: str, lowering: str) -> torch.nn.Module:
    space = SPACES.get(PRESETS.get(preset).space)
    supernet = AutoFormerSupernet(AutoFormerArch.from_space(space))
    supernet.reset_parameters(torch.Generator().manual_seed(0))
    dense = materialize(supernet.eval(), PRESETS.get(preset).config)
    if lowering == "none":  # the floor: the same widths, depth and heads with plain attention
        blocks = tuple(dataclasses.replace(b, relative_position=False) for b in dense.spec.body.blocks)
        body = dataclasses.replace(dense.spec.body, blocks=blocks)
        state = {k: v for k, v in dense.state_dict().items() if ".rel_pos_" not in k}
        return build_dense(dataclasses.replace(dense.spec, body=body), state)
    body = dataclasses.replace(dense.spec.body, relpos_lowering=lowering)
    return build_dense(dataclasses.replace(dense.spec, body=body), dense.state_dict())


def models(presets: list[str], lowerings: list[str]) -> dict[str, torch.nn.Module]:
    out = {}
    for preset in presets:
        for lowering in lowerings:
            out[f"{preset} {lowering}"] = autoformer(preset, lowering)
        out[PAIRS[preset]] = Timm(PAIRS[preset])
    return out


def engines(name: str, model: torch.nn.Module, work: Path, threads: int) -> dict[str, Any]:
    onnx = export_onnx(model, work / name.replace(" ", "_") / "model.onnx")
    config = BuildConfig(threads=threads, out_dir=work / name.replace(" ", "_"))
    one = BuildConfig(threads=1, out_dir=work / name.replace(" ", "_") / "1t")
    return {"openvino": get_backend("openvino").build(onnx.path, config),
            "openvino-1t": get_backend("openvino").build(onnx.path, one),
            "onnxruntime": get_backend("onnxruntime").build(onnx.path, config),
            "torch": TorchEngine(model, threads=threads), "nodes": onnx.nodes_after}


def measure(built: dict[str, dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    names = list(built)
    for rnd in range(args.rounds):
        for backend in BACKENDS:
            for name in names[rnd % len(names):] + names[:rnd % len(names)]:
                engine = built[name][backend]
                # torch eager and one-thread OpenVINO: batch 1 only; larger batches in the first --batch-rounds
                # rounds (50 batches each)
                for batch in [b for b in args.batches if b == 1 or (backend in ("openvino", "onnxruntime") and
                                                                     rnd < args.batch_rounds)]:
                    if batch == 1:
                        runs, _ = runs_for_seconds(engine, args.seconds, 50, 10, 5000)
                    else:
                        runs = 50
                    r = measure_fps(engine, batch=batch, mode=mode_for_batch(batch), runs=runs, warmup=5)[0]
                    rows.append({"model": name, "backend": backend, "batch": batch, "round": rnd,
                                 "p50_ms": r.p50_ms, "throughput_fps": r.throughput_fps, "runs": r.runs})
                    print(f"round {rnd + 1}: {name:28s} {backend:12s} batch {batch}: {r.p50_ms:8.2f} ms", flush=True)
    return rows


def _value(r: dict[str, Any]) -> float:
    return r["p50_ms"] if r["batch"] == 1 else 1000 * r["batch"] / r["throughput_fps"]  # ms per batch


def summary(rows: list[dict[str, Any]]) -> dict[tuple, float]:
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["backend"], r["batch"]), []).append(_value(r))
    return {k: statistics.median(v) for k, v in groups.items()}


def round_ratios(rows: list[dict[str, Any]], versus: str = "deit") -> dict[tuple, float]:
    """(model, backend, batch) -> the median over rounds of its time / the time in the same round of its DeiT
    (`versus="deit"`) or of the same preset with another lowering (`versus="none"`: the floor)."""
    at = {(r["model"], r["backend"], r["batch"], r["round"]): _value(r) for r in rows}
    ratios: dict[tuple, list[float]] = {}
    for (model, backend, batch, rnd), value in at.items():
        preset = model.split(" ")[0]
        ref = PAIRS.get(preset) if versus == "deit" else f"{preset} {versus}"
        if preset in PAIRS and (ref, backend, batch, rnd) in at:
            ratios.setdefault((model, backend, batch), []).append(value / at[(ref, backend, batch, rnd)])
    return {k: statistics.median(v) for k, v in ratios.items()}


def bapp_rounds(built: dict[str, dict[str, Any]], work: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    """benchmark_app -hint latency medians on each OpenVINO IR, alternated over `--rounds`."""
    out: dict[str, list[float]] = {}
    names = list(built)
    for rnd in range(args.rounds):
        for name in names if rnd % 2 == 0 else names[::-1]:
            xml = work / name.replace(" ", "_") / "openvino" / "fp32" / "model.xml"
            value = benchmark_app_p50(xml, args.threads, args.bapp_seconds, (1, 3, 224, 224))
            if value is not None:
                out.setdefault(name, []).append(value)
    return out


def markdown(result: dict[str, Any]) -> str:
    med = {tuple(k.split("|")): v for k, v in result["medians"].items()}
    rat = {tuple(k.split("|")): v for k, v in result["ratios"].items()}
    floor = {tuple(k.split("|")): v for k, v in result.get("floor_ratios", {}).items()}
    lowerings = result.get("lowerings", LOWERINGS[:3])
    info = result["machine"]
    lines = [f"Machine: {info['cpu']} ({', '.join(info['isa'])}), {info['cores_usable']} usable cores; torch "
             f"{info['versions']['torch']}, onnxruntime {info['versions']['onnxruntime']}, openvino "
             f"{info['versions']['openvino']}, timm {result['timm']}. {result['rounds']} rounds, the model order "
             "rotating each round; ms: medians over the rounds (batch 1: p50 latency; batch 8: time per batch in "
             f"throughput mode); ratios: medians of the per-round ratios to DeiT (and, in the last column, of the "
             f"{BEST} lowering to `none`, the same model without relative positions: what the terms cost). "
             "`openvino-1t`: one thread.", ""]
    for preset in result["presets"]:
        deit = PAIRS[preset]
        names = [f"{preset} {lowering}" for lowering in lowerings]
        with_floor = "none" in lowerings and BEST in lowerings
        lines += [f"### {preset} vs {deit}", "",
                  "GMAC: " + ", ".join(f"{n.split(' ')[1]} {result['gmacs'][n]:.3f}" for n in names) +
                  f", {deit} {result['gmacs'][deit]:.3f}; ONNX nodes: " +
                  ", ".join(f"{n.split(' ')[1]} {result['nodes'][n]}" for n in names) +
                  f", DeiT {result['nodes'][deit]}.", "",
                  "| engine | batch | DeiT ms | " + " | ".join(f"{lw} ms" for lw in lowerings) + " | " +
                  " | ".join(f"{lw} / DeiT" for lw in lowerings) + (f" | {BEST} / none |" if with_floor else " |"),
                  "|---|---|---|" + "---|" * (2 * len(lowerings) + with_floor)]
        for backend in BACKENDS:
            for batch in result["batches"]:
                key = (backend, str(batch))
                if (deit, *key) not in med:
                    continue
                times = " | ".join(f"{med[(n, *key)]:.2f}" for n in names)
                ratios = " | ".join(("**{:.3f}x**" if n.endswith(BEST) else "{:.3f}x").format(rat[(n, *key)])
                                    for n in names)
                cost = f" {floor[(f'{preset} {BEST}', *key)]:.3f}x |" if with_floor else ""
                lines.append(f"| {backend} | {batch} | {med[(deit, *key)]:.2f} | {times} | {ratios} |{cost}")
        bapp = result.get("benchmark_app") or {}
        if bapp.get(deit):
            parts = [f"{n.split(' ')[1]} {statistics.median(bapp[n]) / statistics.median(bapp[deit]):.3f}x"
                     for n in names if bapp.get(n)]
            lines += ["", f"`benchmark_app -hint latency` (OpenVINO's own tool, same IRs, alternated), of {deit}: "
                      + ", ".join(parts) + "."]
        lines += [""]
        for name in names + [deit]:
            for backend in ("openvino", "onnxruntime"):
                ops = result["profiles"][name][backend]
                lines += [f"Where the time goes, {name}, {backend} (batch 1, the runtime's profiler; gather/scatter "
                          f"{100 * index_share(ops):.1f}%): " + ", ".join(
                              f"{o['op']} {100 * o['share']:.1f}% ({o['nodes']})" for o in ops[:7]), ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    med = {tuple(k.split("|")): v for k, v in result["medians"].items()}
    lowerings = result.get("lowerings", LOWERINGS[:3])
    palette = {"gather": "tab:red", "augmented": "tab:orange", "compact": "tab:green", "none": "tab:blue"}
    fig, axes = plt.subplots(1, len(result["presets"]), figsize=(6 * len(result["presets"]), 4), squeeze=False)
    for ax, preset in zip(axes[0], result["presets"]):
        names = [PAIRS[preset]] + [f"{preset} {lowering}" for lowering in lowerings]
        colors = ["tab:gray"] + [palette[lw] for lw in lowerings]
        for i, backend in enumerate(BACKENDS):
            ax.bar([i + 0.2 * j for j in range(len(names))], [med[(n, backend, "1")] for n in names], width=0.18,
                   color=colors)
        ax.set_xticks([i + 0.3 for i in range(len(BACKENDS))], BACKENDS, fontsize=8)
        ax.set_ylabel("batch-1 p50, ms")
        ax.set_title(f"{preset}: DeiT (gray), " + ", ".join(f"{lw} ({palette[lw][4:]})" for lw in lowerings),
                     fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="autoformer-t,autoformer-s")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--work", type=Path, default=Path("out/bench-relpos"))
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--lowerings", default=",".join(LOWERINGS),
                    help="relative-position lowerings of the AutoFormer models (none: the floor without them)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0, help="each batch-1 measurement spans this long")
    ap.add_argument("--batch-rounds", type=int, default=3, help="rounds that also measure the larger batches")
    ap.add_argument("--benchmark-app", action="store_true", help="also time the IRs with OpenVINO's benchmark_app")
    ap.add_argument("--bapp-seconds", type=int, default=5)
    args = ap.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    args.lowerings = args.lowerings.split(",")
    if unknown := set(args.lowerings) - set(LOWERINGS):
        ap.error(f"unknown lowering(s) {sorted(unknown)}; choose from {LOWERINGS}")
    torch.set_num_threads(args.threads)
    presets = args.presets.split(",")
    built, gmacs, nodes, profiles = {}, {}, {}, {}
    for name, model in models(presets, args.lowerings).items():
        print(f"build {name}", flush=True)
        built[name] = engines(name, model, args.work, args.threads)
        nodes[name] = built[name].pop("nodes")
        gmacs[name] = count_flops(model.model if isinstance(model, Timm) else model,
                                  torch.zeros(1, 3, 224, 224)).gmacs
        x = torch.randn(1, 3, 224, 224).numpy()
        profiles[name] = {b: [o.to_dict() for o in built[name][b].op_profile(x)] for b in ("openvino", "onnxruntime")}
    rows = measure(built, args)
    bapp = bapp_rounds(built, args.work, args) if args.benchmark_app else None
    import timm

    result = {"machine": machine(), "timm": timm.__version__, "presets": presets, "batches": args.batches,
              "lowerings": args.lowerings, "rounds": args.rounds, "rows": rows, "gmacs": gmacs, "nodes": nodes,
              "profiles": profiles, "medians": {"|".join(map(str, k)): v for k, v in summary(rows).items()},
              "ratios": {"|".join(map(str, k)): v for k, v in round_ratios(rows).items()},
              "floor_ratios": {"|".join(map(str, k)): v for k, v in round_ratios(rows, "none").items()},
              "benchmark_app": bapp}
    print(write_results(args.out, "relpos", result, markdown(result), plot))


if __name__ == "__main__":
    main()
