"""PSViT against DeiT-tiny: what token pooling and attention sharing buy in latency, and what a searched PSViT
subnet buys in accuracy over a plain subnet of the same FLOPs, side by side in one run.

Latency (224 px, random weights: speed does not depend on the values): timm's DeiT-tiny; for each pooling form
(psvit-1d, psvit-2d) the PSViT subnet nearest DeiT-tiny's MACs among those with one cell pattern repeated in every
stage (s shared cells, then l plain ones, the rest identity, s >= 1) at the space's widths; and the same subnet
with every consumer turned into a plain layer (its own q/k: "no sharing", same pooling). Every model is exported by
the same exporter (TorchScript, opset 17, onnxsim) and measured on OpenVINO fp32 (and the other --backends) at
batch 1, latency mode, in alternated rounds (the order flips each round, each measurement sized to --seconds of
runs); the tables give the medians over the rounds.

Accuracy (the embedded task, a tiny space, trained briefly): a SPOS supernet of --acc-space trained --epochs;
evolution (AutoFormer's operators, val top-1 with inherited weights) over the subnets with 0.85 to 1 times the MACs
of the baseline, a plain subnet with no pooling and no sharing (the same stem and head, --acc-space's cells all plain
layers at one width, the token count kept: pointwise maps of stride 1 between the stages); then the searched
subnet and the baseline retrained from scratch with the same recipe (SPOS over a space of one path), and their
test top-1.

    python benchmarks/psvit_bench.py --out benchmarks/results [--rounds 5] [--epochs 30]
    python benchmarks/psvit_bench.py --quick --out /tmp/psvit-bench   # every step at smoke-test size
    # the two parts apart (training is no timing; the latency part runs under the benchmark lock):
    python benchmarks/psvit_bench.py --accuracy-only /tmp/psvit-acc.json --epochs 40
    flock /tmp/bench.lock python benchmarks/psvit_bench.py --accuracy-from /tmp/psvit-acc.json --out benchmarks/results

Writes psvit.json (every measurement), psvit.md and psvit.png into --out.
"""
from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from relpos_vs_deit import Timm  # noqa: E402
from run_benchmarks import machine  # noqa: E402

from deploy_nas.dense import build_dense  # noqa: E402
from deploy_nas.evaluate import top1  # noqa: E402
from deploy_nas.export.backends import BuildConfig, default_threads, get_backend  # noqa: E402
from deploy_nas.export.fps import measure_fps, runs_for_seconds  # noqa: E402
from deploy_nas.export.onnx import export_onnx  # noqa: E402
from deploy_nas.family import FAMILIES  # noqa: E402
from deploy_nas.flops import count_flops  # noqa: E402
from deploy_nas.io import write_json_atomic, write_text_atomic  # noqa: E402
from deploy_nas.search.evolution import Evolution, EvolutionConfig  # noqa: E402
from deploy_nas.spaces import SPACES  # noqa: E402
from deploy_nas.spaces.psvit import IDENTITY, LAYER, SHARED, PSViTConfig, PSViTSpace, pool_stride  # noqa: E402
from deploy_nas.supernets.psvit import PSViTArch, dense_spec  # noqa: E402
from deploy_nas.train import train_config  # noqa: E402
from deploy_nas.train.spos import SposTrainer  # noqa: E402

DEIT = "deit_tiny_patch16_224"
SAME_FLOPS = 0.85  # the searched subnet has between this fraction of the baseline's MACs and all of them
FAMILY = FAMILIES.get("psvit")


# ------------------------------------------------------------------------------------------------ latency


def strides(space: PSViTSpace, cfg: PSViTConfig) -> list[int]:
    return [1] + [pool_stride(space.pooling, a, b) for a, b in zip(cfg.tokens, cfg.tokens[1:])]


def psvit_macs(space: PSViTSpace, cfg: PSViTConfig) -> int:
    from deploy_nas.dense.psvit import macs

    return macs(dense_spec(PSViTArch.from_space(space), cfg, strides(space, cfg)))


def at_macs(space: PSViTSpace, target: float) -> PSViTConfig:
    """The config nearest `target` MACs with one cell pattern in every stage (s >= 1 shared cells, then l plain
    ones, the rest identity), over the widths of the space (ties: more shared cells)."""
    candidates = []
    for widths in _products(space.widths):
        for s in range(1, min(space.cells) + 1):
            for n in range(min(space.cells) - s + 1):
                cells = tuple((SHARED,) * s + (LAYER,) * n + (IDENTITY,) * (c - s - n) for c in space.cells)
                cfg = PSViTConfig(widths, tuple(max(t) for t in space.tokens), cells)
                candidates.append((abs(psvit_macs(space, cfg) / target - 1), -s, cfg.id, cfg))
    return min(candidates)[-1]


def _products(choices: tuple[tuple[int, ...], ...]) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = [()]
    for stage in choices:
        out = [w + (c,) for w in out for c in stage]
    return [w for w in out if all(a < b for a, b in zip(w, w[1:]))]


def psvit_dense(space: PSViTSpace, cfg: PSViTConfig, unshared: bool = False) -> torch.nn.Module:
    """The dense model of `cfg` with random weights; `unshared`: every consumer a plain layer with its own q/k."""
    spec = dense_spec(PSViTArch.from_space(space), cfg, strides(space, cfg))
    if unshared:
        stages = tuple(dataclasses.replace(s, layers=tuple(dataclasses.replace(layer, attn_from=None)
                                                           for layer in s.layers)) for s in spec.body.stages)
        spec = dataclasses.replace(spec, body=dataclasses.replace(spec.body, stages=stages))
    torch.manual_seed(0)
    return build_dense(spec)


def latency_models(spaces: list[str], deit_macs: int) -> tuple[dict[str, torch.nn.Module], dict[str, Any]]:
    models: dict[str, torch.nn.Module] = {DEIT: Timm(DEIT)}
    chosen = {}
    for name in spaces:
        space = SPACES.get(name)
        cfg = at_macs(space, deit_macs)
        chosen[name] = {"config": cfg.to_dict(), "layers": cfg.layer_string(), "id": cfg.id}
        models[f"{name} shared"] = psvit_dense(space, cfg)
        models[f"{name} plain layers"] = psvit_dense(space, cfg, unshared=True)
    return models, chosen


def build(models: dict[str, torch.nn.Module], work: Path, backends: list[str], threads: int) -> dict[str, Any]:
    import onnx

    built = {}
    for name, model in models.items():
        d = work / name.replace(" ", "_")
        result = export_onnx(model, d / "model.onnx")
        ops = [n.op_type for n in onnx.load(str(result.path)).graph.node]
        flops = count_flops(model.model if isinstance(model, Timm) else model, torch.zeros(1, 3, 224, 224))
        built[name] = {"engines": {b: get_backend(b).build(result.path, BuildConfig(threads=threads, out_dir=d))
                                   for b in backends},
                       "gmacs": flops.gmacs, "params": flops.params, "nodes": len(ops),
                       "softmax": ops.count("Softmax")}
        print(f"built {name}: {flops.gmacs:.3f} GMAC, {ops.count('Softmax')} Softmax", flush=True)
    return built


def measure(built: dict[str, Any], backends: list[str], rounds: int, seconds: float) -> list[dict[str, Any]]:
    rows, names = [], list(built)
    for rnd in range(rounds):
        for name in names if rnd % 2 == 0 else names[::-1]:
            for backend in backends:
                engine = built[name]["engines"][backend]
                runs, _ = runs_for_seconds(engine, seconds, 50, 10, 5000)
                r = measure_fps(engine, batch=1, mode="latency", runs=runs, warmup=5)[0]
                rows.append({"model": name, "backend": backend, "round": rnd, "p50_ms": r.p50_ms, "runs": r.runs,
                             "cv": r.cv})
                print(f"round {rnd + 1}: {name:28s} {backend:12s} {r.p50_ms:8.2f} ms", flush=True)
    return rows


# ----------------------------------------------------------------------------------------------- accuracy


@dataclasses.dataclass(frozen=True)
class OnePath:
    """A space of one config: SPOS over it trains that subnet alone, with the supernet's recipe."""

    space: PSViTSpace
    cfg: PSViTConfig

    def sample(self, rng: Any = None, kind: str = "random") -> PSViTConfig:
        return self.cfg

    def __getattr__(self, name: str) -> Any:
        return getattr(self.space, name)


def plain_baseline(space: PSViTSpace, width: int) -> tuple[PSViTSpace, PSViTConfig]:
    """No pooling and no sharing: every stage at `width` and the patch count (1D pooling of stride 1 is a pointwise
    map), every cell a plain layer."""
    plain = PSViTSpace(f"{space.name}-plain", "1d", ((width,),) * space.num_stages,
                       ((space.num_patches,),) * space.num_stages, space.cells, (LAYER, IDENTITY), space.head_dim,
                       space.mlp_ratio, space.img_size, space.patch_size, space.in_chans, space.num_classes,
                       increasing=False)
    return plain, PSViTConfig((width,) * plain.num_stages, tuple(t[0] for t in plain.tokens),
                              tuple((LAYER,) * n for n in plain.cells))


def train_path(space: Any, cfg: PSViTConfig | None, data: dict[str, Any], settings: dict[str, Any],
               seed: int) -> Any:
    """A supernet of `space` trained with SPOS (over one path when `cfg` is given)."""
    supernet = FAMILY.build_supernet(space, seed)
    target = OnePath(space, cfg) if cfg is not None else space
    SposTrainer(supernet, target, train_config(FAMILY, {**settings, "seed": seed})).fit(data["train"])
    return supernet.eval()


def accuracy(args: argparse.Namespace) -> dict[str, Any]:
    from deploy_nas.data import embedded_splits

    space = SPACES.get(args.acc_space)
    data = embedded_splits(space.img_size, space.in_chans)
    settings = {"epochs": args.epochs, "batch_size": args.batch_size, "max_steps": args.max_steps,
                "warmup_epochs": min(2.0, args.epochs / 5)}
    plain, base_cfg = plain_baseline(space, args.baseline_width)
    plain_sn = FAMILY.build_supernet(plain, 0)
    target = plain_sn.macs(base_cfg)
    t0 = time.perf_counter()
    supernet = train_path(space, None, data, settings, args.seed)
    print(f"supernet trained ({time.perf_counter() - t0:.0f} s); searching under {target / 1e6:.2f} MMAC", flush=True)
    same_flops = lambda c: SAME_FLOPS * target <= supernet.macs(c) <= target  # noqa: E731
    evo = Evolution(space, lambda c: top1(supernet.fixed(c), data["val"]), same_flops,
                    EvolutionConfig.for_population(args.population, args.generations, args.seed))
    for _ in range(args.generations):
        row = evo.step()
        print(f"generation {row['generation']}: best val top-1 {row['best'][0]['fitness']:.4f}", flush=True)
    best, best_val = evo.top(1)[0]
    rows = {"searched": {"config": best.to_dict(), "layers": best.layer_string(), "macs": supernet.macs(best),
                         "params": supernet.param_count(best), "val_top1_inherited": best_val,
                         "test_top1_inherited": top1(supernet.fixed(best), data["test"])},
            "plain": {"config": base_cfg.to_dict(), "layers": base_cfg.layer_string(), "macs": target,
                      "params": plain_sn.param_count(base_cfg)}}
    for name, sp, cfg in (("searched", space, best), ("plain", plain, base_cfg)):
        model = train_path(sp, cfg, data, settings, args.seed + 1)
        rows[name]["test_top1_retrained"] = top1(model.fixed(cfg), data["test"])
        print(f"{name} retrained: test top-1 {rows[name]['test_top1_retrained']:.4f}", flush=True)
    return {"space": space.name, "settings": settings, "threads": torch.get_num_threads(),
            "evolution": dataclasses.asdict(evo.config),
            "evaluated": len(evo.scores), "data": {k: len(v) for k, v in data.items()}, "subnets": rows}


# ------------------------------------------------------------------------------------------------- report


def medians(rows: list[dict[str, Any]]) -> dict[str, float]:
    groups: dict[str, list[float]] = {}
    for r in rows:
        groups.setdefault(f"{r['model']}|{r['backend']}", []).append(r["p50_ms"])
    return {k: statistics.median(v) for k, v in groups.items()}


def markdown(result: dict[str, Any]) -> str:
    info, lat = result["machine"], result["latency"]
    med = lat["medians"]
    lines = [f"Machine: {info['cpu']} ({', '.join(info['isa'])}), {info['cores_usable']} usable cores, "
             f"{result['threads']} threads; torch {info['versions']['torch']}, openvino "
             f"{info['versions'].get('openvino')}, timm {result['timm']}. Batch 1, latency mode, medians over "
             f"{lat['rounds']} alternated rounds (each measurement sized to {lat['seconds']} s of runs).", ""]
    for backend in lat["backends"]:
        deit = med[f"{DEIT}|{backend}"]
        lines += [f"### Latency, {backend} fp32", "",
                  "| model | cells (A own map, AR shared pair, - identity, / next stage) | GMAC | params (M) | Softmax "
                  "| p50 ms | vs DeiT-tiny |", "|---|---|---|---|---|---|---|"]
        for name, m in lat["models"].items():
            layers = lat["chosen"].get(name.split(" ")[0], {}).get("layers", "12 plain layers, no pooling")
            if name.endswith("plain layers"):
                layers = layers.replace("AR", "AA")
            layers = layers.replace(" | ", " / ")  # "|" would end the Markdown cell
            ms = med[f"{name}|{backend}"]
            lines.append(f"| {name} | {layers} | {m['gmacs']:.3f} | {m['params'] / 1e6:.2f} | {m['softmax']} | "
                         f"{ms:.2f} | {ms / deit:.3f}x |")
        lines.append("")
        for space in lat["chosen"]:
            shared, plain = med[f"{space} shared|{backend}"], med[f"{space} plain layers|{backend}"]
            lines.append(f"- {space}: the subnet with sharing {shared:.2f} ms, with plain layers {plain:.2f} ms "
                         f"(**{shared / plain:.3f}x**); with plain layers "
                         f"({lat['models'][f'{space} plain layers']['gmacs']:.3f} GMAC) against DeiT-tiny "
                         f"({lat['models'][DEIT]['gmacs']:.3f} GMAC), what pooling does at about the same MACs: "
                         f"**{plain / deit:.3f}x**")
        lines.append("")
    acc = result.get("accuracy")
    if acc:
        s = acc["settings"]
        lines += [f"### Accuracy on the embedded task ({acc['space']}, {s['epochs']} epochs, batch {s['batch_size']}"
                  f"{', at most ' + str(s['max_steps']) + ' steps' if s['max_steps'] else ''}; splits "
                  f"{acc['data']})", "",
                  f"Evolution: {acc['evaluated']} subnets evaluated (population {acc['evolution']['population']}, "
                  f"{acc['evolution']['generations']} generations), MACs between {SAME_FLOPS} and 1 times the plain "
                  "baseline's.", "",
                  "| subnet | cells | MMAC | params | test top-1, retrained | test top-1, supernet weights |",
                  "|---|---|---|---|---|---|"]
        for name, r in acc["subnets"].items():
            inherited = f"{r['test_top1_inherited']:.4f}" if "test_top1_inherited" in r else "-"
            lines.append(f"| {name} | {r['layers'].replace(' | ', ' / ')} (widths {r['config']['widths']}, tokens "
                         f"{r['config']['tokens']}) | {r['macs'] / 1e6:.2f} | {r['params']:,} | "
                         f"{r['test_top1_retrained']:.4f} | {inherited} |")
        lines.append("")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deploy_nas.io import atomic_file

    lat, acc = result["latency"], result.get("accuracy")
    fig, axes = plt.subplots(1, 2 if acc else 1, figsize=(12 if acc else 7, 4), squeeze=False)
    names = list(lat["models"])
    backend = lat["backends"][0]
    ax = axes[0][0]
    ax.barh(names, [lat["medians"][f"{n}|{backend}"] for n in names], color="tab:blue")
    ax.set_xlabel(f"batch-1 p50 ms, {backend} fp32")
    ax.invert_yaxis()
    if acc:
        ax = axes[0][1]
        subnets = list(acc["subnets"])
        ax.bar(subnets, [acc["subnets"][n]["test_top1_retrained"] for n in subnets], color=["tab:green", "tab:gray"])
        ax.set_ylabel("test top-1 (retrained)")
        ax.set_title(f"{acc['space']}: searched vs plain, same MACs", fontsize=9)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--work", type=Path, default=Path("out/bench-psvit"))
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--spaces", default="psvit-1d,psvit-2d", help="ImageNet-sized spaces for the latency part")
    ap.add_argument("--backends", default="openvino")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--acc-space", default="psvit-tiny-2d", help="the tiny space of the accuracy part (2d: the one "
                    "`train --family psvit` defaults to; it learns several times faster than 1d on the embedded task)")
    ap.add_argument("--baseline-width", type=int, default=16, help="width of the plain baseline (16: 1.69 MMAC on "
                    "the tiny spaces; about 1 in 6 random subnets of either tiny space lies in 0.85 to 1 times that)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--train-threads", type=int, default=1, help="torch threads while training and evaluating the "
                    "tiny models (one is fastest for them, and on a shared machine by far)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--population", type=int, default=20)
    ap.add_argument("--generations", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--accuracy-only", type=Path, default=None, metavar="JSON",
                    help="run only the accuracy part and write it to JSON")
    ap.add_argument("--accuracy-from", type=Path, default=None, metavar="JSON",
                    help="take the accuracy part from a JSON written by --accuracy-only")
    ap.add_argument("--quick", action="store_true", help="smoke-test sizes: 1 round of 0.2 s, 1 epoch of 3 steps, "
                    "population 4, 1 generation")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.epochs, args.max_steps, args.population, args.generations = 1, 0.2, 1, 3, 4, 1
    return args


def main() -> None:
    import timm

    args = arguments()
    if args.accuracy_only:  # training is no timing: it may run apart from the latency part (which takes a lock)
        random.seed(args.seed)
        torch.set_num_threads(args.train_threads)
        write_json_atomic(args.accuracy_only, {"accuracy": accuracy(args)})
        return
    torch.set_num_threads(args.threads)
    backends = args.backends.split(",")
    deit_macs = count_flops(Timm(DEIT).model, torch.zeros(1, 3, 224, 224)).macs
    models, chosen = latency_models(args.spaces.split(","), deit_macs)
    built = build(models, args.work, backends, args.threads)
    rows = measure(built, backends, args.rounds, args.seconds)
    for b in built.values():
        for engine in b.pop("engines").values():
            engine.close()
    result = {"machine": machine(), "timm": timm.__version__, "threads": args.threads,
              "latency": {"backends": backends, "rounds": args.rounds, "seconds": args.seconds, "chosen": chosen,
                          "models": built, "rows": rows, "medians": medians(rows)}}
    if args.accuracy_from:
        import json

        result["accuracy"] = json.loads(args.accuracy_from.read_text())["accuracy"]
    elif not args.skip_accuracy:
        random.seed(args.seed)
        torch.set_num_threads(args.train_threads)
        result["accuracy"] = accuracy(args)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "psvit.json", result)
    write_text_atomic(args.out / "psvit.md", markdown(result))
    plot(result, args.out / "psvit.png")
    print((args.out / "psvit.md").read_text())


if __name__ == "__main__":
    main()
