"""The 19 findings of a hostile try of the CLI, each reproduced through the installed console script: every one
failed on the code before the fix and passes now. Bad input: one line `error: ...`, exit 2, nothing written."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from deploy_nas.io import _HOST, TAG, sweep, temp_dir
from deploy_nas.supernets import default_supernet
from tests.cli.test_extract_info import EXE, run

GIB = 1 << 30


def one_error_line(r: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith(("warning:", "note:"))]
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    return lines[0]


# Runs its arguments as a child and reports that child's peak resident memory (kB) on its last stderr line.
_PEAK = ("import resource, subprocess, sys\n"
         "r = subprocess.run(sys.argv[1:])\n"
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
         "sys.exit(r.returncode)")


def limited(*args, memory: int = 1 * GIB, timeout: float = 120) -> subprocess.CompletedProcess:
    """The CLI with a timeout and its peak resident memory checked (an address-space limit would also catch the
    virtual reservations of torch's thread pools): bounded work on any input."""
    r = subprocess.run([sys.executable, "-c", _PEAK, EXE, *map(str, args)], capture_output=True, text=True,
                       timeout=timeout)
    *lines, peak = r.stderr.rstrip("\n").split("\n")
    assert int(peak) * 1024 < memory, f"peak resident memory {int(peak) / 2**20:.2f} GiB"
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout, "\n".join(lines) + "\n")


def default_checkpoint(path: Path, edit=None) -> Path:
    sd = {k: v.clone() for k, v in default_supernet()[0].state_dict().items()}
    if edit:
        edit(sd)
    torch.save({"model": sd}, path)
    return path


# 1 -------------------------------------------------------------------------------------------------------------
def test_1_force_never_deletes_what_it_did_not_write(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "thesis.tex").write_text("years of work")
    for out in (".", str(d), "./", f"{d}/../d", "/"):
        assert "refusing" in one_error_line(run("extract", "--config", "max", "--out", out, "--force", cwd=d))
    assert (d / "thesis.tex").read_text() == "years of work"
    home = tmp_path / "home"
    home.mkdir()
    r = subprocess.run([EXE, "extract", "--config", "max", "--out", str(home), "--force"], capture_output=True,
                       text=True, env={**os.environ, "HOME": str(home)})
    assert "home directory" in one_error_line(r)
    cfg = d / "configs" / "c.json"  # an input inside the output: replacing the output would delete the input
    cfg.parent.mkdir()
    cfg.write_text(default_supernet()[1].sample(None, "min").to_json())
    assert "holds the input" in one_error_line(run("extract", "--config", cfg, "--out", d / "configs", "--force"))
    (tmp_path / "ours").mkdir()
    assert run("extract", "--config", "max", "--out", tmp_path / "ours" / "m").returncode == 0
    (tmp_path / "ours" / "m" / "notes.txt").write_text("mine")
    assert "notes.txt" in one_error_line(run("extract", "--config", "min", "--out", tmp_path / "ours" / "m",
                                             "--force"))
    assert (tmp_path / "ours" / "m" / "notes.txt").read_text() == "mine"


def test_1_a_kill_during_a_forced_replace_keeps_the_old_output(tmp_path):
    out = tmp_path / "out"
    assert run("extract", "--config", "min", "--out", out / "dense").returncode == 0
    assert run("run", "--dense", out / "dense", "--backend", "onnxruntime", "--batch", "1", "--out",
               tmp_path / "dep").returncode == 0
    before = {p: p.read_bytes() for p in (tmp_path / "dep").rglob("*") if p.is_file()}
    proc = subprocess.Popen([EXE, "run", "--config", "min", "--out", str(tmp_path / "dep"), "--force", "--backend",
                             "openvino", "--precision", "fp32,fp16", "--runs", "2000", "--threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(tmp_path.glob(f".dep.{TAG}-*/openvino/*/model.xml")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert {p: p.read_bytes() for p in (tmp_path / "dep").rglob("*") if p.is_file()} == before


# 2, 3 ----------------------------------------------------------------------------------------------------------
def test_2_a_yaml_alias_bomb_is_refused_with_bounded_work(tmp_path):
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    line = one_error_line(limited("extract", "--config", bomb, "--out", tmp_path / "o"))
    assert "expands to more than" in line and not (tmp_path / "o").exists()


def test_2_values_quoted_in_messages_are_cut_short(tmp_path):
    cfg = tmp_path / "long.json"
    cfg.write_text(json.dumps({"family": "autoformer", "depth": 2, "embed_dim": 48, "mlp_ratio": [2, "x" * 300_000],
                               "num_heads": [2, 2]}))
    line = one_error_line(run("extract", "--config", cfg, "--out", tmp_path / "o"))
    assert len(line) < 300 and "mlp_ratio[1]" in line


def test_3_a_huge_layer_num_is_refused_before_any_list_is_built(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("layer_num: 1.0e+9\nembed_dim: 192\nmlp_ratio: [4.0]\nnum_heads: [3]\n")
    line = one_error_line(limited("extract", "--config", cfg, "--out", tmp_path / "o", timeout=60))
    assert "layer_num = 1000000000.0 is not a depth" in line


# 4 -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("point", [f".out.{TAG}-lock", f".out.{TAG}-*/dense/weights.safetensors",
                                   f".out.{TAG}-*/model.onnx", f".out.{TAG}-*/openvino/fp32/model.xml",
                                   f".out.{TAG}-*/openvino/fp16/build.json"])
def test_4_a_run_killed_at_any_point_leaves_named_temporaries_the_next_run_sweeps(tmp_path, point):
    proc = subprocess.Popen([EXE, "run", "--config", "min", "--out", str(tmp_path / "out"), "--backend",
                             "openvino", "--precision", "fp32,fp16", "--runs", "2000", "--threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None and not list(tmp_path.glob(point)):
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before the point was reached"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (tmp_path / "out").exists()
    left = [p for p in tmp_path.iterdir() if TAG in p.name and not p.name.endswith("-lock")]
    assert all(f"-{proc.pid}-" in p.name for p in left)  # findable: they name their dead owner
    stale = left + list(tmp_path.glob(f"*{TAG}-lock"))
    r = run("extract", "--config", "min", "--out", tmp_path / "next")
    assert r.returncode == 0 and ("removed" in r.stderr) == bool(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["next"]


def test_4_system_temp_directories_of_dead_processes_are_swept(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{TAG}-{_HOST}-{dead.pid}-latency-x"
    (stale / "model.onnx").parent.mkdir()
    (stale / "model.onnx").write_bytes(b"x" * 1000)
    alive = tmp_path / f"{TAG}-{_HOST}-{os.getpid()}-openvino-y"
    alive.mkdir()
    with temp_dir("latency") as fresh:
        assert TAG in Path(fresh).name and str(os.getpid()) in Path(fresh).name
        assert not stale.exists() and alive.exists()
    assert sweep(tmp_path) == []


# 5 -------------------------------------------------------------------------------------------------------------
def test_5_a_second_writer_of_the_same_output_fails_at_once(tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen([EXE, "run", "--config", "max", "--out", str(out), "--backend", "openvino",
                              "--precision", "fp32,fp16", "--batch", "1"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(tmp_path.glob(f".out.{TAG}-lock")):
        time.sleep(0.02)
    second = run("run", "--config", "min", "--out", out, "--backend", "onnxruntime")
    assert "being written by another deploy-nas process" in one_error_line(second)
    assert first.wait(timeout=600) == 0, first.stderr.read()
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["config_id"] == default_supernet()[1].sample(None, "max").id  # the first one's model
    assert not list(tmp_path.glob(f"*{TAG}-lock"))


# 6 -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["/proc/deploy-nas-test/out", "/sys/deploy-nas-test/out"])
def test_6_an_unwritable_location_is_bad_input(where):
    line = one_error_line(run("extract", "--config", "min", "--out", where))
    assert "cannot write" in line


# 7, 8 ----------------------------------------------------------------------------------------------------------
def test_7_integer_weights_are_refused_by_name(tmp_path):
    ckpt = default_checkpoint(tmp_path / "c.pth", lambda sd: sd.update(
        {"blocks.1.fc1.weight": sd["blocks.1.fc1.weight"].round().long()}))
    line = one_error_line(run("extract", "--checkpoint", ckpt, "--config", "max", "--out", tmp_path / "o"))
    assert "not floating point: blocks.1.fc1.weight (int64)" in line


def test_8_non_finite_weights_are_refused_by_name(tmp_path):
    def poison(sd):
        sd["blocks.0.attn.qkv.weight"][3, 3] = float("nan")
        sd["head.bias"][0] = float("inf")

    ckpt = default_checkpoint(tmp_path / "c.pth", poison)
    line = one_error_line(run("extract", "--checkpoint", ckpt, "--config", "max", "--out", tmp_path / "o"))
    assert "non-finite (NaN or Inf): blocks.0.attn.qkv.weight, head.bias" in line


def test_8_the_parity_gate_names_non_finite_outputs():
    from deploy_nas.export.parity import check_parity

    class Fixed:
        input_name, precision = "input", "fp32"

        def __init__(self, name, out):
            self.name, self.out = name, out

        def infer(self, feeds):
            return {"logits": self.out}

    ref = np.ones((2, 10), np.float32)
    bad = ref.copy()
    bad[1, 3] = np.nan
    result = check_parity(Fixed("torch", ref), Fixed("openvino", bad), np.zeros((2, 3, 4, 4), np.float32))
    assert result.failures[0].startswith("logits: non-finite outputs (NaN or Inf)") and len(result.failures) == 1


# 9, 10, 11 -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("budget", ["nan", "inf", "-1", "0"])
def test_9_a_budget_must_be_finite_and_positive(tmp_path, budget):
    line = one_error_line(run("search", "--latency-budget-ms", budget, "--backend", "torch", "--out", tmp_path / "s"))
    assert "finite number > 0" in line and not (tmp_path / "s").exists()


def test_10_a_batch_is_bounded_by_the_memory_its_input_needs(tmp_path):
    out = tmp_path / "t"
    assert run("extract", "--config", "min", "--out", out / "dense").returncode == 0
    line = one_error_line(limited("bench", out, "--backend", "torch", "--batch", "1,100000000"))
    assert "batch 100000000 needs" in line and "GiB for its input alone" in line and "at most" in line


def test_11_a_long_legal_output_name_works(tmp_path):
    out = tmp_path / ("n" * 245)
    r = run("extract", "--config", "min", "--out", out)
    assert r.returncode == 0, r.stderr
    assert (out / "spec.json").is_file() and [p.name for p in tmp_path.iterdir()] == [out.name]


# 12 ------------------------------------------------------------------------------------------------------------
@pytest.mark.openvino
def test_12_openvino_telemetry_is_off(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    out = tmp_path / "t"
    env = {**os.environ, "HOME": str(home)}
    for args in (("extract", "--config", "min", "--out", out / "dense"), ("export", "onnx", out),
                 ("export", "openvino", out, "--precision", "int8"), ("parity", out, "--backend", "onnxruntime")):
        r = subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
    assert list(home.iterdir()) == []  # no ~/intel consent/client-id/stats, no onnxruntime device id or event store
    code = ("import sys, deploy_nas.export.backends.openvino_backend as b; b.ov_core(); import nncf\n"
            "print(sys.modules['openvino_telemetry'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.stdout.strip() == "None"


# 13 ------------------------------------------------------------------------------------------------------------
class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_13_unreadable_checkpoints_say_what_they_are_and_never_suggest_unpickling(tmp_path):
    (tmp_path / "random.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    save_file({k: v.contiguous() for k, v in default_supernet()[0].state_dict().items()},
              str(tmp_path / "safetensors.pth"))
    torch.save({"model": _Evil(tmp_path / "pwned")}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    torch.save({"model": _Evil(tmp_path / "pwned")}, tmp_path / "zip.pth")
    expected = {"random.pth": "is not a checkpoint: neither a torch file", "legacy.pth": "will not be unpickled",
                "zip.pth": "will not be unpickled"}
    for name, words in expected.items():
        r = run("extract", "--checkpoint", tmp_path / name, "--config", "max", "--out", tmp_path / "o")
        line = one_error_line(r)
        assert words in line and "weights_only" not in r.stderr and "can still be loaded" not in r.stderr
    assert not (tmp_path / "pwned").exists()
    r = run("extract", "--checkpoint", tmp_path / "safetensors.pth", "--config", "max", "--out", tmp_path / "s")
    assert r.returncode == 0, r.stderr  # safetensors content is recognised whatever the file is called


# 14 ------------------------------------------------------------------------------------------------------------
def test_14_a_misshapen_tensor_is_named_not_used_to_size_the_model(tmp_path):
    shape = tuple(default_supernet()[0].state_dict()["blocks.0.fc1.weight"].shape)
    bad = (shape[0] - 56, shape[1])
    ckpt = default_checkpoint(tmp_path / "c.pth", lambda sd: sd.update({"blocks.0.fc1.weight": torch.zeros(*bad)}))
    line = one_error_line(run("extract", "--checkpoint", ckpt, "--config", "max", "--out", tmp_path / "o"))
    assert f"misshapen: blocks.0.fc1.weight {bad} (expected {shape}) (1)" in line and "missing" not in line


# 15 ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [("extract", "--bogus"), ("run", "--config", "min", "--batch", "x", "--out", "o"),
                                  ("extract", "--config", "min"), ("bench",), ("nope",)])
def test_15_click_usage_errors_are_one_line_too(args):
    assert len(one_error_line(run(*args))) < 300


# 16, 17, 18 ----------------------------------------------------------------------------------------------------
@pytest.mark.openvino
@pytest.mark.parametrize("damage", ["truncate bin", "remove bin", "truncate xml"])
def test_16_a_damaged_ir_names_its_cause(tmp_path, damage):
    out = tmp_path / "t"
    for args in (("extract", "--config", "min", "--out", out / "dense"), ("export", "onnx", out),
                 ("export", "openvino", out)):
        assert run(*args).returncode == 0
    ir = out / "openvino" / "fp32"
    target = ir / ("model.xml" if "xml" in damage else "model.bin")
    if damage.startswith("remove"):
        target.unlink()
    else:
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    line = one_error_line(run("parity", out, "--backend", "openvino"))
    assert str(target) in line and ("missing" in line or "does not match build.json" in line)
    assert "core.cpp" not in line


def test_17_calibration_data_that_is_a_file_is_named_as_such(tmp_path):
    (tmp_path / "images.zip").write_bytes(b"PK")
    line = one_error_line(run("run", "--config", "min", "--backend", "openvino", "--precision", "int8",
                              "--calib-data", tmp_path / "images.zip", "--out", tmp_path / "o"))
    assert "is a file; point at a folder of images" in line


def test_18_threads_beyond_the_cores_are_capped_and_said(tmp_path):
    from deploy_nas.export.backends import default_threads

    out = tmp_path / "t"
    assert run("extract", "--config", "min", "--out", out / "dense").returncode == 0
    r = run("bench", out, "--backend", "torch", "--batch", "1", "--threads", "1000")
    assert r.returncode == 0 and f"--threads 1000 is more than the {default_threads()} cores" in r.stderr
    assert [row["threads"] for row in json.loads((out / "bench.json").read_text())] == [default_threads()]
    # every command's --threads, the search's too (its option comes from SearchRequest)
    r = run("search", "--threads", "1000", "--latency-budget-ms", "0", "--out", tmp_path / "s")
    assert r.returncode == 2 and f"--threads 1000 is more than the {default_threads()} cores" in r.stderr


# 19 ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_19_artifacts_get_the_modes_the_umask_gives(tmp_path, mask, tiny_supernet_dir):
    empty = tmp_path / "existing"
    empty.mkdir(mode=0o755)
    empty.chmod(0o750)
    env_umask = f"umask {mask:03o} && "
    for cmd in (f"{EXE} extract --config min --out {tmp_path / 'dense'}",
                f"{EXE} extract --config min --out {empty}",
                f"{EXE} search --supernet {tiny_supernet_dir} --backend torch --threads 1 --latency-budget-ms 1e9 "
                f"--generations 1 --population 4 --measure 8 --out {tmp_path / 's'}"):
        r = subprocess.run(env_umask + cmd, shell=True, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
    for root in (tmp_path / "dense", tmp_path / "s"):
        for p in [root, *root.rglob("*")]:
            want = (0o777 if p.is_dir() else 0o666) & ~mask
            assert p.stat().st_mode & 0o777 == want, (p, oct(p.stat().st_mode))
    assert empty.stat().st_mode & 0o777 == 0o750  # an existing directory keeps its mode
