"""A fourth hostile try of the CLI (2026-12-07, third session): a resume that replaced a model, a diverged training
saved as NaN weights, hand-edited deployment files and launch variables that were tracebacks, and options that
changed nothing. Each test failed on the code before its fix."""
from __future__ import annotations

import hashlib
import json
import subprocess

import torch

from tests.cli.test_extract_info import run
from tests.cli.test_reliability import one_error_line
from tests.cli_runner import EXE

TINY = ("--space", "autoformer-tiny", "--epochs", "1", "--batch-size", "8")


def _digests(d):
    return {p.relative_to(d): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def test_slim_search_resume_never_replaces_a_directory_with_nothing_to_resume(tmp_path):
    dense = tmp_path / "dense"
    assert run("extract", "--config", "min", "--out", dense).returncode == 0
    before = _digests(dense)
    line = one_error_line(run("slim", "search", "--epochs", "1", "--max-steps", "1", "--batch-size", "8", "--resume",
                              "--out", dense))
    assert "holds nothing to resume (no train_state.pt)" in line and _digests(dense) == before


def test_a_diverged_training_stops_before_it_saves(tmp_path):
    line = one_error_line(run("train", *TINY, "--max-steps", "3", "--lr", "1e30", "--warmup-epochs", "0",
                              "--out", tmp_path / "t"))
    assert "training diverged at" in line and "Lower --lr" in line and not (tmp_path / "t").exists()


def test_a_training_state_with_nan_weights_is_refused_on_resume(tmp_path):
    out = tmp_path / "t"
    assert run("train", *TINY, "--max-steps", "2", "--out", out).returncode == 0
    state = torch.load(out / "train_state.pt", weights_only=True)
    state["model"]["cls_token"].fill_(float("nan"))
    torch.save(state, out / "train_state.pt")
    before = _digests(out)
    line = one_error_line(run("train", *TINY[:2], "--epochs", "2", "--batch-size", "8", "--max-steps", "4",
                              "--resume", "--out", out))
    assert "holds non-finite weights (['cls_token']" in line and _digests(out) == before


def test_training_numbers_that_cannot_work_are_refused_before_any_step(tmp_path):
    for flags, named in ((("--warmup-epochs", "inf"), "warmup_epochs=inf"),
                         (("--warmup-epochs", "1e308"), "warmup_epochs=1e+308"),
                         (("--shift", "1000000000"), "--shift 1000000000 would move the 32x32 training images")):
        line = one_error_line(run("train", *TINY, "--max-steps", "1", *flags, "--out", tmp_path / "t"))
        assert named in line and not (tmp_path / "t").exists()


def test_training_options_that_would_change_nothing_are_refused(tmp_path):
    for flags, named in ((("--w-attn", "5"), "--w-attn (autoformer trains with rule 'sandwich', which does not use"),
                         (("--freeze-weights",), "--freeze-weights (autoformer trains with rule 'sandwich'"),
                         (("--projection-from-epoch", "5"), "--projection-from-epoch (gradient projection is off)"),
                         (("--distill-weight", "0.9", "--no-distill"), "--distill-weight (distillation is off)")):
        line = one_error_line(run("train", *TINY, "--max-steps", "1", *flags, "--out", tmp_path / "t"))
        assert "settings that would change nothing in this training: " + named in line, line
        assert not (tmp_path / "t").exists()
    line = one_error_line(run("train", "--family", "psvit", "--space", "psvit-tiny-2d", "--epochs", "1",
                              "--max-steps", "1", "--distill-weight", "0.9", "--w-attn", "3", "--out", tmp_path / "t"))
    assert ("--distill-weight (psvit trains with rule 'spos', which does not use it); --w-attn (psvit trains with "
            "rule 'spos', which does not use it); leave them out") in line


def test_hand_edited_deployment_files_are_named_not_tracebacks(tmp_path):
    dep, other = tmp_path / "dep", tmp_path / "other"
    assert run("extract", "--config", "min", "--out", dep / "dense").returncode == 0
    assert run("export", "onnx", dep).returncode == 0
    # a graph copied in from another deployment (another subnet) is not this directory's model.onnx
    assert run("extract", "--config", "max", "--out", other / "dense").returncode == 0
    assert run("export", "onnx", other).returncode == 0
    mine = (dep / "model.onnx").read_bytes()
    (dep / "model.onnx").write_bytes((other / "model.onnx").read_bytes())
    for args in (("parity", dep, "--backend", "onnxruntime"), ("bench", dep, "--backend", "onnxruntime"),
                 ("export", "openvino", dep)):
        line = one_error_line(run(*args))
        assert "model.onnx is not the graph model.onnx.json records" in line, line
    (dep / "model.onnx").write_bytes(mine)
    # a bench.json row edited by hand is dropped, not a TypeError after the timing
    assert run("bench", dep, "--backend", "onnxruntime", "--batch", "1").returncode == 0
    rows = json.loads((dep / "bench.json").read_text())
    rows[0]["batch"] = [1]
    (dep / "bench.json").write_text(json.dumps(rows))
    r = run("bench", dep, "--backend", "onnxruntime", "--batch", "1")
    assert r.returncode == 0, r.stderr
    assert [row["batch"] for row in json.loads((dep / "bench.json").read_text())] == [1]
    # a build.json whose file list is not a mapping
    assert run("export", "openvino", dep).returncode == 0
    build = dep / "openvino" / "fp32" / "build.json"
    meta = json.loads(build.read_text())
    build.write_text(json.dumps({**meta, "files": ["model.xml", "model.bin"]}))
    for args in (("parity", dep, "--backend", "openvino"), ("bench", dep, "--backend", "openvino")):
        assert "build.json is damaged (its precision or file list" in one_error_line(run(*args))
    # files of the user's in the engine directory: refused without naming a --force the command does not have
    build.write_text(json.dumps(meta))
    (dep / "openvino" / "fp32" / "mine.txt").write_text("notes")
    line = one_error_line(run("export", "openvino", dep))
    assert "refusing to replace" in line and "mine.txt" in line and "--force" not in line


def test_launch_variables_and_paths_that_are_not_text_are_one_line(tmp_path):
    # a command that joins a process group checks the launch (a traceback before); one that does not ignores it
    for env, named in (({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not a number"),
                       ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 asks for a multi-process run, but RANK=None")):
        line = one_error_line(run("train", *TINY, "--max-steps", "1", "--out", tmp_path / "t", env=env))
        assert named in line and not (tmp_path / "t").exists()
    for env in ({"RANK": "1"}, {"WORLD_SIZE": "abc"}):  # RANK=1 alone printed nothing and took no lock before
        r = run("extract", "--config", "min", "--out", tmp_path / "e", "--force", env=env)
        assert r.returncode == 0 and "extracted" in r.stdout and (tmp_path / "e" / "spec.json").is_file()
    bad = str(tmp_path).encode() + b"/bad\xffname"
    r = subprocess.run([EXE, "extract", "--config", "min", "--out", bad], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: a name that is not valid UTF-8"), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


def test_a_damaged_resume_is_named_before_the_data_is_read(tmp_path):
    """search --resume checks its log and measured.json before it decodes --data (hours on a large folder)."""
    from deploy_nas.io import record_written

    out = tmp_path / "s"
    out.mkdir()
    (out / "measured.json").write_text('{"abc": NaN}')
    record_written(out / "measured.json", create=True)  # a search's own file, damaged
    (tmp_path / "data" / "val" / "a").mkdir(parents=True)
    (tmp_path / "data" / "val" / "a" / "broken.png").write_bytes(b"not a png")
    line = one_error_line(run("search", "--latency-budget-ms", "1", "--data", tmp_path / "data", "--resume",
                              "--out", out))
    assert "measured.json is damaged: entry 'abc' is nan" in line, line


def test_bench_runs_and_warmup_are_bounded(tmp_path):
    for flag in ("--runs", "--warmup"):
        line = one_error_line(run("bench", tmp_path, "--backend", "torch", flag, str(10**20)))
        assert flag in line and "range" in line


def test_a_model_under_a_name_that_is_not_utf8_loads(tmp_path):
    """Writing under such a name is refused (above), but a model or checkpoint copied there must still read: the
    safetensors library takes only UTF-8 paths, and info called the weights corrupt before."""
    ok = tmp_path / "ok"
    assert run("extract", "--config", "min", "--out", ok).returncode == 0
    moved = str(tmp_path).encode() + b"/m\xff"
    ok.rename(moved.decode("utf-8", "surrogateescape"))
    r = subprocess.run([EXE, "info", moved], capture_output=True, timeout=120)
    assert r.returncode == 0 and b"params 0.154M" in r.stdout, r.stderr
