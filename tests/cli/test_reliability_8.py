"""An eighth hostile try of the CLI (2026-12-07, seventh session). Each test failed on the code before its fix."""
from __future__ import annotations

import json

import pytest

from tests.cli.test_extract_info import run
from tests.cli.test_reliability import one_error_line


def _earlier_demo(d, files=None):
    """A directory laid out as the demo leaves it: report.json (listing `files` when given), search/, deploy/,
    each file recorded as written by deploy-nas."""
    from deploy_nas.io import make_dirs, record_written

    make_dirs(d / "search")
    make_dirs(d / "deploy" / "openvino" / "fp32")
    (d / "search" / "pareto.json").write_text("{}")
    (d / "deploy" / "openvino" / "fp32" / "model.xml").write_text("<net/>")
    report = {"supernet": {}, "search": {}, "parity": {}, "bench": []}
    if files is not None:
        report["files"] = files
    (d / "report.json").write_text(json.dumps(report))
    for f in ("search/pareto.json", "deploy/openvino/fp32/model.xml", "report.json"):
        record_written(d / f, create=True)
    return d


def test_the_demo_does_not_replace_another_commands_output_inside_its_own(tmp_path):
    """The demo replaced its earlier output whole without being asked, with whatever another command had written
    inside it since (`export openvino --int8 --out DEMO/deploy/int8`: minutes of work, gone at the next `make demo`).
    Now the demo's report lists the files it wrote, and any other is refused without --force."""
    from deploy_nas.errors import OutputPathError
    from deploy_nas.io import make_dirs, record_written
    from deploy_nas.workflows import _demo_files, check_demo_output

    demo = _earlier_demo(tmp_path / "demo")
    listed = _demo_files(demo)
    assert listed == ["deploy/openvino/fp32/model.xml", "report.json", "search/pareto.json"]  # no markers
    report = json.loads((demo / "report.json").read_text())
    (demo / "report.json").write_text(json.dumps({**report, "files": listed}))  # recorded above
    check_demo_output(demo)  # only what the demo wrote: replaced without being asked (`make demo` twice)
    (demo / ".deploy.deploy-nas-lock").write_text("123")  # a lock left by a kill beside deploy/ is no user file
    check_demo_output(demo)

    make_dirs(demo / "deploy" / "int8")
    (demo / "deploy" / "int8" / "model.xml").write_text("<net/>")
    record_written(demo / "deploy" / "int8" / "model.xml", create=True)  # another deploy-nas command's output
    with pytest.raises(OutputPathError, match=r"files the demo did not write \('deploy/int8/model.xml'\)"):
        check_demo_output(demo)
    line = one_error_line(run("demo", "--out", demo, "--generations", "1"))
    assert "deploy/int8/model.xml" in line and "--force" in line
    assert (demo / "deploy" / "int8" / "model.xml").read_text() == "<net/>"
    check_demo_output(demo, force=True)  # asked: replaced with the rest


def test_an_older_demos_output_without_its_file_list_needs_force(tmp_path):
    from deploy_nas.errors import OutputPathError
    from deploy_nas.workflows import check_demo_output

    demo = _earlier_demo(tmp_path / "demo")
    with pytest.raises(OutputPathError, match="older demo.*--force"):
        check_demo_output(demo)
    check_demo_output(demo, force=True)


@pytest.mark.parametrize("given", ["dep", "dep/openvino/fp32"])
def test_the_rebuild_hint_names_the_deployment_whichever_directory_was_given(tmp_path, given):
    """Given the precision directory of a build that is gone, the hint said `export openvino dep/openvino/fp32/openvino`
    (the path it looked in, dep/openvino/fp32/openvino/fp32, two levels too deep)."""
    from deploy_nas.errors import ExportError
    from deploy_nas.export.backends import get_backend
    from deploy_nas.export.backends.base import BuildConfig

    (tmp_path / "dep" / "openvino" / "fp32").mkdir(parents=True)
    with pytest.raises(ExportError) as err:
        get_backend("openvino").load(tmp_path / given, BuildConfig(precision="fp32"))
    assert f"in {tmp_path / 'dep' / 'openvino' / 'fp32'};" in str(err.value)
    assert f"export openvino {tmp_path / 'dep'} --precision fp32" in str(err.value)


# ------------------------------------------------------------------- interruption, concurrency, the file system

def _mounted(where, size="64k"):
    """A fresh tmpfs of `size` at `where` (root only; the test skips where it cannot mount one). Unmount it after."""
    import shutil
    import subprocess

    where.mkdir(parents=True)
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                                                         str(where)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    return where


def _unmount(where):
    import subprocess

    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_temporary_of_another_pid_namespace_is_not_swept(tmp_path):
    """The sweep judged a temporary's maker by its pid alone: a live run in a container with the same host name
    (another pid namespace, pid 400 there) lost its temporary to a run outside, and failed."""
    import shutil
    import subprocess
    import sys

    from deploy_nas.io import sweep

    if shutil.which("unshare") is None:
        pytest.skip("no unshare here")
    make = ("import sys; from pathlib import Path; from deploy_nas.io import temp_name; "
            "d = Path(sys.argv[1]) / temp_name('A'); d.mkdir(); print(d.name)")
    r = subprocess.run(["unshare", "-pf", "--mount-proc", "bash", "-c",
                        'for i in $(seq 300); do /bin/true; done; "$0" -c "$1" "$2"; true', sys.executable, make,
                        str(tmp_path)], capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        pytest.skip(f"cannot make a pid namespace here: {r.stderr.strip()[-200:]}")
    made = tmp_path / r.stdout.strip()
    assert sweep(tmp_path) == [] and made.is_dir()  # whose it is, this namespace cannot tell: kept


def test_force_on_a_directory_holding_a_killed_runs_temporary_sweeps_it(tmp_path):
    """After `run --out outs/r` was killed, `extract --out outs --force` refused: the dead run's temporary and lock
    were 'files deploy-nas did not write'."""
    import os

    from deploy_nas.io import _HOST, TAG

    outs = tmp_path / "outs"
    assert run("extract", "--config", "min", "--out", outs / "e").returncode == 0
    dead = outs / f".r.{TAG}-{_HOST}-{2**22 + 7}-0badf00d.tmp"  # a pid above pid_max: no process has it
    (dead / "dense").mkdir(parents=True)
    (dead / "dense" / "weights.safetensors").write_bytes(b"half")
    (outs / f".r.{TAG}-lock").write_text(str(os.getpid() + 2**22))
    r = run("extract", "--config", "min", "--out", outs, "--force")
    assert r.returncode == 0, r.stderr[-2000:]
    assert not dead.exists() and (outs / "weights.safetensors").is_file()


def test_an_output_that_is_a_mount_point_is_refused_before_the_work(tmp_path):
    """`run --out vol` on a mount point (a docker volume) did all its work beside it, then failed to swap it in
    with 'Device or resource busy ... choose a writable location with free space'."""
    vol = _mounted(tmp_path / "vol", "8m")
    try:
        line = one_error_line(run("extract", "--config", "min", "--out", vol))
        assert "mount point" in line and "sub-directory" in line
        assert run("extract", "--config", "min", "--out", vol / "e").returncode == 0  # inside it: fine
    finally:
        _unmount(vol)


def test_a_full_disk_is_a_one_line_output_error_with_nothing_left(tmp_path):
    """On a full disk safetensors, torch.save and OpenVINO raised their own errors: a traceback and exit 1 (the
    code of a failed parity gate)."""
    small = _mounted(tmp_path / "small", "256k")  # the embedded max subnet's weights take ~1.8 MB
    try:
        line = one_error_line(run("extract", "--config", "max", "--out", small / "e"))
        assert "cannot write" in line and "weights.safetensors" in line and "free there" in line, line
        assert sorted(p.name for p in small.iterdir()) == []
    finally:
        _unmount(small)


def test_an_output_inside_the_data_folder_is_refused(tmp_path):
    """`search --data D --out D/val/s` wrote pareto.png into class folder s of D's val split: the resume (and every
    later use of D) failed with 'class folder s that the supernet was not trained on'."""
    data = tmp_path / "D"
    for split in ("train", "val", "test"):
        (data / split / "0").mkdir(parents=True)
        (data / split / "0" / "a.png").write_bytes(b"refused before any image is read")
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    line = one_error_line(run("search", "--data", data, "--latency-budget-ms", "5", "--generations", "1",
                              "--population", "4", "--measure", "8", "--out", data / "val" / "s"))
    assert "inside the input directory" in line and "read as data" in line
    line = one_error_line(run("run", "--config", "min", "--calib-data", data / "val", "--out", data / "val" / "x"))
    assert "inside the input directory" in line
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before


def test_a_suggested_command_keeps_a_path_that_begins_with_a_dash_a_path():
    from pathlib import Path

    from deploy_nas.errors import command

    assert command("export", "onnx", Path("-dash")) == "deploy-nas export onnx ./-dash"
    assert command("export", "onnx", Path("/abs/-x"), "--precision", "fp32") == \
        "deploy-nas export onnx /abs/-x --precision fp32"


def test_a_build_record_without_its_file_digests_is_not_taken_for_the_build(tmp_path):
    """With `files` deleted from build.json, parity ran on a model.bin changed since the build and PASSED."""
    from deploy_nas.errors import ExportError
    from deploy_nas.export.backends import get_backend
    from deploy_nas.export.backends.base import BuildConfig

    dep = tmp_path / "dep"
    assert run("run", "--config", "min", "--out", dep, "--backend", "openvino", "--batch", "1").returncode == 0
    build = dep / "openvino" / "fp32" / "build.json"
    record = json.loads(build.read_text())
    del record["files"]
    build.write_text(json.dumps(record))
    with pytest.raises(ExportError, match="does not list model.xml with its sha256"):
        get_backend("openvino").load(dep, BuildConfig(precision="fp32"))
    line = one_error_line(run("parity", dep, "--backend", "openvino"))
    assert "does not list model.xml" in line and "export openvino" in line


def test_bench_on_a_deployment_whose_dense_weights_are_gone_names_them(tmp_path):
    """`bench` printed the bare 'No such file or directory: .../dense/weights.safetensors'."""
    dep = tmp_path / "dep"
    assert run("run", "--config", "min", "--out", dep, "--backend", "onnxruntime", "--batch", "1").returncode == 0
    (dep / "dense" / "weights.safetensors").unlink()
    line = one_error_line(run("bench", dep, "--backend", "onnxruntime", "--batch", "1"))
    assert "weights.safetensors not found" in line and "extract" in line


def test_a_full_disk_while_training_is_a_one_line_output_error(tmp_path):
    """torch.save of train_state.pt on a full disk: 'RuntimeError: [enforce fail at inline_container.cc] unexpected
    pos', exit 1."""
    small = _mounted(tmp_path / "small", "1500k")  # autoformer-tiny's weights (0.9 MB) fit, its state (2.7) not
    try:
        r = run("train", "--space", "autoformer-tiny", "--epochs", "1", "--max-steps", "1", "--batch-size", "8",
                "--out", small / "sn")
        line = one_error_line(r)
        assert "cannot write" in line and "train_state.pt" in line and "free there" in line, line
        assert sorted(p.name for p in small.iterdir()) == []
    finally:
        _unmount(small)


def test_a_space_of_other_sizes_than_the_supernet_is_refused_before_any_work(tmp_path):
    """`search --space autoformer-tiny` (32 px, head dim 16) on the embedded default (48 px, 32) measured subnets for a
    minute, then failed on the data's size and left a directory that neither a rerun nor --resume could use;
    `extract` with it succeeded, ignoring the space's sizes."""
    line = one_error_line(run("search", "--space", "autoformer-tiny", "--latency-budget-ms", "5", "--measure", "8",
                              "--population", "4", "--generations", "1", "--out", tmp_path / "s"))
    assert "head_dim 16 (the supernet's: 32), img_size 32 (the supernet's: 48)" in line
    line = one_error_line(run("extract", "--space", "autoformer-tiny", "--config", "min", "--out", tmp_path / "e"))
    assert "img_size 32 (the supernet's: 48)" in line
    assert list(tmp_path.iterdir()) == []


def test_a_backend_or_precision_given_twice_is_built_once(tmp_path):
    """`run --backend openvino,openvino --precision fp32,fp32` built and timed one engine four times ([18/17]), and
    report.md showed four rows where bench.json kept one."""
    dep = tmp_path / "dep"
    r = run("run", "--config", "min", "--out", dep, "--backend", "onnxruntime,onnxruntime", "--precision",
            "fp32,fp32", "--batch", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((dep / "report.json").read_text())
    assert len(report["parity"]) == 1 and [r["backend"] for r in report["fps"]].count("onnxruntime") == 1
    for given in ("1,,8", ","):
        assert "an empty item" in one_error_line(run("bench", dep, "--batch", given))
    assert "'0': give one or more batch sizes" in one_error_line(run("bench", dep, "--batch", "0"))  # quoted once


def test_an_opset_below_the_dynamo_exporters_is_refused_not_raised(tmp_path):
    """`export onnx --dynamo --opset 17` wrote opset 18 without a word."""
    line = one_error_line(run("run", "--config", "min", "--dynamo", "--opset", "17", "--out", tmp_path / "d"))
    assert "opset 18 or later" in line
    assert not (tmp_path / "d").exists()


def test_a_checkpoint_pickled_with_protocol_4_is_named_as_such_not_damaged(tmp_path):
    import torch

    from deploy_nas.io import load_safetensors
    from deploy_nas.supernets import DEFAULT_DIR

    path = tmp_path / "p4.pth"
    torch.save(load_safetensors(DEFAULT_DIR / "weights.safetensors"), path, pickle_protocol=4)
    line = one_error_line(run("extract", "--checkpoint", path, "--config", "min", "--out", tmp_path / "o"))
    assert "pickle protocol 4 or 5" in line and "damaged" not in line
    assert not (tmp_path / "o").exists()


def test_a_misspelled_key_and_an_out_of_range_setting_are_named(tmp_path):
    """`{"num_head": ...}` said only 'config lacks num_heads'; `search --threads 0` listed every limit but the
    threads'."""
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"depth": 4, "embed_dim": 64, "mlp_ratio": [2.0] * 4, "num_head": [2] * 4}))
    line = one_error_line(run("extract", "--config", cfg, "--out", tmp_path / "o"))
    assert "lacks num_heads and has unknown keys ['num_head']" in line
    line = one_error_line(run("search", "--threads", "0", "--latency-budget-ms", "1", "--out", tmp_path / "s"))
    assert "threads=0 (allowed 1..4096)" in line


def test_an_error_raised_while_a_sigterm_unwinds_is_reported_as_the_sigterm(tmp_path):
    """A SIGTERM that arrived while safetensors read the dense weights came out of it as its own error ('could not
    determine the shape of object type UntypedStorage'): the run ended with exit 2 and 'not safetensors; re-extract
    the model', blaming an intact file."""
    import subprocess
    import sys

    code = ("import click, os, signal, time\n"
            "from deploy_nas.cli_options import main_one_line\n"
            "from deploy_nas.errors import CheckpointError\n"
            "@click.command()\n"
            "def cmd():\n"
            "    try:\n"
            "        os.kill(os.getpid(), signal.SIGTERM)\n"
            "        time.sleep(5)\n"
            "    except KeyboardInterrupt:  # what a library's callback does with it\n"
            "        raise CheckpointError('w.safetensors is not safetensors; re-extract the model') from None\n"
            "main_one_line(cmd, [])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 143 and r.stderr.strip() == "error: terminated (SIGTERM)", (r.returncode, r.stderr)
