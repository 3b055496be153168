"""The lowering commands through the installed console script: export, parity, bench and run; exit codes 0 (ok),
1 (a failed parity gate, after its report is written) and 2 (bad input, nothing written); a killed run."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from deploy_nas.io import sha256_file
from tests.cli.test_extract_info import EXE, run

pytestmark = pytest.mark.openvino
BENCH_KEYS = {"backend", "precision", "batch", "mode", "threads", "p50_ms", "p90_ms", "p99_ms", "throughput_fps"}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> Path:
    """One `deploy-nas run` of the default supernet's min subnet to onnxruntime and OpenVINO fp32 + fp16."""
    out = tmp_path_factory.mktemp("run") / "out"
    r = run("run", "--config", "min", "--out", out, "--backend", "onnxruntime,openvino", "--precision",
            "fp32,fp16", "--batch", "1,4", "--runs", "50", "--threads", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASSED" in r.stdout and "report.md" in r.stdout
    return out


def test_run_writes_a_complete_proven_directory(deployed):
    report = json.loads((deployed / "report.json").read_text())
    assert report["passed"] is True
    assert [(p["backend"], p["precision"]) for p in report["parity"]] == [
        ("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "fp16")]
    for p in report["parity"]:
        assert p["passed"] and p["samples"] == 72  # 64 embedded test images + 8 random inputs
        if p["precision"] == "fp32":
            assert p["outputs"][0]["max_abs"] <= 1e-4
    assert {(r["backend"], r["precision"], r["batch"], r["mode"]) for r in report["fps"]} == {
        (b, p, n, "latency" if n == 1 else "throughput")
        for b, p in (("torch", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "fp16"))
        for n in (1, 4)}
    assert all(r["threads"] == 1 and len(r["times_ms"]) == 50 for r in report["fps"])
    assert any("straight from the nn.Module" in n and "(pass)" in n for n in report["notes"])
    assert str(deployed) in json.dumps(report["engines"]) and ".tmp" not in json.dumps(report)
    md = (deployed / "report.md").read_text()
    assert md.startswith("# Deployment report: PASSED") and "| openvino | fp16 | logits |" in md


def test_manifest_hashes_every_artifact(deployed):
    manifest = json.loads((deployed / "manifest.json").read_text())
    files = {p.relative_to(deployed).as_posix() for p in deployed.rglob("*")
             if p.is_file() and not p.name.startswith(".")} - {"manifest.json"}  # the ownership markers are hidden
    assert set(manifest["files"]) == files
    assert {"model.onnx", "dense/weights.safetensors", "openvino/fp16/model.bin", "report.json"} <= files
    for name, entry in manifest["files"].items():
        assert sha256_file(deployed / name) == entry["sha256"], name
    assert manifest["versions"]["torch"] == torch.__version__.split("+")[0] or manifest["versions"]["torch"]
    assert {"onnx", "openvino", "tensorrt", "onnxruntime"} <= set(manifest["versions"])


def test_step_by_step_commands_update_parity_and_bench(deployed, tmp_path):
    out = tmp_path / "t"
    assert run("extract", "--config", "min", "--out", out / "dense").returncode == 0
    r = run("export", "onnx", out)
    assert r.returncode == 0 and "opset 17" in r.stdout, r.stderr
    r = run("export", "openvino", out, "--precision", "int8", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert (out / "openvino" / "int8" / "model.xml").is_file()
    # backend names in any case, as `run` takes them (ONNXRUNTIME looked for a saved engine under out/ONNXRUNTIME)
    for backend, precision in (("ONNXRUNTIME", "fp32"), ("openvino", "int8")):
        r = run("parity", out, "--backend", backend, "--precision", precision, "--threads", "1")
        assert r.returncode == 0, r.stdout + r.stderr
    parity = json.loads((out / "parity.json").read_text())
    assert set(parity) == {"onnxruntime/fp32", "openvino/int8"} and all(v["passed"] for v in parity.values())
    assert parity["openvino/int8"]["tolerance"]["min_mean_cosine"] == 0.98
    for backend in ("Torch", "OpenVINO"):
        r = run("bench", out, "--backend", backend, "--precision", "fp32" if backend == "Torch" else "int8",
                "--batch", "1,2", "--threads", "1")
        assert r.returncode == 0, r.stderr
    rows = json.loads((out / "bench.json").read_text())
    assert {(r["backend"], r["batch"]) for r in rows} == {("torch", 1), ("torch", 2), ("openvino", 1), ("openvino", 2)}
    assert all(BENCH_KEYS <= set(r) and len(r["times_ms"]) == 50 for r in rows)


def test_run_deploys_a_dense_directory_without_a_supernet(deployed, tmp_path):
    r = run("run", "--dense", deployed / "dense", "--backend", "onnxruntime", "--batch", "1", "--threads", "1",
            "--out", tmp_path / "again")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((tmp_path / "again" / "report.json").read_text())
    first = json.loads((deployed / "report.json").read_text())
    assert report["passed"] and report["model"]["config_id"] == first["model"]["config_id"]
    assert (tmp_path / "again" / "dense" / "weights.safetensors").read_bytes() == \
        (deployed / "dense" / "weights.safetensors").read_bytes()
    r = run("run", "--dense", deployed / "dense", "--config", "max", "--out", tmp_path / "x")
    assert r.returncode == 2 and "--dense takes a dense model directory" in r.stderr


def test_parity_failure_writes_its_report_and_exits_1(tmp_path):
    """Logits near 1000 (the head's bias 1000 + k / (classes - 1)): fp16, whose step there is 0.5, cannot hold
    the bias, and the fp16 gate's absolute bound (0.05) must catch the up to 0.25 it loses, on any CPU (scaling the
    head's weights instead made the error depend on the CPU: x40 gave 0.11 on an Intel Xeon and 0.047 on an AMD
    EPYC, where the gate passed, and x100 tripped the fp32 ONNX export's 1e-4 bound before parity). fp32 holds
    1000 to 6e-5, so the export's check stays within its bound.
    (A stale IR, the way this test failed the gate before, is now refused before any comparison:
    tests/cli/test_reliability_5.py.)"""
    from deploy_nas import load_dense
    from deploy_nas.dense import save_dense

    out = tmp_path / "t"
    assert run("extract", "--config", "min", "--out", out / "dense").returncode == 0
    model = load_dense(out / "dense")
    with torch.no_grad():
        model.head.bias.copy_(1000 + torch.linspace(0, 1, model.head.bias.numel()))
    save_dense(model, out / "dense", force=True)
    assert run("export", "onnx", out).returncode == 0
    assert run("export", "openvino", out, "--precision", "fp16").returncode == 0
    r = run("parity", out, "--backend", "openvino", "--precision", "fp16")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "parity failed for openvino/fp16" in r.stderr and "FAIL" in r.stdout
    entry = json.loads((out / "parity.json").read_text())["openvino/fp16"]
    assert entry["passed"] is False and entry["outputs"][0]["max_abs"] > 1e-4
    assert any("max abs" in f for f in entry["failures"])


def _no_output(path: Path) -> bool:
    return not path.exists() and not [p for p in path.parent.glob(f".{path.name}.*")]


@pytest.mark.parametrize("args, message", [
    (("--backend", "tflite"), "unknown backend 'tflite'; choose one of"),
    (("--precision", "int4"), "unknown precision 'int4'; choose one of: fp32, fp16, int8"),
    (("--backend", "onnxruntime", "--precision", "int8"), "onnxruntime builds none of int8"),
    (("--calib-data", "{empty}", "--precision", "int8", "--backend", "openvino"), "no images"),
    (("--config", "{bad_config}"), "embed_dim"),
])
def test_run_bad_input_exits_2_and_writes_nothing(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"depth": 4, "embed_dim": 100, "mlp_ratio": [2, 2, 2, 2], "num_heads": [2, 2, 2, 2]}))
    args = [a.format(empty=tmp_path / "empty", bad_config=bad) for a in args]
    if "--config" not in args:
        args = ["--config", "min", *args]
    r = run("run", *args, "--out", tmp_path / "out")
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert _no_output(tmp_path / "out")


def test_run_into_a_file_exits_2(tmp_path):
    target = tmp_path / "out"
    target.write_text("keep me")
    r = run("run", "--config", "min", "--out", target)
    assert r.returncode == 2 and "is a file" in r.stderr
    assert target.read_text() == "keep me"


def test_missing_and_corrupt_artifacts_exit_2(tmp_path):
    out = tmp_path / "t"
    r = run("export", "onnx", out)
    assert r.returncode == 2 and "no dense model" in r.stderr
    assert run("extract", "--config", "min", "--out", out / "dense").returncode == 0
    r = run("parity", out, "--backend", "onnxruntime")
    assert r.returncode == 2 and "model.onnx not found" in r.stderr and "deploy-nas export onnx" in r.stderr
    (out / "model.onnx").write_bytes(b"\x08\x07garbage that is not protobuf")
    r = run("export", "openvino", out)  # a model.onnx without the record of its export (model.onnx.json)
    assert r.returncode == 2 and "model.onnx has no readable record of its export" in r.stderr
    assert not (out / "openvino").exists()
    digest = sha256_file(out / "model.onnx")
    (out / "model.onnx.json").write_text(json.dumps({"sha256": digest}))  # no record of the dense model it came from
    r = run("export", "openvino", out)
    assert r.returncode == 2 and "does not record the dense model model.onnx was exported from" in r.stderr
    dense = {n: sha256_file(out / "dense" / n) for n in ("spec.json", "weights.safetensors")}
    (out / "model.onnx.json").write_text(json.dumps({"sha256": digest, "exported_from": dense}))  # no ONNX model
    r = run("export", "openvino", out)
    assert r.returncode == 2 and "is not a valid ONNX model" in r.stderr
    assert not (out / "openvino").exists()
    r = run("parity", out, "--backend", "openvino", "--precision", "fp16")
    assert r.returncode == 2 and f"export openvino {out} --precision fp16" in r.stderr, r.stderr
    assert not (out / "parity.json").exists()


def test_unavailable_tensorrt_exits_2_with_its_reason(tmp_path):
    from deploy_nas.export.backends import backend_class

    reason = backend_class("tensorrt").unavailable_reason()
    if reason is None:
        pytest.skip("tensorrt is available here")
    out = tmp_path / "t"
    assert run("extract", "--config", "min", "--out", out / "dense").returncode == 0
    r = run("export", "tensorrt", out, "--precision", "fp16")
    assert r.returncode == 2 and reason in r.stderr
    assert not (out / "tensorrt").exists()


def test_killed_run_leaves_no_artifact_under_its_final_name(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([EXE, "run", "--config", "min", "--out", str(out), "--backend", "openvino",
                             "--precision", "fp32,fp16,int8", "--runs", "2000", "--threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(tmp_path.glob(".out.*/openvino/*/model.xml")):  # mid-way: the ONNX file and one IR are written
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not out.exists()
    assert [p for p in tmp_path.glob(".out.*") if p.is_dir()]  # the work in progress lived under a temporary name
