"""PSViT as a user drives it, through the installed console script: train (SPOS) -> search -> run, info on the
dense model, a supernet state dict given as --checkpoint, and every bad config of the issue: exit 2, one line, no
output written."""
from __future__ import annotations

import json
import shlex

import pytest
import torch

from deploy_nas import load_dense
from deploy_nas.family import FAMILIES
from deploy_nas.spaces import SPACES, load_config
from deploy_nas.supernets import load_supernet_dir
from tests.cli.test_extract_info import run

FAMILY = FAMILIES.get("psvit")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A psvit-tiny-2d supernet after a few SPOS steps, as `deploy-nas train` writes it."""
    out = tmp_path_factory.mktemp("psvit") / "sn"
    r = run("train", "--family", "psvit", "--space", "psvit-tiny-2d", "--epochs", "1", "--max-steps", "3",
            "--batch-size", "16", "--out", out)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert rows[0]["steps"] == 3 and {"val_top1_max", "val_top1_min", "val_top1_paths"} <= set(rows[0])
    meta = json.loads((out / "supernet.json").read_text())
    assert meta["family"] == "psvit" and meta["train"]["distill"] is False and meta["space"]["name"] == "psvit-tiny-2d"
    return out


def test_train_search_run_and_info(trained, tmp_path):
    r = run("search", "--supernet", trained, "--backend", "torch", "--threads", "1", "--latency-budget-ms", "1000",
            "--generations", "1", "--population", "4", "--measure", "8", "--out", tmp_path / "search")
    assert r.returncode == 0, r.stderr
    best = load_config(tmp_path / "search" / "best.json", "psvit")
    assert SPACES.get("psvit-tiny-2d").validate(best) is best
    # the command the search prints deploys its winner as it stands (the supernet it searched included)
    printed = shlex.split(r.stdout.rsplit("deploy it with `", 1)[1].split("`")[0])
    assert printed[:2] == ["deploy-nas", "run"] and printed[-2:] == ["--out", "DEPLOY_DIR"]
    r = run(*printed[1:-1], tmp_path / "deploy", "--backend", "onnxruntime", "--batch", "1", "--runs", "50",
            "--threads", "1")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "deploy" / "report.json").read_text())
    assert report["passed"] and report["model"]["family"] == "psvit" and report["model"]["config_id"] == best.id
    assert report["model"]["layers"] == best.layer_string()  # the short form docs/psvit.md shows
    assert f"- layers: {best.layer_string()}" in (tmp_path / "deploy" / "report.md").read_text()
    r = run("info", tmp_path / "deploy" / "dense")
    assert r.returncode == 0, r.stderr
    assert "pooling 2d" in r.stdout and "GMAC" in r.stdout and f"layers {best.layer_string()}" in r.stdout
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ") and line.split("|")[2].strip().isdigit()]
    assert len(rows) == best.num_layers


def invoke(*args):
    """The CLI in process (the console script itself is exercised above): exit_code, stdout, stderr."""
    from click.testing import CliRunner

    from deploy_nas.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_a_state_dict_as_checkpoint(trained, tmp_path):
    supernet, space = load_supernet_dir(trained)
    torch.save({"model": supernet.state_dict()}, tmp_path / "psvit.pth")
    r = invoke("extract", "--checkpoint", tmp_path / "psvit.pth", "--config", "max", "--out", tmp_path / "max")
    assert r.exit_code == 0, r.stderr  # claimed by the psvit importer, the space matched by its sizes
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (load_dense(tmp_path / "max")(x) - supernet(x, space.sample(None, "max"))).abs().max() <= 1e-5
    other = FAMILY.build_supernet(SPACES.get("psvit-tiny-1d").__class__.from_dict(
        {**SPACES.get("psvit-tiny-1d").to_dict(), "num_classes": 7}), 0)
    torch.save(other.state_dict(), tmp_path / "seven.pth")
    r = invoke("extract", "--checkpoint", tmp_path / "seven.pth", "--config", "min", "--out", tmp_path / "seven")
    assert r.exit_code == 2 and "--import-option head_dim=N" in r.stderr and not (tmp_path / "seven").exists()
    r = invoke("extract", "--checkpoint", tmp_path / "seven.pth", "--import-option", "head_dim=8", "--config", "min",
               "--out", tmp_path / "seven")
    assert r.exit_code == 0, r.stderr
    assert load_dense(tmp_path / "seven").spec.num_classes == 7


GOOD = {"family": "psvit", "widths": [16, 32, 48], "tokens": [64, 16, 4]}


@pytest.mark.parametrize("doc, message", [
    ({**GOOD, "cells": [["layer", "shared"], ["layer"], ["shared", "identity"]]}, "cells[1] has 1 cells"),
    ({**GOOD, "cells": [["layer", "shared"], ["layer", "double"], ["shared", "identity"]]}, "'double' is not a cell"),
    ({**GOOD, "layers": "A AR | R A | AR -"}, "cannot cross a stage boundary"),
    ({**GOOD, "cells": [["identity"] * 2] * 3}, "no layer is left"),
    ({**GOOD, "widths": [24, 16, 48], "cells": [["layer"] * 2] * 3}, "widths that increase"),
])
def test_bad_configs_exit_2_and_write_nothing(trained, tmp_path, doc, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    r = invoke("extract", "--supernet", trained, "--config", path, "--out", tmp_path / "out")
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
