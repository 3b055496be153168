"""The NASViT user story with the installed console script: extract a subnet from an official-layout checkpoint with
an official config dict and recalibration images, inspect it, deploy it; bad input exits 2 with one line and writes
nothing; `train` on the tiny space."""
from __future__ import annotations

import json
import os
import random
import re
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from deploy_nas.data import load_image_folder
from deploy_nas.dense import load_dense
from deploy_nas.family import FAMILIES, Calibration
from deploy_nas.spaces import SPACES
from tests.cli.test_extract_info import EXE
from tests.nasvit.nasvit_helpers import random_supernet, tiny_space


def cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # small models on a shared machine: see conftest.py
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=600, env=env)


def invoke(capsys, *args):
    """The console script's own entry (`deploy_nas.cli:main`) in this process: (exit code, stdout, stderr). A
    fresh interpreter costs seconds of imports; `cli` runs the installed script where the story needs it."""
    from deploy_nas.cli import main

    try:
        main.main([str(a) for a in args], prog_name="deploy-nas")
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """An official-layout training checkpoint (model + model_ema), a folder of calibration images, an official
    config dict (as `sample_active_subnet(compute_flops=True)` returns it)."""
    root = tmp_path_factory.mktemp("nasvit")
    supernet = random_supernet(seed=6)
    torch.save({"model": random_supernet(seed=7).state_dict(), "model_ema": supernet.state_dict(), "epoch": 3},
               root / "nasvit_supernet.pth")
    rng = np.random.default_rng(0)
    for i in range(6):
        (root / "calib" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(rng.integers(0, 256, (56, 60, 3), dtype=np.uint8))
        image.save(root / "calib" / f"c{i % 2}" / f"{i}.png")
    cfg = tiny_space().sample(random.Random(4))
    (root / "a0.json").write_text(json.dumps({**cfg.to_official(), "flops": 3.1}))
    return root, supernet, cfg


def test_extract_with_recalibration_then_info_then_run(inputs, tmp_path, capsys):
    root, supernet, cfg = inputs
    r = cli("extract", "--family", "nasvit", "--checkpoint", root / "nasvit_supernet.pth", "--config", root / "a0.json",
            "--calib-data", root / "calib", "--out", tmp_path / "a0")
    assert r.returncode == 0, r.stderr
    model = load_dense(tmp_path / "a0")
    assert model.spec.img_size == cfg.resolution and model.spec.source["bn"].startswith("recalibrated on 6 images")
    calib = Calibration("recalibrate", load_image_folder(root / "calib", 48).images)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert (model(x) - supernet.fixed(cfg, calib)(x)).abs().max() <= 1e-4
    code, out, err = invoke(capsys, "info", tmp_path / "a0")
    assert code == 0, err
    assert out.count("transformer") == sum(d - 1 for d in cfg.depth[3:]) and "MBConv" in out
    pytest.importorskip("openvino")
    r = cli("run", "--dense", tmp_path / "a0", "--backend", "openvino", "--batch", "1", "--threads", "1", "--out",
            tmp_path / "deploy")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "deploy" / "report.json").read_text())
    assert report["passed"] and report["model"]["family"] == "nasvit" and report["model"]["arch"] == "nasvit"


def test_a_config_outside_the_space_exits_2_with_one_line_and_nothing_written(inputs, tmp_path):
    root, _, cfg = inputs
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**cfg.to_official(), "resolution": 56}))
    r = cli("extract", "--family", "nasvit", "--checkpoint", root / "nasvit_supernet.pth", "--config", bad, "--out",
            tmp_path / "out")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == "error: resolution = 56 is outside space 'nasvit-tiny' (allowed: 32, 40, 48)"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change, options, message", [
    ({"width": [16, 16, 24, 32, 48, 48, 56, 64, 96]}, (), r"width\[4\] \(mb4\) = 48 is outside space"),
    ({"depth": [2, 2, 2, 3, 3, 3, 9]}, (), r"depth\[6\] \(mb7\) = 9 is outside"),
    ({}, ("--bn", "recalibrate"), "no calibration images: NASViT recalibrates .* 64 batches"),
    ({"family": "autoformer"}, (), "family 'autoformer', not 'nasvit'")])
def test_bad_input_exits_2_with_one_line_and_nothing_written(inputs, tmp_path, capsys, change, options, message):
    root, _, cfg = inputs
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**cfg.to_official(), **change}))
    code, _, err = invoke(capsys, "extract", "--family", "nasvit", "--checkpoint", root / "nasvit_supernet.pth",
                          "--config", bad, *options, "--out", tmp_path / "out")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_of_another_family_exits_2(tmp_path, capsys):
    af = FAMILIES.get("autoformer").build_supernet(SPACES.get("autoformer-tiny"))
    torch.save({"model": af.state_dict()}, tmp_path / "af.pth")
    code, _, err = invoke(capsys, "extract", "--family", "nasvit", "--checkpoint", tmp_path / "af.pth", "--config",
                          "max", "--out", tmp_path / "out")
    assert code == 2 and "not a NASViT checkpoint" in err and not (tmp_path / "out").exists()


def test_train_the_tiny_space_then_extract_from_the_supernet_directory(tmp_path, capsys):
    r = cli("train", "--family", "nasvit", "--space", "nasvit-tiny", "--epochs", "1", "--max-steps", "2",
            "--batch-size", "16", "--no-save-state", "--out", tmp_path / "sn")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "sn" / "supernet.json").read_text())
    assert meta["family"] == "nasvit" and meta["train"]["grad_projection"] is True and meta["train"]["lr"] == 3e-4
    code, _, err = invoke(capsys, "extract", "--supernet", tmp_path / "sn", "--config", "min", "--out",
                          tmp_path / "min")
    assert code == 0, err
    assert load_dense(tmp_path / "min").spec.source["config"]["resolution"] == 32
    # trained on the embedded task, which supernet.json records: its BatchNorm is recalibrated on that task's train
    # split by default (the stored statistics are a mixture over every subnet trained), as search scores it
    assert load_dense(tmp_path / "min").spec.source["bn"] == "recalibrated on 4096 images in 64 batches of 64"
    assert "note: BatchNorm statistics recalibrated on 4096 images of the embedded task's train split" in err
    code, _, err = invoke(capsys, "extract", "--supernet", tmp_path / "sn", "--config", "min", "--bn", "stored",
                          "--out", tmp_path / "stored")
    assert code == 0 and "note: BatchNorm" not in err, err
    assert load_dense(tmp_path / "stored").spec.source["bn"] == "stored"
