"""A second hostile try of the CLI (2026-12-07), each finding reproduced through the console script: it failed on the
code before the fix (a user's file overwritten, a traceback, exit 1 or 130, a mangled log) and passes now."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from deploy_nas.supernets import DEFAULT_DIR
from tests.cli.test_extract_info import run
from tests.cli.test_reliability import one_error_line


def test_commands_on_a_deployment_never_replace_a_file_deploy_nas_did_not_write(tmp_path):
    dep = tmp_path / "dep"
    dep.mkdir()  # made by the user: no marker
    assert run("extract", "--config", "min", "--out", dep / "dense").returncode == 0
    mine = {"model.onnx": "my onnx", "parity.json": "my notes", "bench.json": "my timings"}
    for name, text in mine.items():
        (dep / name).write_text(text)
    for args in (("export", "onnx", dep), ("parity", "--backend", "onnxruntime", dep),
                 ("bench", "--backend", "onnxruntime", "--batch", "1", dep)):
        assert "did not write" in one_error_line(run(*args))
    assert {name: (dep / name).read_text() for name in mine} == mine
    for name in mine:
        (dep / name).unlink()
    for _ in range(2):  # written by deploy-nas in a directory it did not make: its own to replace next time
        assert run("export", "onnx", dep).returncode == 0
    assert run("parity", "--backend", "onnxruntime", dep).returncode == 0
    assert json.loads((dep / "parity.json").read_text())["onnxruntime/fp32"]["passed"] is True


def test_a_search_log_cut_by_an_interrupt_is_mended_on_resume(tmp_path, tiny_supernet_dir):
    out = tmp_path / "s"
    args = ["search", "--supernet", tiny_supernet_dir, "--backend", "torch", "--threads", "1", "--latency-budget-ms",
            "1000", "--population", "8", "--measure", "8", "--out", out]
    assert run(*args, "--generations", "1").returncode == 0
    log = out / "generations.jsonl"
    with open(log, "a") as f:
        f.write('{"generation": 1, "evalu')  # what a kill in the middle of a write leaves
    r = run(*args, "--generations", "2", "--resume")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [row["generation"] for row in rows] == [0, 1]


def test_a_damaged_training_state_is_named_not_taken_for_an_interrupt(tmp_path):
    out = tmp_path / "t"
    train = ["train", "--space", "autoformer-tiny", "--epochs", "1", "--max-steps", "1", "--batch-size", "8",
             "--out", out]
    assert run(*train).returncode == 0 and (out / "train_state.pt").is_file()
    for damage in (b"", b"\x80\x04garbage", None):
        if damage is None:
            torch.save([1, 2], out / "train_state.pt")
        else:
            (out / "train_state.pt").write_bytes(damage)
        assert "train_state.pt" in one_error_line(run(*train, "--resume"))


def test_paths_the_file_system_refuses_are_one_line_errors(tmp_path):
    long = tmp_path / ("b" * 300)
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    for args in (("extract", "--config", "min", "--out", long), ("extract", "--config", long, "--out", tmp_path / "o"),
                 ("info", long), ("extract", "--config", "min", "--out", tmp_path / "loop1" / "x")):
        one_error_line(run(*args))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop1", "loop2"]


def test_sizes_in_space_supernet_and_spec_files_are_checked_before_use(tmp_path):
    meta = json.loads((DEFAULT_DIR / "supernet.json").read_text())
    for field, value in (("patch_size", 0), ("mlp_ratio", [float("inf")]), ("num_classes", 0),
                         ("max_relative_position", -1), ("embed_dim", ["abc"])):
        space = tmp_path / f"space_{field}.json"
        space.write_text(json.dumps({**meta["space"], field: value}))
        assert field in one_error_line(run("extract", "--space", space, "--config", "min", "--out", tmp_path / "o"))
    for field, value in (("patch_size", 0), ("head_dim", 0), ("mlp_hidden", -5), ("gp", "yes")):
        sn = tmp_path / f"sn_{field}"
        shutil.copytree(DEFAULT_DIR, sn)
        (sn / "supernet.json").write_text(json.dumps({**meta, "arch": {**meta["arch"], field: value}}))
        assert field in one_error_line(run("extract", "--supernet", sn, "--config", "min", "--out", tmp_path / "o"))
    (sn / "supernet.json").write_text(json.dumps({**meta, "arch": "x"}))
    assert "supernet.json" in one_error_line(run("extract", "--supernet", sn, "--config", "min", "--out",
                                                  tmp_path / "o"))
    dense = tmp_path / "dense"
    assert run("extract", "--config", "min", "--out", dense).returncode == 0
    spec = json.loads((dense / "spec.json").read_text())
    edits = [lambda s: s["body"].update(patch_size=0), lambda s: s.update(img_size=0),
             lambda s: s["body"].update(norm_eps="x"), lambda s: s["body"]["blocks"][0].update(masked_tokens=-5)]
    for edit in edits:
        bad = json.loads(json.dumps(spec))
        edit(bad)
        (dense / "spec.json").write_text(json.dumps(bad))
        assert "spec.json" in one_error_line(run("info", dense))
    assert not (tmp_path / "o").exists()


def test_option_values_without_meaning_are_usage_errors(tmp_path):
    for batch in (",", "", "0"):
        assert "--batch" in one_error_line(run("bench", "--backend", "onnxruntime", "--batch", batch, tmp_path))
    assert "pad-to" in one_error_line(run("slim", "prune", "--pad-to", "1000000", "--out", tmp_path / "o"))
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "thesis.tex").write_text("mine")
    line = one_error_line(run("demo", "--out", tmp_path / "demo"))
    assert "thesis.tex" in line and "--force" not in line  # the demo has no --force to suggest
    assert Path(tmp_path / "demo" / "thesis.tex").read_text() == "mine"


def test_a_key_given_twice_is_refused_not_overridden(tmp_path):
    rest = '"embed_dim": 64, "mlp_ratio": [2, 2, 2, 2], "num_heads": [2, 2, 2, 2]'
    (tmp_path / "c.json").write_text('{"depth": 4, "depth": 5, ' + rest + "}")
    (tmp_path / "c.yaml").write_text("depth: 4\nembed_dim: 64\ndepth: 5\nmlp_ratio: [2, 2, 2, 2]\n"
                                     "num_heads: [2, 2, 2, 2]\n")
    for config in ("c.json", "c.yaml"):
        assert "twice" in one_error_line(run("extract", "--config", tmp_path / config, "--out", tmp_path / "o"))
    assert not (tmp_path / "o").exists()
