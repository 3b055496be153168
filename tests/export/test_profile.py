"""Where the time goes: per-op-type tables from the runtimes' own profilers, in bench.json, report.md and the CLI."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from deploy_nas.export.profile import INDEX_OPS, OpTime, index_share, onnxruntime_events, summarize
from deploy_nas.supernets import default_supernet


def test_summarize_groups_by_op_type_and_shares_add_up():
    samples = [("MatMul", "a", 2.0), ("MatMul", "b", 1.0), ("Softmax", "s", 1.0)] * 4  # 4 inferences
    rows = summarize(samples, inferences=4)
    assert rows == [OpTime("MatMul", 2, 3.0, 0.75), OpTime("Softmax", 1, 1.0, 0.25)]
    assert index_share([r.to_dict() for r in rows]) == 0.0
    assert index_share([{"op": "GatherElements", "share": 0.1}, {"op": "MatMul", "share": 0.9}]) == 0.1
    assert "ScatterElementsUpdate" in INDEX_OPS


def test_onnxruntime_profile_events_are_read(tmp_path):
    events = [{"cat": "Session", "name": "model_run", "dur": 100},
              {"cat": "Node", "name": "/a/MatMul_kernel_time", "dur": 1500, "args": {"op_name": "MatMul"}},
              {"cat": "Node", "name": "/a/MatMul_fence_before", "dur": 1, "args": {"op_name": "MatMul"}}]
    (tmp_path / "p.json").write_text(json.dumps(events))
    assert onnxruntime_events(tmp_path / "p.json") == [("MatMul", "/a/MatMul_kernel_time", 1.5)]


@pytest.mark.parametrize("backend", [pytest.param("openvino", marks=pytest.mark.openvino), "onnxruntime"])
def test_engines_profile_their_ops(engines, backend):
    engine = engines(backend, "fp32", "min")
    size = default_supernet()[1].img_size
    rows = engine.op_profile(np.zeros((1, 3, size, size), np.float32))
    assert rows and sum(r.share for r in rows) == pytest.approx(1.0)
    assert all(r.nodes >= 1 and r.ms >= 0 for r in rows)
    ops = {r.op for r in rows}
    assert ops & {"MatMul", "FullyConnected", "FusedMatMul", "Subgraph"}  # the GEMMs show up
    # the compact relative-position lowering gathers two small tensors per attention layer and scatters nothing
    # (its share of the time is a benchmark figure: benchmarks/README.md); the profile counts those nodes, which
    # OpenVINO runs as Gathers (onnxruntime also lists the few shape Gathers of the graph)
    index_nodes = {r.op: r.nodes for r in rows if r.op in INDEX_OPS}
    depth = default_supernet()[1].sample(random.Random(0), "min").depth  # the "min" engine's subnet
    assert not any("Scatter" in op for op in index_nodes)
    gathers = index_nodes.get("Gather", 0) if backend == "openvino" else index_nodes.get("GatherElements", 0)
    assert gathers == 2 * depth, index_nodes


@pytest.mark.openvino
def test_bench_writes_the_profile_and_the_report_shows_it(tmp_path):
    from tests.cli.test_extract_info import run

    out = tmp_path / "t"
    r = run("run", "--config", "min", "--backend", "openvino,onnxruntime", "--batch", "1", "--out", out)
    assert r.returncode == 0, r.stderr
    rows = json.loads((out / "bench.json").read_text())
    profiled = {r["backend"] for r in rows if r.get("info", {}).get("op_profile")}
    assert profiled == {"openvino", "onnxruntime"}  # torch has no runtime profiler of its own here
    md = (out / "report.md").read_text()
    assert "## Where the time goes" in md and "openvino fp32: time per op type at batch 1" in md
    r = run("bench", out, "--backend", "openvino", "--batch", "1")
    assert r.returncode == 0 and "time per op type" in r.stdout and "| op type | nodes | ms | share |" in r.stdout
