"""CPU benchmark of the AutoFormer presets, every number measured side by side in one run.

For each preset (AutoFormer-T and -S at 224 px, random weights in the official layout: speed does not depend on
the values) it builds the dense model, its ONNX graph and OpenVINO IRs, checks parity, then times, round-robin
over `--repeats` rounds so that drift hits every engine alike:

* torch eager (the dense model), the supernet running the same config, onnxruntime fp32, OpenVINO fp32/fp16/int8,
  at batch 1 (latency mode, one request) and batch 8 (throughput mode; OpenVINO with parallel requests);
* achieved GFLOP/s (2 x MACs per image / time) against a large fp32 matrix product timed in the same run, the
  machine's practical peak;
* `benchmark_app -hint latency` on the same OpenVINO fp32 IR, against our batch-1 p50.

Writes results.json (every row, raw times included), results.md and latency.png into --out.

    python benchmarks/run_benchmarks.py --out benchmarks/results
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deploy_nas.dense import write_dense
from deploy_nas.export.backends import default_threads
from deploy_nas.export.backends.runner import Runner
from deploy_nas.export.backends.torch_backend import torch_threads
from deploy_nas.export.fps import measure_fps, mode_for_batch, runs_for_seconds
from deploy_nas.export.parity import check_parity
from deploy_nas.export.pipeline import DENSE_DIR, build, export_to, parity_batch
from deploy_nas.export.report import versions
from deploy_nas.flops import count_flops
from deploy_nas.materialize import materialize
from deploy_nas.spaces import PRESETS, SPACES
from deploy_nas.supernets.autoformer import AutoFormerArch, AutoFormerSupernet

ENGINES = (("torch", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "fp16"),
           ("openvino", "int8"))
SUPERNET = ("supernet", "fp32")  # the weight-sharing model running the same config: what the dense form saves


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    flags = set()
    try:
        flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split())
    except (OSError, StopIteration):
        pass
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile") if f in flags]
    return {"cpu": cpu, "isa": isa, "cores_usable": default_threads(), "os": platform.platform(),
            "versions": versions()}


def write_results(out: Path, stem: str, result: Any, text: str, plot: Any = None) -> str:
    """OUT/STEM.json (every measurement), OUT/STEM.md (`text`) and, given `plot(result, path)`, OUT/STEM.png;
    returns `text`. What every script of this directory ends with."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out / f"{stem}.md").write_text(text)
    if plot is not None:
        plot(result, out / f"{stem}.png")
    return text


def sgemm_gflops(threads: int, n: int = 4096, runs: int = 10) -> float:
    """Median GFLOP/s of an n x n x n fp32 matrix product in torch (MKL/oneDNN): the practical peak."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    times = []
    with torch_threads(threads):
        torch.mm(a, b)
        for _ in range(runs):
            t0 = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e9


class SupernetEngine:
    """The supernet forward with the config passed at run time, timed like any engine."""

    name, precision = "supernet", "fp32"

    def __init__(self, supernet: AutoFormerSupernet, cfg: Any, threads: int):
        self.supernet, self.cfg, self.threads = supernet, cfg, threads
        spec = supernet.arch
        self.input_shape = (spec.in_chans, spec.img_size, spec.img_size)

    def runner(self, x: np.ndarray, mode: str = "latency", requests: int | None = None,
               threads: int | None = None) -> Runner:
        xt = torch.from_numpy(x)

        def step() -> None:
            with torch_threads(self.threads), torch.inference_mode():
                self.supernet(xt, self.cfg)

        return Runner(len(x), step, {"runner": "supernet", "threads": self.threads})


def benchmark_app_p50(xml: Path, threads: int, seconds: int, shape: tuple[int, ...]) -> float | None:
    """Median latency (ms) that OpenVINO's own benchmark_app reports with -hint latency."""
    exe = Path(sys.executable).parent / "benchmark_app"
    # benchmark_app refuses -nthreads together with -hint; with the latency hint it uses every usable core, which
    # is what our engines are given (threads defaults to the usable cores) -- the thread count is checked below.
    if threads != default_threads():
        return None
    cmd = [str(exe), "-m", str(xml), "-d", "CPU", "-hint", "latency", "-t", str(seconds),
           "-infer_precision", "f32", "-shape", f"[{','.join(map(str, shape))}]"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    match = re.search(r"Median:\s+([\d.]+) ms", proc.stdout)
    if proc.returncode or not match:
        print(f"benchmark_app failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-2000:]}", flush=True)
        return None
    return float(match.group(1))


def benchmark_app_rounds(engine: Any, xml: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    """Our batch-1 p50 and benchmark_app's median on the same IR, alternated `--bapp-rounds` times (the machine
    drifts: only measurements taken next to each other compare); the ratio is the median of the per-round ratios.
    Both sides sample the same stretch of time (`--bapp-seconds`; our run count is sized from a probe), and which
    side goes first alternates, so a slow spell of the machine does not fall on one side only."""
    runs, _ = runs_for_seconds(engine, args.bapp_seconds, args.runs, args.warmup)
    pairs = []
    for i in range(args.bapp_rounds):
        def ours() -> float:
            return measure_fps(engine, batch=1, mode="latency", runs=runs, warmup=args.warmup)[0].p50_ms

        def theirs() -> float | None:
            return benchmark_app_p50(xml, args.threads, args.bapp_seconds, (1, *engine.input_shape))

        if i % 2:
            b, o = theirs(), ours()
        else:
            o, b = ours(), theirs()
        if b is None:
            return None
        pairs.append({"ours_p50_ms": o, "benchmark_app_median_ms": b, "ratio": o / b, "ours_runs": runs})
    return {"rounds": pairs, "ratio": statistics.median(p["ratio"] for p in pairs),
            "ours_p50_ms": statistics.median(p["ours_p50_ms"] for p in pairs),
            "benchmark_app_median_ms": statistics.median(p["benchmark_app_median_ms"] for p in pairs)}


def bench_preset(preset: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    threads = args.threads
    space = SPACES.get(PRESETS.get(preset).space)
    supernet = AutoFormerSupernet(AutoFormerArch.from_space(space))
    supernet.reset_parameters(torch.Generator().manual_seed(0))
    supernet.eval()
    cfg = PRESETS.get(preset).config
    dense = materialize(supernet, cfg)
    macs = count_flops(dense).macs
    out = work / preset
    (out / DENSE_DIR).mkdir(parents=True, exist_ok=True)
    write_dense(dense, out / DENSE_DIR)
    print(f"[{preset}] export ONNX", flush=True)
    onnx_result = export_to(out)
    engines = {}
    for backend, precision in ENGINES:
        print(f"[{preset}] build {backend} {precision}", flush=True)
        engines[backend, precision] = build(out, backend, precision, threads)
    engines[SUPERNET] = SupernetEngine(supernet, cfg, threads)

    x = parity_batch(dense.spec, n_images=16, n_random=4)
    parity = {f"{b}/{p}": check_parity(engines["torch", "fp32"], e, x).to_dict()
              for (b, p), e in engines.items() if b not in ("torch", "supernet")}

    rows: list[dict[str, Any]] = []
    for rep in range(args.repeats):
        for (backend, precision), engine in engines.items():
            for batch in args.batches:
                mode = mode_for_batch(batch)
                print(f"[{preset}] round {rep + 1}/{args.repeats}: {backend} {precision} batch {batch}", flush=True)
                r = measure_fps(engine, batch=batch, mode=mode, runs=args.runs, warmup=args.warmup)[0].to_dict()
                rows.append({**r, "backend": backend, "precision": precision, "repeat": rep})
    bapp = benchmark_app_rounds(engines["openvino", "fp32"], out / "openvino" / "fp32" / "model.xml", args)
    for e in engines.values():
        if hasattr(e, "close"):
            e.close()
    return {"preset": preset, "config": cfg.to_dict(), "macs": macs,
            "params": sum(p.numel() for p in dense.parameters()),
            "onnx": {k: onnx_result.to_dict()[k] for k in ("exporter", "opset", "simplified", "nodes_after")},
            "parity": parity, "rows": rows, "benchmark_app": bapp}


def summarize(result: dict[str, Any], peak: float) -> list[dict[str, Any]]:
    """One line per (engine, batch): medians over the rounds, GFLOP/s and the ratios."""
    groups: dict[tuple, list[dict]] = {}
    for r in result["rows"]:
        groups.setdefault((r["backend"], r["precision"], r["batch"], r["mode"]), []).append(r)
    lines = []
    for (backend, precision, batch, mode), rs in groups.items():
        p50 = statistics.median(r["p50_ms"] for r in rs)
        fps = statistics.median(r["throughput_fps"] for r in rs)
        lines.append({"backend": backend, "precision": precision, "batch": batch, "mode": mode,
                      "p50_ms": p50, "p90_ms": statistics.median(r["p90_ms"] for r in rs),
                      "p99_ms": statistics.median(r["p99_ms"] for r in rs), "throughput_fps": fps,
                      "gflops": 2 * result["macs"] * fps / 1e9, "requests": rs[0]["requests"]})
    for line in lines:
        torch_line = next(t for t in lines if t["backend"] == "torch" and t["batch"] == line["batch"])
        line["speedup_vs_torch"] = line["throughput_fps"] / torch_line["throughput_fps"]
        line["fraction_of_sgemm_peak"] = line["gflops"] / peak
    return lines


def markdown(results: list[dict[str, Any]], peak: float, info: dict[str, Any]) -> str:
    md = [f"Machine: {info['cpu']} ({', '.join(info['isa'])}), {info['cores_usable']} usable cores; "
          f"torch {info['versions']['torch']}, onnxruntime {info['versions']['onnxruntime']}, "
          f"openvino {info['versions']['openvino']}, nncf {info['versions']['nncf']}.",
          f"fp32 sgemm peak (torch.mm 4096^3, same run): **{peak:.1f} GFLOP/s**.", ""]
    for res in results:
        lines = res["summary"]
        md += [f"### {res['preset']}: {res['params'] / 1e6:.2f}M params, {res['macs'] / 1e9:.3f} GMAC per image", "",
               "| engine | precision | batch | mode | p50 ms | p90 ms | p99 ms | images/s | vs torch | GFLOP/s "
               "| of peak |",
               "|---|---|---|---|---|---|---|---|---|---|---|"]
        for s in lines:
            md.append(f"| {s['backend']} | {s['precision']} | {s['batch']} | {s['mode']} | {s['p50_ms']:.2f} | "
                      f"{s['p90_ms']:.2f} | {s['p99_ms']:.2f} | {s['throughput_fps']:.1f} | "
                      f"{s['speedup_vs_torch']:.2f}x | {s['gflops']:.1f} | {100 * s['fraction_of_sgemm_peak']:.0f}% |")
        dense = next(s for s in lines if (s["backend"], s["batch"]) == ("torch", 1))
        sup = next(s for s in lines if (s["backend"], s["batch"]) == ("supernet", 1))
        bapp = res["benchmark_app"]
        bapp_line = (f"- OpenVINO fp32 batch-1 p50 vs `benchmark_app -hint latency` median on the same IR, alternated "
                     f"{len(bapp['rounds'])} times: "
                     + ", ".join(f"{p['ours_p50_ms']:.2f}/{p['benchmark_app_median_ms']:.2f}" for p in bapp["rounds"])
                     + f" ms; median ratio **{bapp['ratio']:.3f}**" if bapp else
                     "- benchmark_app: not run (threads differ from the usable cores, or it failed; see the log)")
        md += ["", f"- dense / supernet (batch 1 p50): {dense['p50_ms']:.2f} / {sup['p50_ms']:.2f} ms = "
               f"**{sup['p50_ms'] / dense['p50_ms']:.2f}x** faster as a dense model",
               bapp_line,
               "- parity vs torch on 16 embedded images + 4 random inputs: " + ", ".join(
                   f"{k} max abs {v['outputs'][0]['max_abs']:.2g} ({'pass' if v['passed'] else 'FAIL'})"
                   for k, v in res["parity"].items()), ""]
    return "\n".join(md)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, res in zip(axes[0], results):
        lines = [s for s in res["summary"] if s["batch"] == 1]
        labels = [f"{s['backend']}\n{s['precision']}" for s in lines]
        ax.bar(labels, [s["p50_ms"] for s in lines], color="tab:blue")
        ax.errorbar(labels, [s["p50_ms"] for s in lines],
                    yerr=[[0] * len(lines), [s["p90_ms"] - s["p50_ms"] for s in lines]], fmt="none", color="k")
        ax.set_title(f"{res['preset']}: batch-1 latency (p50, bar to p90)")
        ax.set_ylabel("ms")
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="autoformer-t,autoformer-s")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--work", type=Path, default=Path("out/bench-work"), help="where the artifacts are built")
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3, help="round-robin rounds; the table gives their medians")
    ap.add_argument("--bapp-seconds", type=int, default=10)
    ap.add_argument("--bapp-rounds", type=int, default=5, help="our p50 and benchmark_app alternated this often")
    args = ap.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    info = machine()
    peak = sgemm_gflops(args.threads)
    results = []
    for preset in args.presets.split(","):
        res = bench_preset(preset, args, args.work)
        peak = statistics.median([peak, sgemm_gflops(args.threads)])  # again after each preset: drift check
        results.append(res)
    for res in results:
        res["summary"] = summarize(res, peak)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"machine": info, "sgemm_gflops": peak, "args": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "results": results}, indent=1))
    (args.out / "results.md").write_text(markdown(results, peak, info))
    plot(results, args.out / "latency.png")
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
