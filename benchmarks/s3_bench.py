"""S3 benchmarks, three parts, one run:

1. parity: S3-T at 224 (random weights in the official SSSTransformer layout, through the importer: index and mask
   buffers checked, then rebuilt) -> dense `swin` model -> ONNX -> onnxruntime and OpenVINO fp32, parity on the
   pipeline's fixed batch (`deploy_nas.export.pipeline.run`, report in WORK/s3t-deploy).
2. latency: S3-T next to AutoFormer-S (similar FLOPs: 4.6 vs 5.1 GMAC in the papers' counts; the autoformer-s preset,
   random weights), OpenVINO fp32 at batch 1 (p50), alternated rounds (the order flips each round, each measurement
   sized to --seconds of runs), plus torch eager for reference.
3. evolution: a supernet trained on `s3-tiny` (the embedded digits, sandwich rule), then `evolve_space` from a
   deliberately poor sub-space (the smallest widths, MLP ratios, Q-K-V widths and windows), --steps steps: the E-T
   error per step.

    python benchmarks/s3_bench.py --out benchmarks/results [--rounds 5] [--seconds 2] [--train-epochs 60] [--steps 3]
    python benchmarks/s3_bench.py --quick          # tiny settings: checks that every part runs (minutes)

Writes s3.json (every measurement), s3.md and s3.png (latency and E-T error per step) into --out.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run_benchmarks import machine, write_results  # noqa: E402

from deploy_nas.dense import build_dense  # noqa: E402
from deploy_nas.export.backends import BuildConfig, default_threads, get_backend  # noqa: E402
from deploy_nas.export.backends.torch_backend import TorchEngine  # noqa: E402
from deploy_nas.export.fps import measure_fps, runs_for_seconds  # noqa: E402
from deploy_nas.export.onnx import export_onnx  # noqa: E402
from deploy_nas.family import FAMILIES  # noqa: E402
from deploy_nas.flops import count_flops  # noqa: E402
from deploy_nas.materialize import materialize  # noqa: E402
from deploy_nas.search.space_evolution import EvolveSpaceRequest  # noqa: E402
from deploy_nas.spaces import PRESETS, SPACES  # noqa: E402
from deploy_nas.spaces.s3 import S3Space, S3StageChoices  # noqa: E402
from deploy_nas.supernets.s3 import (  # noqa: E402
    S3Arch,
    S3ImportOptions,
    S3Supernet,
    dense_shapes,
    official_state_dict,
)

S3 = FAMILIES.get("s3")


def s3t(seed: int = 0) -> torch.nn.Module:
    """S3-T through the official importer: weights ~ N(0, 1/fan_in) (norms 1 + N(0, .1)) in the SSSTransformer
    layout, with the buffers the official model holds."""
    cfg = PRESETS.get("s3-t").config
    with torch.device("meta"):  # sizes only
        spec = S3Supernet(S3Arch.from_space(SPACES.get("S3-T"))).dense_spec(cfg)
        skeleton = build_dense(spec)
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in dense_shapes(spec).items():
        noise = torch.randn(shape, generator=g)
        fan_in = max(1, noise[0].numel()) if len(shape) > 1 else 1
        scaled = noise / fan_in ** 0.5
        sd[key] = (1 + 0.1 * noise if key.endswith("weight") else 0.1 * noise) if len(shape) == 1 else scaled
    sd.update({k: v for k, v in official_state_dict(skeleton).items() if k.endswith(("index", "attn_mask"))})
    supernet, _ = S3.from_checkpoint({"model": sd}, S3ImportOptions())
    return materialize(supernet, cfg)


def autoformer_s(seed: int = 0) -> torch.nn.Module:
    fam = FAMILIES.get("autoformer")
    preset = PRESETS.get("autoformer-s")
    return materialize(fam.build_supernet(SPACES.get(preset.space), seed), preset.config)


# ------------------------------------------------------------------------------------------------------ parts


def parity_part(model: torch.nn.Module, work: Path, threads: int) -> dict[str, Any]:
    """ONNX -> onnxruntime and OpenVINO fp32 against torch on the fixed parity batch (2 real images resized to 224,
    6 seeded N(0, 1) inputs), gated by the backends' tolerances. No timing: it may run outside the benchmark lock."""
    from deploy_nas.data import embedded_images
    from deploy_nas.export.parity import check_parity, parity_inputs

    started = time.perf_counter()
    onnx = export_onnx(model, work / "s3t-parity" / "model.onnx")
    inputs = parity_inputs(model.spec, embedded_images(2, model.spec.img_size), n_random=6)
    reference = TorchEngine(model, threads=threads)
    rows = []
    for backend in ("onnxruntime", "openvino"):
        engine = get_backend(backend).build(onnx.path, BuildConfig(threads=threads, out_dir=work / "s3t-parity"))
        r = check_parity(reference, engine, inputs, family="s3")
        rows += [{"backend": backend, "precision": "fp32", "passed": r.passed, "max_abs": o.max_abs,
                  "cosine": o.cosine_min, "top1_agreement": o.top1, "reference_max_abs": o.reference_max_abs,
                  "samples": r.samples, "failures": list(r.failures)} for o in r.outputs]
        print(f"parity {backend}: max abs {rows[-1]['max_abs']:.3g}, top-1 {rows[-1]['top1_agreement']:.3f}",
              flush=True)
    return {"seconds": time.perf_counter() - started, "passed": all(r["passed"] for r in rows), "parity": rows,
            "onnx": {"nodes": onnx.nodes_after, "path": str(onnx.path)}}


def latency_part(models: dict[str, torch.nn.Module], work: Path, args: argparse.Namespace) -> dict[str, Any]:
    engines, info = {}, {}
    for name, model in models.items():
        onnx = export_onnx(model, work / name / "model.onnx")
        config = BuildConfig(threads=args.threads, out_dir=work / name)
        engines[name] = {"openvino": get_backend("openvino").build(onnx.path, config)}
        if args.torch:
            engines[name]["torch"] = TorchEngine(model, threads=args.threads)
        flops = count_flops(model)
        info[name] = {"gmacs": flops.gmacs, "params": flops.params, "onnx_nodes": onnx.nodes_after}
    rows = []
    names = list(models)
    for rnd in range(args.rounds):
        for name in names if rnd % 2 == 0 else names[::-1]:
            for backend, engine in engines[name].items():
                runs, _ = runs_for_seconds(engine, args.seconds, args.min_runs, 10, 5000)
                r = measure_fps(engine, batch=1, mode="latency", runs=runs, warmup=5)[0]
                rows.append({"model": name, "backend": backend, "round": rnd, "p50_ms": r.p50_ms, "runs": r.runs})
                print(f"round {rnd + 1}: {name:14s} {backend:9s} {r.p50_ms:8.2f} ms ({r.runs} runs)", flush=True)
    medians = {f"{n}|{b}": statistics.median(r["p50_ms"] for r in rows if r["model"] == n and r["backend"] == b)
               for n in names for b in engines[n]}
    return {"models": info, "rows": rows, "medians": medians}


def poor_space(trained: S3Space) -> S3Space:
    """Deliberately poor choices inside the trained supernet: narrow stages, MLP ratios 1-1.5, small Q-K-V widths
    and windows, shallow stage 3. Twelve dimensions have two choices and can move."""
    stages = (S3StageChoices((1,), (16,), (1.0, 1.5), (1,), (8, 16), (2, 4)),
              S3StageChoices((1,), (24, 32), (1.0, 1.5), (1,), (16, 24), (2,)),
              S3StageChoices((1, 2), (32, 40), (1.0, 1.5), (2,), (16, 24), (2,)),
              S3StageChoices((1,), (48, 56), (1.0, 1.5), (2,), (32,), (1,)))
    return S3Space("s3-tiny-poor", stages, trained.img_size, trained.patch_size, trained.in_chans,
                   trained.num_classes, super_stages=trained.supers())


def plain_digits_folder(root: Path, img_size: int) -> Path:
    """scikit-learn's plain digits (`deploy_nas.data.digits_splits`, 60/20/20) written as PNG class folders
    ROOT/{train,val,test}/{label}/, for `--data`: an easier task than the cluttered digits, on which a supernet
    trained for a few minutes already ranks its subnets by capacity."""
    import numpy as np
    from PIL import Image

    from deploy_nas.data import IMAGENET_MEAN, IMAGENET_STD, digits_splits

    if (root / "test").is_dir():
        return root
    for name, split in digits_splits(img_size).items():
        rgb = (split.images.transpose(0, 2, 3, 1) * IMAGENET_STD + IMAGENET_MEAN).clip(0, 1)
        for i, (image, label) in enumerate(zip((rgb * 255).round().astype(np.uint8), split.labels)):
            folder = root / name / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:04d}.png")
    return root


def evolution_part(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from deploy_nas.search.space_evolution import evolve_space
    from deploy_nas.supernets import load_supernet_dir
    from deploy_nas.train import TrainConfig, train_supernet
    from deploy_nas.workflows import train_data

    space = SPACES.get("s3-tiny")
    data_dir = plain_digits_folder(work / "digits", space.img_size) if args.data == "digits" else None
    started = time.perf_counter()
    data = train_data(space, data_dir)
    if args.reuse_supernet and (work / "sn").is_dir():  # trained by an earlier run with the same --work
        from deploy_nas.evaluate import top1

        supernet, _ = load_supernet_dir(work / "sn")
        trained = {"test_top1": {m: top1(supernet.fixed(space.sample(None, m)), data["test"]) for m in ("max", "min")}}
    else:
        trained = train_supernet(S3, space, work / "sn", TrainConfig(epochs=args.train_epochs, shift=1, seed=0,
                                                                       save_state=False), data=data, log=print)
        supernet, _ = load_supernet_dir(work / "sn")
    train_seconds = time.perf_counter() - started
    # the evolution's settings only when it evolves (--steps 0 scores the start space: the request refuses them)
    evolving = dict(per_value=args.per_value, finetune_epochs=args.finetune_epochs, finetune_lr=args.finetune_lr,
                    min_effect=args.min_effect) if args.steps else {}
    request = EvolveSpaceRequest(steps=args.steps, budget_gmac=args.budget_gmac, samples=args.samples,
                                 data_dir=data_dir, seed=0, **evolving)
    started = time.perf_counter()
    record = evolve_space(supernet, poor_space(space), work / "space", request, log=print, force=True,
                          trained=space)
    return {"data": args.data, "train_epochs": args.train_epochs, "train_seconds": train_seconds,
            "supernet_test_top1": trained["test_top1"], "evolve_seconds": time.perf_counter() - started,
            "request": record["request"], "evaluated": record["evaluated"],
            "steps": [{k: r[k] for k in ("step", "et_error", "e_error", "t_error", "scored")} |
                      {"moves": [f"stage {d['stage']} {d['dimension']}: {d['action']}" for d in r.get("dimensions", ())
                                 if d["action"].startswith(("up", "down"))], "space": r["space"]}
                      for r in record["steps"]],
            "final_space": record["final_space"]}


# ----------------------------------------------------------------------------------------------------- report


def markdown(result: dict[str, Any]) -> str:
    info = result["machine"]
    lines = [f"Machine: {info['cpu']} ({', '.join(info['isa'])}), {info['cores_usable']} usable cores; torch "
             f"{info['versions']['torch']}, onnxruntime {info['versions']['onnxruntime']}, openvino "
             f"{info['versions']['openvino']}. The machine was shared with other jobs while this ran (timings under "
             "a lock that keeps benchmarks apart, but tests and training of other jobs ran beside them).", ""]
    if "parity" in result:
        p = result["parity"]
        lines += ["### S3-T at 224: parity (random weights in the official layout, through the importer)", "",
                  "| backend | precision | max abs | min cosine | top-1 agreement | gate |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['backend']} | {r['precision']} | {r['max_abs']:.3g} | {r['cosine']:.7f} | "
                  f"{r['top1_agreement']:.3f} | {'pass' if r['passed'] else 'FAIL'} |" for r in p["parity"]]
        lines += [""]
    if "latency" in result:
        lat = result["latency"]
        lines += [f"### OpenVINO fp32 batch-1 latency, S3-T next to AutoFormer-S ({result['rounds']} alternated "
                  "rounds, medians of the per-round p50)", "",
                  "| model | params | GMAC (fvcore) | OpenVINO p50 ms | torch p50 ms | ms per GMAC (OpenVINO) |",
                  "|---|---|---|---|---|---|"]
        for name, m in lat["models"].items():
            ov, pt = lat["medians"][f"{name}|openvino"], lat["medians"].get(f"{name}|torch")
            lines.append(f"| {name} | {m['params'] / 1e6:.2f}M | {m['gmacs']:.3f} | {ov:.2f} | "
                         f"{'-' if pt is None else f'{pt:.2f}'} | {ov / m['gmacs']:.2f} |")
        names = list(lat["models"])
        if len(names) == 2:
            ratio = lat["medians"][f"{names[0]}|openvino"] / lat["medians"][f"{names[1]}|openvino"]
            lines += ["", f"{names[0]} / {names[1]} on OpenVINO: **{ratio:.3f}x**."]
        lines += [""]
    if "evolution" in result:
        ev = result["evolution"]
        req = ev["request"]
        task = "the plain digits" if ev.get("data") == "digits" else "the embedded cluttered digits"
        lines += [f"### Space evolution on {task} (s3-tiny supernet, {ev['train_epochs']} epochs, "
                  f"test top-1 max {ev['supernet_test_top1']['max']:.3f} / min {ev['supernet_test_top1']['min']:.3f})",
                  "", f"From the poor space, budget {req['budget_gmac']} GMAC, {req['samples']} subnets per score, "
                  f"top tier {req['top_tier']}, {req['per_value']} bases per value, min effect {req['min_effect']}, "
                  f"{req['finetune_epochs']} "
                  f"fine-tuning epoch(s) per step; {ev['evaluated']} subnets evaluated in "
                  f"{ev['evolve_seconds']:.0f} s.", "",
                  "| step | E-T error | E | T | moves after this step |", "|---|---|---|---|---|"]
        for r in ev["steps"]:
            lines.append(f"| {r['step']} | {r['et_error']:.4f} | {r['e_error']:.4f} | {r['t_error']:.4f} | "
                         f"{'; '.join(r['moves']) or '-'} |")
        lines += [""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("latency", "evolution") if k in result]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "latency":
            lat = result["latency"]
            names = list(lat["models"])
            for i, backend in enumerate(b for b in ("openvino", "torch") if f"{names[0]}|{b}" in lat["medians"]):
                ax.bar([j + 0.4 * i for j in range(len(names))], [lat["medians"][f"{n}|{backend}"] for n in names],
                       width=0.38, label=backend)
            ax.set_xticks([j + 0.2 for j in range(len(names))], names)
            ax.set_ylabel("batch-1 p50, ms")
            ax.legend()
        else:
            steps = result["evolution"]["steps"]
            ax.plot([s["step"] for s in steps], [s["et_error"] for s in steps], "o-", color="k", label="E-T")
            ax.plot([s["step"] for s in steps], [s["e_error"] for s in steps], "s--", alpha=.7, label="E")
            ax.plot([s["step"] for s in steps], [s["t_error"] for s in steps], "^--", alpha=.7, label="T")
            ax.set_xlabel("evolution step")
            ax.set_ylabel("top-1 error (inherited weights)")
            ax.set_xticks([s["step"] for s in steps])
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--work", type=Path, default=Path("out/bench-s3"))
    ap.add_argument("--parts", default="parity,latency,evolution")
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0, help="each batch-1 measurement spans this long")
    ap.add_argument("--min-runs", type=int, default=20, help="at least this many runs per measurement")
    ap.add_argument("--torch", action="store_true", help="also time torch eager (slow on a shared machine)")
    ap.add_argument("--train-epochs", type=int, default=60)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--budget-gmac", type=float, default=0.002)
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--per-value", type=int, default=12)
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--finetune-lr", type=float, default=EvolveSpaceRequest.finetune_lr)
    ap.add_argument("--min-effect", type=float, default=0.01)
    ap.add_argument("--reuse-supernet", action="store_true", help="evolution: keep WORK/sn if an earlier run trained "
                    "it (--train-epochs then only labels it)")
    ap.add_argument("--data", choices=("embedded", "digits"), default="embedded",
                    help="evolution data: the embedded cluttered digits, or the plain digits as an image folder")
    ap.add_argument("--merge", action="store_true", help="keep the parts of an existing OUT/s3.json that this run "
                    "does not redo (run the timing parts under the benchmark lock, the evolution apart)")
    ap.add_argument("--quick", action="store_true", help="tiny settings: every part runs, the numbers mean nothing")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.train_epochs, args.steps = 1, 0.3, 1, 1
        args.samples, args.per_value, args.finetune_epochs = 4, 2, 0
    torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    run_args = {"parts": sorted(parts), "args": {k: str(v) for k, v in vars(args).items()}}
    result: dict[str, Any] = {"machine": machine(), "rounds": args.rounds, "runs": [run_args]}
    if parts & {"parity", "latency"}:
        model = s3t()
    if "parity" in parts:
        result["parity"] = parity_part(model, args.work, args.threads)
        save(result, args, parts, run_args)  # each part is kept as soon as it is done
    if "latency" in parts:
        result["latency"] = latency_part({"S3-T": model, "AutoFormer-S": autoformer_s()}, args.work, args)
        save(result, args, parts, run_args)
    if "evolution" in parts:
        result["evolution"] = evolution_part(args.work, args)
    save(result, args, parts, run_args)
    print((args.out / "s3.md").read_text())


def save(result: dict[str, Any], args: argparse.Namespace, parts: set[str], run_args: dict[str, Any]) -> None:
    previous = args.out / "s3.json"
    result = dict(result)
    if args.merge and previous.exists():  # keep the parts this run did not redo, and how they were run
        old = json.loads(previous.read_text())
        kept = {k: old[k] for k in ("parity", "latency", "evolution") if k in old and k not in result}
        result.update(kept)
        if "latency" in kept:
            result["rounds"] = old["rounds"]
        result["runs"] = [r for r in old.get("runs", []) if set(r["parts"]) - parts] + [run_args]
    write_results(args.out, "s3", result, markdown(result), plot)

if __name__ == "__main__":
    main()
