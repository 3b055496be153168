"""`deploy-nas slim search|prune` as a user runs them: search on the embedded data, prune with given or stored
budgets, info shows the per-layer widths and tokens, run --dense deploys it; bad input exits 2 with one line and
writes nothing."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

from deploy_nas import load_dense
from deploy_nas.spaces.vitslim import SlimConfig
from deploy_nas.supernets import load_official
from tests.cli.test_extract_info import run
from tests.vitslim.helpers import arch, images, random_masked


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """A ViT-Slim search checkpoint of a DeiT-tiny (64 px) with random masks and its budgets in `args`."""
    path = tmp_path_factory.mktemp("official") / "vitslim_deit_tiny.pth"
    model = random_masked(arch("deit-tiny"), seed=0)
    args = argparse.Namespace(budget_attn=0.5, budget_mlp=0.5, budget_patch=0.7, model="deit_tiny_patch16_224")
    torch.save({"model": model.state_dict(), "epoch": 49, "args": args}, path)
    return path, model


def test_prune_reads_the_budgets_from_the_checkpoint_and_info_shows_the_layers(tmp_path, official):
    path, model = official
    r = run("slim", "prune", "--checkpoint", path, "--out", tmp_path / "s")
    assert r.returncode == 0, r.stderr
    assert "budgets attn 0.5 mlp 0.5 tokens 0.7" in r.stdout
    dense = load_dense(tmp_path / "s")
    x = images(model.arch)
    with torch.no_grad():
        assert (dense(x) - model(x, SlimConfig(0.5, 0.5, 0.7))).abs().max() <= 1e-5
    r = run("info", tmp_path / "s")
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert len(rows) == 12
    blocks = dense.spec.body.blocks
    for row, b in zip(rows, blocks):
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert int(cells[1]) == (len(b.tokens) if b.tokens else int(cells[1])) and int(cells[2]) == b.num_heads
        assert cells[3].startswith(",".join(map(str, b.head_widths)) if b.head_widths else "-")
        assert int(cells[6]) == b.mlp_hidden


def test_prune_with_given_budgets_and_grouped_heads(tmp_path, official):
    path, model = official
    r = run("slim", "prune", "--checkpoint", path, "--budget-attn", "0.3", "--head-layout", "grouped", "--out",
            tmp_path / "g")
    assert r.returncode == 0, r.stderr
    dense = load_dense(tmp_path / "g")
    assert json.loads((tmp_path / "g" / "spec.json").read_text())["source"]["config"]["budget_attn"] == 0.3
    with torch.no_grad():
        x = images(model.arch)
        assert (dense(x) - model(x, SlimConfig(0.3, 0.5, 0.7))).abs().max() <= 1e-5


@pytest.mark.slow
@pytest.mark.openvino
def test_search_then_prune_then_deploy(tmp_path):
    r = run("slim", "search", "--epochs", "1", "--max-steps", "4", "--batch-size", "16", "--w-attn", "1e-3",
            "--out", tmp_path / "slim")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "slim" / "ckpt.pth").is_file() and "searched masks" in r.stdout
    loaded, _ = load_official(tmp_path / "slim" / "ckpt.pth", "vitslim")
    for source in (tmp_path / "slim", tmp_path / "slim" / "ckpt.pth"):  # the directory or its official file
        out = tmp_path / ("p-" + source.name)
        r = run("slim", "prune", "--checkpoint", source, "--budget-attn", "0.5", "--budget-mlp", "0.5",
                "--budget-patch", "0.7", "--out", out)
        assert r.returncode == 0, r.stderr
    a, b = (load_dense(tmp_path / f"p-{n}") for n in ("slim", "ckpt.pth"))
    x = images(loaded.arch)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    r = run("run", "--dense", tmp_path / "p-slim", "--backend", "onnxruntime,openvino", "--batch", "1", "--runs",
            "50", "--threads", "1", "--out", tmp_path / "deploy")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "deploy" / "report.json").read_text())["passed"] is True


@pytest.mark.parametrize("args, message", [
    (["--budget-attn", "0"], "is not a budget"),
    (["--budget-mlp", "1.5"], "is not a budget"),
    (["--budget-patch", "nan"], "is not a budget"),
    (["--soft", "--budget-attn", "0.5"], "give no budgets"),
    (["--import-option", "head_layout=diagonal"], "padded or grouped"),
])
def test_bad_budgets_and_options_exit_2_with_nothing_written(tmp_path, official, args, message):
    r = run("slim", "prune", "--checkpoint", official[0], *args, "--out", tmp_path / "o")
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "o").exists()


def test_bad_checkpoints_exit_2_with_nothing_written(tmp_path):
    sd = random_masked(arch("deit-tiny")).state_dict()
    cases = {
        "zeta": {**sd, "blocks.0.attn.zeta": torch.ones(1, 1, 5, 1, 7)},
        "distilled": {**sd, "dist_token": torch.zeros(1, 1, 192)},
        "not-a-vit": {"conv.weight": torch.zeros(3, 3)},
    }
    for name, state in cases.items():
        torch.save({"model": state}, tmp_path / f"{name}.pth")
        r = run("slim", "prune", "--checkpoint", tmp_path / f"{name}.pth", "--budget-attn", "0.5", "--budget-mlp",
                "0.5", "--budget-patch", "0.5", "--out", tmp_path / name)
        assert r.returncode == 2 and r.stderr.startswith("error: "), (name, r.stderr)
        assert not (tmp_path / name).exists()
    r = run("slim", "search", "--base", tmp_path / "distilled.pth", "--out", tmp_path / "s")
    assert r.returncode == 2 and "distilled" in r.stderr and not (tmp_path / "s").exists()


def test_help_lists_the_family_commands():
    r = run("--help")
    assert r.returncode == 0 and "slim" in r.stdout
    r = run("slim", "search", "--help")
    assert r.returncode == 0 and "--w-attn" in r.stdout and "--num-random" not in r.stdout
