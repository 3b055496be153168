"""A seventh hostile try of the deployment commands (2026-12-07, sixth session). Each test failed on the code before
its fix."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deploy_nas.io import sha256_file
from tests.cli.test_reliability import one_error_line
from tests.cli_runner import run


def ok(*args, **kw):
    r = run(*args, **kw)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def read(path: Path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> Path:
    """One `run` (onnxruntime and OpenVINO fp32, batch 1) of the min subnet, copied by each test that changes it."""
    root = tmp_path_factory.mktemp("deployed")
    ok("extract", "--config", "min", "--out", root / "dense")
    ok("run", "--dense", root / "dense", "--out", root / "dep", "--backend", "onnxruntime,openvino", "--batch", "1",
       "--threads", "1")
    return root / "dep"


def copy_of(deployed: Path, tmp_path: Path, name: str = "dep") -> Path:
    shutil.copytree(deployed, tmp_path / name, symlinks=True)
    return tmp_path / name


def test_a_graph_that_does_not_record_its_dense_model_is_not_taken_for_the_one_there_now(tmp_path):
    """A model.onnx whose sidecar does not record the dense model it came from (export_onnx called by hand, or an
    older version's export) was taken as the graph of whatever dense model the directory held: after
    `extract --force` of another subnet, `bench` timed the old graph and recorded it as the new model's, and
    `parity` blamed the lowering (or tracebacked where the input sizes differed)."""
    from deploy_nas import load_dense
    from deploy_nas.export.onnx import export_onnx

    dep = tmp_path / "dep"
    ok("extract", "--config", "max", "--out", dep / "dense")
    export_onnx(load_dense(dep / "dense"), dep / "model.onnx")  # the library's export: it knows no deployment
    assert read(dep / "model.onnx.json").get("exported_from") is None
    ok("extract", "--config", "min", "--out", dep / "dense", "--force")
    for args in (("parity", dep, "--backend", "onnxruntime"), ("bench", dep, "--backend", "onnxruntime", "--batch",
                                                                 "1"), ("export", "openvino", dep)):
        line = one_error_line(run(*args))
        assert "does not record the dense model model.onnx was exported from" in line, args
        assert f"`deploy-nas export onnx {dep}`" in line
    assert not any((dep / n).exists() for n in ("parity.json", "bench.json", "openvino"))
    ok("export", "onnx", dep)
    ok("parity", dep, "--backend", "onnxruntime")


def test_a_run_report_still_vouches_for_a_graph_from_before_the_record(tmp_path, deployed):
    """The stricter rule keeps deployments of older versions working where `run`'s own report ties the graph to the
    dense files there now, and only there."""
    dep = copy_of(deployed, tmp_path)
    side = read(dep / "model.onnx.json")
    side.pop("exported_from")
    (dep / "model.onnx.json").write_text(json.dumps(side))
    ok("parity", dep, "--backend", "onnxruntime")
    ok("extract", "--config", "max", "--out", dep / "dense", "--force")
    assert "does not record the dense model" in one_error_line(run("parity", dep, "--backend", "onnxruntime"))


def test_parity_of_torch_is_refused_and_never_verifies_a_report(tmp_path, deployed):
    """`parity --backend torch` compared the reference with itself (max abs 0) and a rewritten report then said
    PASSED for nothing deployed; the notes of dropped rows even suggested it."""
    dep = copy_of(deployed, tmp_path)
    line = one_error_line(run("parity", dep, "--backend", "torch"))
    assert "torch is the reference every engine is compared with" in line
    assert "torch/fp32" not in read(dep / "parity.json")
    # a torch row an older version wrote is no evidence: with the graph replaced, the report is NOT VERIFIED
    parity = read(dep / "parity.json")
    parity["torch/fp32"] = {**parity["onnxruntime/fp32"], "backend": "torch", "measured_on": {
        "dense": {n: sha256_file(dep / "dense" / n) for n in ("spec.json", "weights.safetensors")}}}
    (dep / "parity.json").write_text(json.dumps(parity))
    r = ok("export", "onnx", dep, "--no-simplify")
    assert f"`deploy-nas parity {dep} --backend onnxruntime" in r.stderr
    assert f"`deploy-nas parity {dep} --backend torch" not in r.stderr
    assert read(dep / "report.json")["passed"] is None
    assert (dep / "report.md").read_text().startswith("# Deployment report: NOT VERIFIED")
    assert "torch is the reference" in one_error_line(run("run", "--dense", dep, "--out", tmp_path / "r",
                                                          "--backend", "torch,onnxruntime"))


def _hold_lock(path: Path) -> subprocess.Popen:
    """Another process holding the output lock of `path` (as a running deploy-nas command does)."""
    code = ("import sys, time; from deploy_nas.io import output_lock\n"
            "with output_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True,
                              cwd=path.parent)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_one_lock_per_directory_however_it_is_named(tmp_path, deployed):
    """The lock was named after the path as given: a symlink to a deployment, or `.`, got a lock of its own (two
    writers ran at once), and `.`'s lock lay inside the deployment, where a killed command left it to block every
    later `--force` as a file deploy-nas did not write."""
    from deploy_nas.errors import OutputPathError
    from deploy_nas.io import output_lock

    dep = copy_of(deployed, tmp_path)
    (tmp_path / "link").symlink_to(dep)
    holder = _hold_lock(tmp_path / "link")
    try:
        line = one_error_line(run("bench", dep, "--backend", "torch", "--batch", "1"))
        assert f"output {dep} is being written by another deploy-nas process (pid {holder.pid})" in line
        with pytest.raises(OutputPathError, match="being written by another"):
            with output_lock(dep / "dense" / ".."):
                pass
    finally:
        holder.kill()
        holder.wait()
    ok("bench", ".", "--backend", "torch", "--batch", "1", cwd=dep)
    assert not [p.name for p in dep.iterdir() if "lock" in p.name]
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith("-lock")]  # released


def test_a_report_shows_the_rows_measured_after_run(tmp_path, deployed, calib_images):
    """After `run`, a `parity` on other images (one that failed, in the tester's case) left run's report saying
    PASSED for a row parity.json no longer held; parity rows did not say which images they compared."""
    dep = copy_of(deployed, tmp_path)
    before = (dep / "report.json").read_bytes()
    ok("parity", dep, "--backend", "onnxruntime")  # the same row again: run's own report stands
    assert (dep / "report.json").read_bytes() == before
    ok("parity", dep, "--backend", "openvino", "--data", calib_images, "--threads", "1")
    row = read(dep / "parity.json")["openvino/fp32"]
    assert row["data"] == str(calib_images.resolve()) and row["samples"] == 24 + 8
    report = read(dep / "report.json")
    shown = {f"{p['backend']}/{p['precision']}": p for p in report["parity"]}
    assert shown["openvino/fp32"]["samples"] == 32 and shown["onnxruntime/fp32"]["data"] == "embedded digits"
    assert any("rows were measured in" in n and "after `run`" in n for n in report["notes"])
    assert report["manifest"]["files"]["parity.json"]["sha256"] == sha256_file(dep / "parity.json")


@pytest.fixture(scope="module")
def calib_images(tmp_path_factory) -> Path:
    from tests.export.conftest import write_digits

    return write_digits(tmp_path_factory.mktemp("images"), "test", 24)


@pytest.mark.openvino
def test_build_json_does_not_choose_the_precision_an_engine_runs_at(tmp_path, deployed):
    """A precision_hint edited into an fp32 build.json (bf16) was compiled in: the fp32 engine ran at bf16, its
    parity failed as if the lowering were wrong and its speed rows said fp32."""
    dep = copy_of(deployed, tmp_path)
    path = dep / "openvino" / "fp32" / "build.json"
    path.write_text(json.dumps({**read(path), "precision_hint": "bf16"}))
    ok("parity", dep, "--backend", "openvino", "--threads", "1")
    ok("bench", dep, "--backend", "openvino", "--batch", "1", "--threads", "1")
    row = [r for r in read(dep / "bench.json") if r["backend"] == "openvino"][0]
    assert row["info"]["precision_hint"] == "f32"


def test_run_options_and_messages(tmp_path, deployed):
    """`run --batch 64` asked to raise a --max-batch that `run` does not have; `--batch 1,1` wrote two rows of one
    key; `run --dense` refused a deployment directory that every other command takes for its dense/; suggested
    commands were not quoted for the shell (a path with a space split in two) or named a literal OUT."""
    out = tmp_path / "my dep"
    ok("run", "--dense", deployed, "--out", out, "--backend", "onnxruntime", "--batch", "1,1,40", "--threads",
        "1")
    assert [(b["backend"], b["batch"]) for b in read(out / "bench.json")] == [
        ("torch", 1), ("torch", 40), ("onnxruntime", 1), ("onnxruntime", 40)]
    assert read(out / "dense" / "spec.json") == read(deployed / "dense" / "spec.json")
    line = one_error_line(run("parity", out, "--backend", "openvino"))
    assert f"`deploy-nas export openvino '{out}' --precision fp32`" in line
    (out / "model.onnx").unlink()
    line = one_error_line(run("parity", out, "--backend", "onnxruntime"))
    assert f"`deploy-nas export onnx '{out}'`" in line
    assert (out / "report.json").is_file()
