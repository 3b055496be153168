"""Parity and bench rows are reported only for the model a deployment holds now. A dense model extracted again into
OUT/dense (the documented way to replace it), weights swapped by hand or a graph exported again left the rows
measured on the earlier files in parity.json, bench.json, report.json/report.md and the rewritten manifest.json,
next to the new model, with no record of what they had measured. Each test failed on the code before the fix
(DEPLOY_NAS_EXE=<a deploy-nas with the old export/pipeline.py> runs them against another build)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from deploy_nas.io import sha256_file
from tests.cli_runner import run


def ok(*args):
    r = run(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def read(path: Path):
    return json.loads(path.read_text())


def dense_now(dep: Path) -> dict[str, str]:
    return {n: sha256_file(dep / "dense" / n) for n in ("spec.json", "weights.safetensors")}


def assert_true_to(dep: Path, parity: set[str], bench: set[tuple[str, int]]) -> None:
    """parity.json, bench.json, report.json/.md and manifest.json report exactly these rows, each recording the
    dense files there now (and model.onnx's sha256 where it ran the graph)."""
    from deploy_nas.export.report import manifest

    rows = {**read(dep / "parity.json"),
            **{(r["backend"], r["batch"]): r for r in read(dep / "bench.json")}}
    assert set(rows) == parity | bench
    graph = sha256_file(dep / "model.onnx") if (dep / "model.onnx").is_file() else None
    for key, row in rows.items():
        record = row.get("measured_on") or {}
        assert record.get("dense") == dense_now(dep), key
        assert record.get("onnx_sha256") == (None if row["backend"] == "torch" else graph), key
    report = read(dep / "report.json")
    assert {f"{p['backend']}/{p['precision']}" for p in report["parity"]} == parity
    assert {(f["backend"], f["batch"]) for f in report["fps"]} == bench
    assert {report["manifest"]["files"][f"dense/{n}"]["sha256"] for n in dense_now(dep)} == set(
        dense_now(dep).values())
    md = (dep / "report.md").read_text()
    for backend in ("torch", "onnxruntime", "openvino"):
        shown = any(b == backend for b, _ in bench) or any(p.startswith(f"{backend}/") for p in parity)
        assert (f"| {backend} | fp32 |" in md) == shown, backend
    assert read(dep / "manifest.json")["files"] == manifest(dep, exclude=("manifest.json",))["files"]


@pytest.fixture(scope="module")
def dense_max(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dense") / "dA"
    ok("extract", "--config", "max", "--out", out)
    return out


@pytest.mark.openvino
def test_a_model_extracted_again_leaves_no_rows_of_the_old_one(tmp_path, dense_max):
    """The tester's reproduction: parity.json said onnxruntime/fp32 and openvino/fp32 passed (measured on the max
    subnet; the min one was never compared), bench.json and the report held the max subnet's rows next to the new
    onnxruntime row."""
    dep = tmp_path / "dep"
    ok("run", "--dense", dense_max, "--out", dep, "--batch", "1")
    ok("extract", "--config", "min", "--out", dep / "dense", "--force")
    r = ok("export", "onnx", dep)
    assert read(dep / "parity.json") == {} and read(dep / "bench.json") == []
    assert f"note: dropped 2 row(s) of {dep / 'parity.json'} (onnxruntime/fp32, openvino/fp32)" in r.stderr
    assert f"`deploy-nas parity {dep} --backend openvino --precision fp32`" in r.stderr
    assert f"`deploy-nas bench {dep} --backend torch --precision fp32 --batch 1`" in r.stderr
    ok("bench", dep, "--backend", "onnxruntime", "--batch", "1")
    assert_true_to(dep, set(), {("onnxruntime", 1)})
    report = read(dep / "report.json")
    assert report["model"]["config_id"] == read(dep / "dense" / "spec.json")["source"]["config_id"]
    assert report["onnx"]["sha256"] == sha256_file(dep / "model.onnx") and report["engines"] == []
    assert any("the dense model this report described was replaced" in n and "2 parity and 3 speed" in n
               for n in report["notes"])
    assert "straight from the nn.Module" not in json.dumps(report["notes"])  # the old model's cross-check


def _other_weights(dense: Path, into: Path) -> None:
    """The same architecture with other weights (the head scaled), written as dense/weights.safetensors."""
    from deploy_nas import load_dense
    from deploy_nas.dense import save_dense

    model = load_dense(dense)
    with torch.no_grad():
        model.head.weight.mul_(1.5)
    save_dense(model, into)


def test_weights_swapped_by_hand(tmp_path, dense_max):
    """`bench --backend torch` after weights.safetensors was replaced by hand kept the old model's parity and
    onnxruntime rows next to the new torch row; the rewritten report stays up to date with later commands."""
    dep, other = tmp_path / "dep", tmp_path / "other"
    ok("run", "--dense", dense_max, "--out", dep, "--backend", "onnxruntime", "--batch", "1")
    _other_weights(dense_max, other)
    (dep / "dense" / "weights.safetensors").write_bytes((other / "weights.safetensors").read_bytes())
    r = ok("bench", dep, "--backend", "torch", "--batch", "1")
    assert_true_to(dep, set(), {("torch", 1)})
    assert "note: dropped 1 row(s)" in r.stderr and "(onnxruntime/fp32)" in r.stderr
    # the graph of the old weights is refused (as before); exported again, its rows come back into the report
    assert "was exported from another dense model" in run("parity", dep, "--backend", "onnxruntime").stderr
    assert read(dep / "parity.json") == {}
    ok("export", "onnx", dep)
    ok("parity", dep, "--backend", "onnxruntime")
    assert_true_to(dep, {"onnxruntime/fp32"}, {("torch", 1)})
    assert read(dep / "report.json")["passed"] is True


def test_a_graph_exported_again_drops_the_rows_that_ran_the_old_one(tmp_path):
    """Rows record what they measured: a new model.onnx of the same dense model drops the rows of the old graph and
    keeps the torch rows, in a directory built step by step."""
    dep = tmp_path / "dep"
    ok("extract", "--config", "min", "--out", dep / "dense")
    ok("export", "onnx", dep)
    ok("parity", dep, "--backend", "onnxruntime")
    for backend in ("torch", "onnxruntime"):
        ok("bench", dep, "--backend", backend, "--batch", "1")
    parity, bench = read(dep / "parity.json"), read(dep / "bench.json")
    graph = sha256_file(dep / "model.onnx")
    assert parity["onnxruntime/fp32"].get("measured_on") == {"dense": dense_now(dep), "onnx_sha256": graph}
    assert {r["backend"]: r.get("measured_on") for r in bench} == {
        "torch": {"dense": dense_now(dep)}, "onnxruntime": {"dense": dense_now(dep), "onnx_sha256": graph}}
    r = ok("export", "onnx", dep, "--no-simplify")
    assert sha256_file(dep / "model.onnx") != graph and "note: dropped 1 row(s)" in r.stderr
    assert read(dep / "parity.json") == {}
    assert [r["backend"] for r in read(dep / "bench.json")] == ["torch"]


def _as_before_the_record(dep: Path) -> None:
    """parity.json and bench.json as a `run` before rows recorded what they measured wrote them: no record, and
    report.json's manifest copy records those very files."""
    report = read(dep / "report.json")
    for name in ("parity.json", "bench.json"):
        data = read(dep / name)
        for row in data.values() if isinstance(data, dict) else data:
            row.pop("measured_on", None)
        (dep / name).write_text(json.dumps(data))
        report["manifest"]["files"][name] = {"sha256": sha256_file(dep / name), "bytes": (dep / name).stat().st_size}
    (dep / "report.json").write_text(json.dumps(report))


def test_rows_from_before_the_record(tmp_path, dense_max):
    """Rule for rows without a record: kept (and given the record of the run's model and graph) only when `run`'s
    report.json proves them: its manifest copy records these very parity.json/bench.json and the dense files there
    now; dropped otherwise, however current the graph's sidecar looks."""
    dep = tmp_path / "dep"
    ok("run", "--dense", dense_max, "--out", dep, "--backend", "onnxruntime", "--batch", "1")
    _as_before_the_record(dep)
    ok("bench", dep, "--backend", "torch", "--batch", "2", "--runs", "50")
    rows = {(r["backend"], r["batch"]) for r in read(dep / "bench.json")}
    assert rows == {("torch", 1), ("onnxruntime", 1), ("torch", 2)}
    assert all("measured_on" in r for r in read(dep / "bench.json"))
    assert read(dep / "parity.json")["onnxruntime/fp32"].get("measured_on") == {
        "dense": dense_now(dep), "onnx_sha256": sha256_file(dep / "model.onnx")}
    # the same files after the model was replaced and exported again: the sidecar matches the new dense files,
    # but nothing ties the unrecorded rows to them
    _as_before_the_record(dep)
    _other_weights(dense_max, tmp_path / "other")
    (dep / "dense" / "weights.safetensors").write_bytes((tmp_path / "other" / "weights.safetensors").read_bytes())
    r = ok("export", "onnx", dep)
    assert "from before rows recorded what they measured" in r.stderr
    assert read(dep / "parity.json") == {} and read(dep / "bench.json") == []
    assert read(dep / "report.json")["parity"] == []


@pytest.mark.openvino
def test_an_engine_built_again_leaves_no_rows_of_the_one_it_replaced(tmp_path, calib_dir):
    """An int8 engine built again from the same graph with other calibration data kept the parity and speed rows
    (and run's report) of the engine it replaced: rows recorded the graph, not the engine. Rows now record the
    saved engine's files (build.json's sha256), so a rebuild that writes the very same files keeps them."""
    dep, dense = tmp_path / "dep", tmp_path / "dense"
    ok("extract", "--config", "min", "--out", dense)
    ok("run", "--dense", dense, "--out", dep, "--backend", "openvino", "--precision", "fp32,int8", "--batch", "1",
       "--threads", "1")
    old_int8 = read(dep / "openvino" / "int8" / "build.json")["files"]
    assert read(dep / "parity.json")["openvino/int8"]["measured_on"]["engine_files"] == old_int8
    assert "out_dir" not in read(dep / "openvino" / "int8" / "build.json")["config"]  # it named a temporary dir
    parity_before = read(dep / "parity.json")

    ok("export", "openvino", dep, "--precision", "fp32", "--threads", "1")  # the same files again: rows kept
    assert read(dep / "parity.json") == parity_before

    r = ok("export", "openvino", dep, "--precision", "int8", "--calib-data", calib_dir, "--threads", "1")
    new_int8 = read(dep / "openvino" / "int8" / "build.json")["files"]
    assert new_int8 != old_int8  # other calibration data, other scales
    assert f"note: dropped 1 row(s) of {dep / 'parity.json'} (openvino/int8)" in r.stderr
    assert "built from an earlier graph" not in r.stderr  # the graph is the same; only the engine is new
    assert set(read(dep / "parity.json")) == {"openvino/fp32"}
    assert {(b["backend"], b["precision"]) for b in read(dep / "bench.json")} == {("torch", "fp32"),
                                                                                 ("openvino", "fp32")}
    report = read(dep / "report.json")
    assert [(p["backend"], p["precision"]) for p in report["parity"]] == [("openvino", "fp32")]
    assert [(e["backend"], e["precision"]) for e in report["engines"]] == [("torch", "fp32"), ("openvino", "fp32")]
    assert any("the openvino int8 engine this report described was replaced" in n for n in report["notes"])

    ok("parity", dep, "--backend", "openvino", "--precision", "int8", "--threads", "1")
    assert read(dep / "parity.json")["openvino/int8"]["measured_on"]["engine_files"] == new_int8
    report = read(dep / "report.json")
    assert ("openvino", "int8") in {(p["backend"], p["precision"]) for p in report["parity"]}
    assert {"backend": "openvino", "precision": "int8", "files": new_int8}.items() <= report["engines"][-1].items()
