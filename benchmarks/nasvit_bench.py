"""NASViT: official-size subnets as dense models (exactness against the supernet, onnxruntime / OpenVINO parity,
batch-1 FPS of OpenVINO fp32 against torch eager and onnxruntime), and the gradient conflict of sandwich training
on the tiny space (share of negative cosine between the max subnet's and the other subnets' gradients, per layer,
with and without the gradient projection).

Speed and parity: random weights in the official layout (the `nasvit` space, 16.6M parameters at the max subnet),
every tensor drawn N(0, 1/fan_in) so that nothing is zero (speed does not depend on the values). The exactness
after recalibration is measured on the embedded images; parity and latency use the stored statistics folded. Two
subnets: the A0 class (the config of the official space closest to A0's 208 MFLOPs: at 192 px, since the smallest
subnet at 224 px has 276 MMACs) and the smallest subnet at 224 px. Latency in alternated rounds in one run.

Gradient conflict: the tiny space trained from the same initialisation on the embedded data, once with the
projection and once without; before each step, on the step's own batch, subnets and augmentation, the gradient
of the max subnet g_s and the summed gradient of the min + random subnets g_sub are taken per parameter tensor.

    python benchmarks/nasvit_bench.py --out benchmarks/results [--rounds 5] [--seconds 2] [--steps 60]
        [--parts exactness,parity,latency,conflict] [--merge]

Writes nasvit.json (every measurement), nasvit.md and nasvit.png into --out.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run_benchmarks import machine  # noqa: E402

from deploy_nas.data import embedded_images, embedded_splits  # noqa: E402
from deploy_nas.export.backends import BuildConfig, default_threads, get_backend  # noqa: E402
from deploy_nas.export.backends.torch_backend import TorchEngine  # noqa: E402
from deploy_nas.export.fps import measure_fps, runs_for_seconds  # noqa: E402
from deploy_nas.export.onnx import export_onnx  # noqa: E402
from deploy_nas.family import FAMILIES, Calibration  # noqa: E402
from deploy_nas.flops import count_flops  # noqa: E402
from deploy_nas.materialize import materialize  # noqa: E402
from deploy_nas.spaces import SPACES  # noqa: E402
from deploy_nas.spaces.nasvit import NASViTConfig, NASViTSpace  # noqa: E402
from deploy_nas.supernets.nasvit import NASViTSupernet, macs, slots_of  # noqa: E402
from deploy_nas.train import TRAIN_RULES, project, train_config  # noqa: E402

A0_MMACS = 208.0  # paperswithcode: NASViT-A0 0.208 GFLOPs
BACKENDS = ("openvino", "onnxruntime", "torch")


# ----------------------------------------------------------------------------------------------- models


@torch.no_grad()
def official_supernet(seed: int = 0) -> NASViTSupernet:
    """The official-layout supernet, every tensor N(0, 1/fan_in) (norm/BN weights 1 + N(0, .1), biases and rescale
    tables, stored BN statistics as in the tests), so that no MBConv is zeroed by the official zero-init of its last
    BN."""
    model = FAMILIES.get("nasvit").build_supernet(SPACES.get("nasvit"), seed)
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        if "rescale" in name:
            p.copy_(1 + 0.3 * noise)
        elif p.dim() == 1:
            p.copy_(1 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
        else:
            p.copy_(noise / max(1, p[0].numel()) ** 0.5)
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(0.1 * torch.randn(b.shape, generator=g))
        elif name.endswith("running_var"):
            b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return model.eval()


def a0_class(space: NASViTSpace) -> NASViTConfig:
    """The config closest to A0's 208 MMACs among the smallest subnet at 192 px (190 MMACs, the article's smallest)
    and every config one or two single-choice steps above it (uniform sampling almost never lands this low)."""
    base = space.sample(None, "min")

    def steps(cfg: NASViTConfig) -> list[NASViTConfig]:
        out = []
        for gene in ("width", "depth", "kernel_size", "expand_ratio"):
            values, choices = getattr(cfg, gene), getattr(space, gene)
            for i, (v, allowed) in enumerate(zip(values, choices)):
                bigger = [a for a in allowed if a > v]
                if bigger:
                    out.append(replace(cfg, **{gene: values[:i] + (bigger[0],) + values[i + 1:]}))
        return out

    pool = {c.id: c for c in [base, *steps(base), *(c2 for c1 in steps(base) for c2 in steps(c1))]}
    return min(pool.values(), key=lambda c: (abs(macs(space, c) / 1e6 - A0_MMACS), c.id))


def subnets(space: NASViTSpace) -> dict[str, NASViTConfig]:
    return {"A0-class": a0_class(space), "min@224": replace(space.sample(None, "min"), resolution=224)}


def dense_models(supernet: NASViTSupernet, configs: dict[str, NASViTConfig], calib_images: int
                 ) -> tuple[dict[str, torch.nn.Module], dict[str, Any]]:
    """Per subnet: the dense model with BN recalibrated on embedded images, checked against the supernet with the
    same statistics on other embedded images; and the dense model with the stored statistics, which the parity and
    latency parts use (the export's own check and the parity batch are N(0, 1) images, on which statistics
    recalibrated on the digits give logits in the hundreds: fp32 rounding alone then exceeds 1e-4 absolute)."""
    models, info = {}, {}
    for name, cfg in configs.items():
        calib = Calibration("recalibrate", embedded_images(calib_images, cfg.resolution, split="train"),
                            batch_size=32)
        started = time.perf_counter()
        recalibrated = materialize(supernet, cfg, calib=calib)
        seconds = time.perf_counter() - started
        x = torch.from_numpy(embedded_images(8, cfg.resolution))
        with torch.no_grad():
            ref, out = supernet.fixed(cfg, calib)(x), recalibrated(x)
        models[name] = materialize(supernet, cfg)
        flops = count_flops(models[name])
        info[name] = {"config": cfg.to_official(), "mmacs": macs(supernet.space, cfg) / 1e6,
                      "fvcore_mmacs": flops.macs / 1e6, "params": flops.params,
                      "recalibrate_and_materialize_seconds": seconds, "calib_images": calib_images,
                      "recalibrated_max_abs": (out - ref).abs().max().item(), "logit_max_abs": ref.abs().max().item()}
        print(f"{name}: {info[name]['mmacs']:.1f} MMACs at {cfg.resolution} px, dense vs supernet (recalibrated) "
              f"{info[name]['recalibrated_max_abs']:.2g}", flush=True)
    return models, info


def exactness(supernet: NASViTSupernet, n_random: int) -> dict[str, Any]:
    """Dense vs supernet (stored statistics) on the official space: min and max at each resolution, and random
    configs."""
    space, rng, rows = supernet.space, random.Random(1), []
    configs = [replace(space.sample(None, k), resolution=r) for r in space.resolution for k in ("min", "max")]
    configs += [space.sample(rng) for _ in range(n_random)]
    for cfg in configs:
        x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(len(rows)))
        with torch.no_grad():
            ref, out = supernet.fixed(cfg)(x), materialize(supernet, cfg)(x)
        rows.append({"resolution": cfg.resolution, "mmacs": macs(space, cfg) / 1e6,
                     "max_abs": (out - ref).abs().max().item(), "logit_max_abs": ref.abs().max().item()})
    return {"configs": len(rows), "worst_max_abs": max(r["max_abs"] for r in rows), "rows": rows}


def parity(model: torch.nn.Module, work: Path, threads: int) -> list[dict[str, Any]]:
    from deploy_nas.export.pipeline import RunPlan, run

    plan = RunPlan(targets=(("onnxruntime", "fp32"), ("openvino", "fp32")), batches=(1,), threads=threads, runs=50,
                   cross_check_module=False)
    run(model, work / "a0-deploy", plan, force=True)
    out = json.loads((work / "a0-deploy" / "report.json").read_text())
    return [{"backend": p["backend"], "passed": p["passed"], "max_abs": max(o["max_abs"] for o in p["outputs"]),
             "top1_agreement": min(o["top1"] for o in p["outputs"])} for p in out["parity"]]


def latency(models: dict[str, torch.nn.Module], work: Path, threads: int, rounds: int, seconds: float
            ) -> dict[str, Any]:
    engines, nodes = {}, {}
    for name, model in models.items():
        onnx = export_onnx(model, work / name / "model.onnx")
        config = BuildConfig(threads=threads, out_dir=work / name)
        engines[name] = {"openvino": get_backend("openvino").build(onnx.path, config),
                         "onnxruntime": get_backend("onnxruntime").build(onnx.path, config),
                         "torch": TorchEngine(model, threads=threads)}
        nodes[name] = onnx.nodes_after
    rows, names = [], list(models)
    for rnd in range(rounds):
        for name in names if rnd % 2 == 0 else names[::-1]:
            for backend in BACKENDS if rnd % 2 == 0 else BACKENDS[::-1]:
                engine = engines[name][backend]
                runs, _ = runs_for_seconds(engine, seconds, 50, 10, 5000)
                r = measure_fps(engine, batch=1, mode="latency", runs=runs, warmup=5)[0]
                rows.append({"model": name, "backend": backend, "round": rnd, "p50_ms": r.p50_ms, "runs": r.runs})
                print(f"round {rnd + 1}: {name:9s} {backend:12s} {r.p50_ms:8.2f} ms ({r.runs} runs)", flush=True)
    medians = {f"{n}|{b}": statistics.median(r["p50_ms"] for r in rows if r["model"] == n and r["backend"] == b)
               for n in names for b in BACKENDS}
    return {"rows": rows, "medians": medians, "onnx_nodes": nodes}


# ---------------------------------------------------------------------------------------- gradient conflict


def layer_of(name: str) -> str:
    """The layer a parameter belongs to: first_conv, blocks.N (MBConv or transformer), last_conv, classifier."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "blocks" else parts[0]


def layer_order(name: str) -> tuple[int, int]:
    """first_conv, blocks.0, blocks.1, ..., last_conv, classifier."""
    if name.startswith("blocks."):
        return 1, int(name.split(".")[1])
    return {"first_conv": (0, 0), "last_conv": (2, 0)}.get(name, (3, 0))


def layer_label(name: str) -> str:
    """blocks.N with its stage and kind in the tiny space."""
    if not name.startswith("blocks."):
        return name
    slot = slots_of(SPACES.get("nasvit-tiny"))[int(name.split(".")[1])]
    return f"{name} (mb{slot.stage + 1} {'transformer' if slot.transformer else 'MBConv'})"


def _gradients(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def step_gradients(trainer: Any, x: torch.Tensor, y: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """g_s (max subnet) and g_sub (the others) of the step `trainer` is about to take, with its configs, its
    augmentation and its losses; the supernet's weights, statistics and gradients are left as they were."""
    model, c = trainer.model, trainer.config
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    model.train()
    model.zero_grad(set_to_none=True)
    configs = trainer.configs_for_step(trainer.step_count)
    x = trainer.augment(x)
    logits = model(x, configs[0])
    F.cross_entropy(logits, y, label_smoothing=c.label_smoothing).backward()
    g_s = _gradients(model)
    model.zero_grad(set_to_none=True)
    teacher = logits.detach().softmax(-1)
    for cfg in configs[1:]:
        out = model(x, cfg)
        loss = F.cross_entropy(out, y, label_smoothing=c.label_smoothing)
        if c.distill:
            kl = F.kl_div(out.log_softmax(-1), teacher, reduction="batchmean")
            loss = (1 - c.distill_weight) * loss + c.distill_weight * kl
        loss.backward()
    g_sub = _gradients(model)
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for k, v in model.named_buffers():
            v.copy_(buffers[k])
    return g_s, g_sub


def cosine(a: torch.Tensor, b: torch.Tensor) -> float | None:
    na, nb = a.norm(), b.norm()
    return None if na == 0 or nb == 0 else float((a * b).sum() / (na * nb))


def conflict_run(projection: bool, steps: int, batch: int, seed: int) -> dict[str, Any]:
    family, space = FAMILIES.get("nasvit"), SPACES.get("nasvit-tiny")
    supernet = family.build_supernet(space, seed)
    config = train_config(family, {"batch_size": batch, "epochs": 1, "grad_projection": projection, "seed": seed})
    trainer = TRAIN_RULES.get(family.train_rule)(supernet, space, config)
    data = embedded_splits(space.img_size, space.in_chans)["train"]
    names = [n for n, _ in supernet.named_parameters()]
    order = np.random.default_rng(seed).permutation(len(data.images))
    per_layer: dict[str, dict[str, int]] = {}
    losses = []
    for step in range(steps):
        idx = order[(step * batch) % (len(order) - batch):][:batch]
        x, y = torch.from_numpy(data.images[idx]), torch.from_numpy(data.labels[idx])
        g_s, g_sub = step_gradients(trainer, x, y)
        for name, gs, gsub in zip(names, g_s, g_sub):
            c_raw = cosine(gs, gsub)
            if c_raw is None:
                continue
            update = project(gsub, gs) if projection else gsub + gs
            c_upd = cosine(update, gsub)
            row = per_layer.setdefault(layer_of(name), {"pairs": 0, "negative": 0, "update_negative": 0})
            row["pairs"] += 1
            row["negative"] += c_raw < 0
            row["update_negative"] += c_upd is not None and c_upd < 0
        r = trainer.train_step(x, y, total_steps=steps, steps_per_epoch=steps)
        losses.append((r["loss_max"], r["loss_sub"]))
    total = {k: sum(r[k] for r in per_layer.values()) for k in ("pairs", "negative", "update_negative")}
    return {"projection": projection, "steps": steps, "batch": batch, "layers": per_layer, "total": total,
            "loss_first": losses[0], "loss_last": losses[-1]}


# ------------------------------------------------------------------------------------------------ report


def markdown(result: dict[str, Any]) -> str:
    m, lat, info = result["machine"], result["latency"], result["subnets"]
    lines = [f"Machine: {m['cpu']} ({', '.join(m['isa'])}), {m['cores_usable']} usable cores; "
             f"torch {m['versions']['torch']}, onnxruntime {m['versions']['onnxruntime']}, "
             f"openvino {m['versions']['openvino']}. {result['threads']} threads, {result['rounds']} alternated "
             "rounds, medians of the batch-1 p50 latency; random weights in the official layout, BN folded.", "",
             "| subnet | resolution | MMACs | params | OpenVINO fp32 FPS | onnxruntime FPS | torch eager FPS | "
             "OpenVINO ms |", "|---|---|---|---|---|---|---|---|"]
    for name, row in info.items():
        med = {b: lat["medians"][f"{name}|{b}"] for b in BACKENDS}
        lines.append(f"| {name} | {row['config']['resolution']} | {row['mmacs']:.1f} | {row['params'] / 1e6:.2f}M | "
                     f"**{1000 / med['openvino']:.0f}** | {1000 / med['onnxruntime']:.0f} | "
                     f"{1000 / med['torch']:.0f} | {med['openvino']:.2f} |")
    ex = result["exactness"]
    lines += ["", f"Dense vs supernet on the official space ({ex['configs']} configs: min and max at each resolution "
              f"and random ones; stored statistics): worst max abs {ex['worst_max_abs']:.2g}. With recalibrated "
              "statistics: " + ", ".join(f"{n} {r['recalibrated_max_abs']:.2g}" for n, r in info.items())
              + ". A0-class parity: " + ", ".join(f"{p['backend']} {p['max_abs']:.2g}" for p in result["parity"])
              + ".", "", "Gradient conflict, tiny space (share of (step, parameter tensor) pairs with negative "
              "cosine; `raw`: cos(g_s, g_sub); `update`: cos(update, g_sub)):", "",
              "| layer | raw, no projection | raw, projection | update, no projection | update, projection |",
              "|---|---|---|---|---|"]
    runs = {r["projection"]: r for r in result["conflict"]}
    share = lambda r, k: f"{r[k] / r['pairs']:.0%}" if r["pairs"] else "-"  # noqa: E731
    for layer in sorted(runs[False]["layers"], key=layer_order) + ["all"]:
        off = runs[False]["total"] if layer == "all" else runs[False]["layers"][layer]
        on = runs[True]["total"] if layer == "all" else runs[True]["layers"].get(layer, {"pairs": 0})
        lines.append(f"| {layer_label(layer)} | {share(off, 'negative')} | {share(on, 'negative')} | "
                     f"{share(off, 'update_negative')} | {share(on, 'update_negative')} |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    names = list(result["subnets"])
    for i, backend in enumerate(BACKENDS):
        fps = [1000 / result["latency"]["medians"][f"{n}|{backend}"] for n in names]
        left.bar([j + 0.27 * i for j in range(len(names))], fps, width=0.27, label=backend)
    left.axhline(100, color="grey", ls="--", lw=1)
    left.set_xticks([j + 0.27 for j in range(len(names))], names)
    left.set_ylabel("batch-1 FPS (median)")
    left.set_title("NASViT subnets, fp32")
    left.legend()
    runs = {r["projection"]: r for r in result["conflict"]}
    layers = sorted(runs[False]["layers"], key=layer_order)
    for i, projection in enumerate((False, True)):
        rows = runs[projection]["layers"]
        right.bar([j + 0.4 * i for j in range(len(layers))],
                  [rows[n]["negative"] / max(1, rows[n]["pairs"]) for n in layers], width=0.4,
                  label=f"cos(g_s, g_sub) < 0, projection {'on' if projection else 'off'}")
    right.set_xticks(range(len(layers)), layers, rotation=70, fontsize=7)
    right.set_ylabel("share of negative cosine")
    right.set_title("gradient conflict per layer, tiny space")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--work", type=Path, default=Path("out/bench-nasvit"))
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0, help="each measurement spans this long")
    ap.add_argument("--calib-images", type=int, default=64)
    ap.add_argument("--random-configs", type=int, default=4, help="random configs of the exactness check")
    ap.add_argument("--steps", type=int, default=60, help="training steps of each gradient-conflict run")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--parts", default="exactness,parity,latency,conflict", help="comma-separated parts to run")
    ap.add_argument("--merge", action="store_true", help="update the parts run in an existing nasvit.json")
    ap.add_argument("--render", action="store_true", help="only rewrite nasvit.md and nasvit.png from nasvit.json")
    args = ap.parse_args()
    if args.render:
        result = json.loads((args.out / "nasvit.json").read_text())
        (args.out / "nasvit.md").write_text(markdown(result))
        plot(result, args.out / "nasvit.png")
        print(markdown(result))
        return
    torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    path = args.out / "nasvit.json"
    result: dict[str, Any] = json.loads(path.read_text()) if args.merge and path.is_file() else {}
    result.update({"machine": machine(), "threads": args.threads, "rounds": args.rounds})
    if parts & {"exactness", "parity", "latency"}:
        supernet = official_supernet()
        models, result["subnets"] = dense_models(supernet, subnets(supernet.space), args.calib_images)
    if "exactness" in parts:
        result["exactness"] = exactness(supernet, args.random_configs)
        print(f"exactness: worst {result['exactness']['worst_max_abs']:.3g}", flush=True)
    if "parity" in parts:
        result["parity"] = parity(models["A0-class"], args.work, args.threads)
        print(f"parity: {result['parity']}", flush=True)
    if "latency" in parts:
        result["latency"] = latency(models, args.work, args.threads, args.rounds, args.seconds)
    if "conflict" in parts:
        result["conflict"] = [conflict_run(p, args.steps, args.batch, seed=0) for p in (False, True)]
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=float))
    if {"latency", "conflict", "exactness", "parity", "subnets"} <= set(result):
        (args.out / "nasvit.md").write_text(markdown(result))
        plot(result, args.out / "nasvit.png")
        print(markdown(result))

if __name__ == "__main__":
    main()
