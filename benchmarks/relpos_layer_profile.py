"""One attention layer of AutoFormer-T, node by node on OpenVINO: what the relative-position terms add to it.

Builds the dense AutoFormer-T (random weights) with the compact lowering and the same model without its relative
positions (`none`, the floor of `relpos_vs_deit.py`), converts both the way `deploy-nas run` does, and reads
OpenVINO's performance counters (PERF_COUNT, batch 1, fp32, latency hint) over `--runs` inferences: the executed
nodes of block `--block`, their type, kernel and mean time. A node's time there includes its fixed cost (thread
hand-off, memory), which is what decides how cheap a lowering of small tensors can be.

    python benchmarks/relpos_layer_profile.py --out benchmarks/results [--block 5] [--runs 200]

Writes relpos_layer.json and relpos_layer.md into --out.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from relpos_vs_deit import autoformer  # noqa: E402
from run_benchmarks import machine, write_results  # noqa: E402

from deploy_nas.export.backends import BuildConfig, default_threads, get_backend  # noqa: E402
from deploy_nas.export.onnx import export_onnx  # noqa: E402

LOWERINGS = ("compact", "none")


def layer_nodes(xmls: dict[str, Path], block: int, threads: int, runs: int) -> dict[str, list[dict[str, Any]]]:
    """Per model, the mean real time per inference of each executed node of `blocks.<block>`, in execution order.
    The models take turns, 10 inferences at a time, so that a slow spell of the machine lands on all of them."""
    import openvino as ov

    core = ov.Core()
    props = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
             "PERF_COUNT": True}
    x = ov.Tensor(np.random.default_rng(0).standard_normal((1, 3, 224, 224), np.float32))
    requests = {k: core.compile_model(core.read_model(str(xml)), "CPU", props).create_infer_request()
                for k, xml in xmls.items()}
    nodes: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in xmls}
    chunks = max(1, runs // 10)
    for chunk in range(-2, chunks):  # two chunks of warm-up
        for key, request in requests.items():
            request.set_input_tensor(x)
            for _ in range(10):
                request.infer()
                if chunk < 0:
                    continue
                for p in request.profiling_info:
                    if p.status == ov.ProfilingInfo.Status.EXECUTED and f"/blocks.{block}/" in p.node_name:
                        row = nodes[key].setdefault(p.node_name, {"node": p.node_name, "type": p.node_type,
                                                                  "kernel": p.exec_type, "us": 0.0})
                        row["us"] += p.real_time.total_seconds() * 1e6 / (10 * chunks)
    return {k: list(v.values()) for k, v in nodes.items()}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Machine: {result['machine']['cpu']}, {result['threads']} threads; block {result['block']} of "
             f"AutoFormer-T, OpenVINO fp32 batch 1, mean over {result['runs']} inferences each, the models taking "
             "turns 10 inferences at a time.", ""]
    prefix = f"/blocks.{result['block']}/"
    for lowering in LOWERINGS:
        rows = result["layers"][lowering]
        lines += [f"**{lowering}**: {len(rows)} executed nodes, {sum(r['us'] for r in rows):.0f} us", "",
                  "| node | type | kernel | us |", "|---|---|---|---|"]
        lines += [f"| {r['node'].split(prefix)[-1]} | {r['type']} | {r['kernel']} | {r['us']:.1f} |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--work", type=Path, default=Path("out/bench-relpos-layer"))
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--block", type=int, default=5)
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    xmls = {}
    for lowering in LOWERINGS:
        work = args.work / lowering
        onnx = export_onnx(autoformer("autoformer-t", lowering), work / "model.onnx")
        get_backend("openvino").build(onnx.path, BuildConfig(threads=args.threads, out_dir=work)).close()
        xmls[lowering] = work / "openvino" / "fp32" / "model.xml"
    layers = layer_nodes(xmls, args.block, args.threads, args.runs)
    result = {"machine": machine(), "threads": args.threads, "block": args.block, "runs": args.runs,
              "layers": layers}
    print(write_results(args.out, "relpos_layer", result, markdown(result)))


if __name__ == "__main__":
    main()
