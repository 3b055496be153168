"""A fifth hostile try of the CLI (2026-12-07, fourth session): graphs and engines left from a dense model extracted
again, SIGTERM, a search interrupted before its first generation, unbounded input sizes in hand-edited files, an
idle --calib-data, a stale manifest. Each test failed on the code before its fix."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.cli.test_extract_info import run
from tests.cli.test_reliability import one_error_line
from tests.cli_runner import EXE


def _edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_graphs_and_engines_of_a_dense_model_extracted_again_are_refused(tmp_path):
    """`extract --out DEP/dense --force` after an export left model.onnx and the IR of the old model: parity and bench
    compared and timed the old graph (a traceback when the input size changed, a wrong 'parity failed' or a silent
    timing of the old model when it did not)."""
    dep = tmp_path / "dep"
    assert run("extract", "--config", "min", "--out", dep / "dense").returncode == 0
    assert run("export", "onnx", dep).returncode == 0 and run("export", "openvino", dep).returncode == 0
    assert run("extract", "--config", "max", "--out", dep / "dense", "--force").returncode == 0
    for args in (("parity", dep, "--backend", "onnxruntime"), ("parity", dep, "--backend", "openvino"),
                 ("bench", dep, "--backend", "openvino", "--batch", "1"), ("export", "openvino", dep)):
        assert "was exported from another dense model" in one_error_line(run(*args)), args
    assert run("export", "onnx", dep).returncode == 0  # the graph again; the IR is still the old graph's
    line = one_error_line(run("parity", dep, "--backend", "openvino"))
    assert "engine in" in line and "was built from another model.onnx" in line and "export openvino" in line
    assert run("export", "openvino", dep).returncode == 0
    assert run("parity", dep, "--backend", "openvino").returncode == 0
    # the engine's build.json records the dense files too: with the graph deleted, a re-extract is still caught
    (dep / "model.onnx").unlink()
    (dep / "model.onnx.json").unlink()
    assert run("extract", "--config", "min", "--out", dep / "dense", "--force").returncode == 0
    line = one_error_line(run("bench", dep, "--backend", "openvino", "--batch", "1"))
    assert "engine in" in line and "was built from another dense model" in line


def test_later_commands_keep_a_run_directory_manifest_true(tmp_path):
    from deploy_nas.export.report import manifest

    out = tmp_path / "r"
    assert run("run", "--config", "min", "--backend", "onnxruntime", "--batch", "1", "--out", out).returncode == 0
    assert run("bench", out, "--backend", "onnxruntime", "--batch", "2", "--runs", "50").returncode == 0
    assert run("export", "openvino", out).returncode == 0
    recorded = json.loads((out / "manifest.json").read_text())["files"]
    assert recorded == manifest(out, exclude=("manifest.json",))["files"] and "openvino/fp32/model.xml" in recorded
    dep = tmp_path / "dep"  # a manifest.json deploy-nas did not write is the user's: never rewritten
    assert run("extract", "--config", "min", "--out", dep / "dense").returncode == 0
    assert run("export", "onnx", dep).returncode == 0
    (dep / "manifest.json").write_text('{"mine": 1}')
    assert run("bench", dep, "--backend", "onnxruntime", "--batch", "1", "--runs", "50").returncode == 0
    assert (dep / "manifest.json").read_text() == '{"mine": 1}'


def test_sigterm_unwinds_like_an_interrupt(tmp_path):
    """SIGTERM (timeout, kill, Slurm, docker) left the output's temporary directory and lock behind, and no word."""
    dense = tmp_path / "d"
    assert run("extract", "--config", "max", "--out", dense).returncode == 0
    proc = subprocess.Popen([EXE, "run", "--dense", str(dense), "--backend", "onnxruntime,openvino", "--out",
                             str(tmp_path / "dep")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not any(
            p.name.startswith(".dep.") and p.is_dir() for p in tmp_path.iterdir()):  # the run is building
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and err.strip().endswith("error: terminated (SIGTERM)"), (proc.returncode, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


@pytest.mark.slow
def test_a_search_stopped_before_its_first_generation_says_there_is_nothing_to_resume(tmp_path, tiny_supernet_dir):
    """It said 'the per-generation log is in OUT; continue with --resume' when OUT did not exist."""
    out = tmp_path / "s"
    # unbuffered, the search says it is timing the predictor's subnets before it times them (seconds, here), and
    # it writes measured.json, its first file, only after
    proc = subprocess.Popen([EXE, "search", "--supernet", str(tiny_supernet_dir), "--backend", "torch", "--threads",
                             "1", "--latency-budget-ms", "1e9", "--measure", "8", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    first = proc.stdout.readline()
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=120)
    assert first == "timing 8 subnets for the latency predictor\n" and "measure 1/" not in rest, (first, rest)
    assert proc.returncode == 143 and not out.exists(), err
    assert "terminated (SIGTERM) before the search wrote anything; nothing to resume" in err and "--resume" not in err


def test_a_second_sigterm_ends_a_long_native_call_at_once(tmp_path):
    """Python runs a signal handler only between bytecodes: SIGTERM during one long native call (an engine build,
    a collective waiting on a dead rank) was held off until the call returned; a second one now ends the process at
    once (the default action did so before SIGTERM was handled)."""
    script = tmp_path / "slow.py"
    script.write_text("import click, numpy as np\n"
                      "from deploy_nas.cli_options import main_one_line\n"
                      "@click.command()\n"
                      "def slow():\n"
                      "    a = np.ones((9000, 9000), np.float32)\n"
                      "    print('ready', flush=True)\n"
                      "    a @ a  # one native call of several seconds\n"
                      "main_one_line(slow, args=[])\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    assert proc.stdout.readline().strip() == "ready"
    start = time.monotonic()
    time.sleep(0.3)  # inside the matmul
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    took = time.monotonic() - start
    assert proc.returncode == 143 and "terminated (SIGTERM); stopped without cleaning up" in err, err
    assert took < 3, f"the process ran {took:.1f} s after the first SIGTERM"


def test_unbounded_input_sizes_in_hand_edited_files_are_refused(tmp_path):
    """An img_size of 100000 (within the 2^31 every size is checked against) made info allocate 120 GB (a
    traceback) or extract write a model no machine could run."""
    from deploy_nas.family import FAMILIES
    from deploy_nas.spaces import SPACES
    from deploy_nas.supernets import save_supernet

    for family in ("s3", "autoformer"):  # AutoFormer's took 40 GB
        fam = FAMILIES.get(family)
        space = SPACES.get(fam.tiny_space)
        sn = tmp_path / family
        save_supernet(fam.build_supernet(space, 0), sn, space)
        _edit_json(sn / "supernet.json", lambda m: m["arch"].update(img_size=100000))
        line = one_error_line(run("extract", "--supernet", sn, "--config", "min", "--out", tmp_path / "o"))
        assert "supernet arch: img_size = 100000 (must be integers in 1..4096)" in line
        assert not (tmp_path / "o").exists()
    dense = tmp_path / "d"
    assert run("extract", "--config", "min", "--out", dense).returncode == 0
    _edit_json(dense / "spec.json", lambda s: s.update(img_size=100000))
    assert "spec.json: img_size = 100000 (must be integers in 1..4096)" in one_error_line(run("info", dense))


def test_a_swin_patch_norm_that_is_no_flag_is_refused(tmp_path):
    """body.patch_norm "no" read as true."""
    from deploy_nas.family import FAMILIES
    from deploy_nas.spaces import SPACES
    from deploy_nas.supernets import save_supernet

    fam = FAMILIES.get("s3")
    space = SPACES.get(fam.tiny_space)
    save_supernet(fam.build_supernet(space, 0), tmp_path / "s3", space)
    dense = tmp_path / "d"
    assert run("extract", "--supernet", tmp_path / "s3", "--config", "min", "--out", dense).returncode == 0
    _edit_json(dense / "spec.json", lambda s: s["body"].update(patch_norm="no"))
    assert "patch_norm must be true or false" in one_error_line(run("info", dense))


def test_calib_data_with_a_build_that_does_not_calibrate_is_refused(tmp_path):
    from PIL import Image

    (tmp_path / "cal" / "a").mkdir(parents=True)
    Image.new("RGB", (40, 40)).save(tmp_path / "cal" / "a" / "1.png")
    dep = tmp_path / "dep"
    assert run("extract", "--config", "min", "--out", dep / "dense").returncode == 0
    assert run("export", "onnx", dep).returncode == 0
    line = one_error_line(run("export", "openvino", dep, "--calib-data", tmp_path / "cal"))
    assert "--calib-data calibrates int8 builds only" in line and not (dep / "openvino").exists()
