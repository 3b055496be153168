"""A hostile try of ViT-Slim and PSViT (2026-12-07): one number in supernet.json that ran the machine out of memory,
a checkpoint with some masks missing pruned as if they were all ones, layout options that conflict or change nothing
taken silently, and advice to pass a --family that `slim prune` does not have. Each test failed on the code before
its fix."""
from __future__ import annotations

import json

import pytest
import torch

from tests.cli.test_extract_info import run
from tests.cli.test_reliability import limited, one_error_line
from tests.vitslim.helpers import arch, random_masked

BUDGETS = {"budget_attn": 0.5, "budget_mlp": 0.5, "budget_patch": 0.7}


def _supernet(tmp_path, family):
    from deploy_nas.family import FAMILIES
    from deploy_nas.spaces import SPACES
    from deploy_nas.supernets import save_supernet

    fam = FAMILIES.get(family)
    space = SPACES.get(fam.tiny_space)
    return save_supernet(fam.build_supernet(space, 0), tmp_path / f"sn_{family}", space)


def _checkpoint(path, drop=(), **extra):
    """A tiny ViT-Slim search checkpoint (2 blocks, 32 px) with random masks and its budgets, less the keys `drop`."""
    sd = random_masked(arch("deit-tiny", img_size=32, depth=2)).state_dict()
    for key in drop:
        del sd[key]
    torch.save({"model": {**sd, **extra}, "args": BUDGETS}, path)
    return path


EDITS = {  # one hand-edited size of supernet.json -> what the error names (each used to size layers or lists by it)
    "vitslim": (("depth", 1_000_000, "depth = 1000000 (1..1024)"), ("depth", 1025, "depth = 1025 (1..1024)"),
                ("pad_to", 1 << 20, "pad_to = 1048576 (1..256)"),
                ("embed_dim", 1 << 24, "parameters, more than any DeiT"),
                ("mlp_hidden", 1 << 30, "parameters, more than any DeiT"),
                ("img_size", 1 << 20, "img_size = 1048576 (must be integers in 1..4096)")),
    "psvit": (("cells", [2, 2, 100_000], "cells = [2, 2, 100000] (1 to 256 cells per stage"),
              ("cells", [2, 2, 257], "cells = [2, 2, 257]"),
              ("widths", [24, 40, 1 << 24], "parameters, more than any PSViT"),
              ("mlp_ratio", 1e9, "parameters, more than any PSViT"),
              ("img_size", 1 << 20, "img_size = 1048576 (must be integers in 1..4096)")),
}


@pytest.mark.parametrize("family", sorted(EDITS))
def test_a_huge_size_in_supernet_json_is_refused_before_anything_is_sized(tmp_path, family):
    sn = _supernet(tmp_path, family)
    meta = json.loads((sn / "supernet.json").read_text())
    name = {"vitslim": "ViT-Slim", "psvit": "PSViT"}[family]
    for field, value, named in EDITS[family]:
        (sn / "supernet.json").write_text(json.dumps({**meta, "arch": {**meta["arch"], field: value}}))
        line = one_error_line(run("extract", "--supernet", sn, "--config", "min", "--out", tmp_path / "o"))
        assert f"{name} supernet arch: " in line and named in line, line
    # the reported edits: 5 GB+ (ViT-Slim) and 24 GB (PSViT) before they were refused
    field, value, named = EDITS[family][0]
    (sn / "supernet.json").write_text(json.dumps({**meta, "arch": {**meta["arch"], field: value}}))
    assert named in one_error_line(limited("extract", "--supernet", sn, "--config", "min", "--out", tmp_path / "o",
                                           timeout=60))
    assert not (tmp_path / "o").exists()


def test_block_and_cell_numbers_beyond_any_model_are_refused_before_they_are_parsed(tmp_path):
    deep = _checkpoint(tmp_path / "deep.pth", **{"blocks.1000000.attn.zeta": torch.ones(1)})
    assert "a block numbered '1000000'; a ViT has at most 1024 blocks" in one_error_line(
        run("slim", "prune", "--checkpoint", deep, "--out", tmp_path / "o"))
    digits = _checkpoint(tmp_path / "digits.pth", **{f"blocks.{'9' * 5000}.attn.zeta": torch.ones(1)})
    assert "a block numbered '9999" in one_error_line(run("slim", "prune", "--checkpoint", digits, "--out",
                                                          tmp_path / "o"))
    from safetensors.torch import load_file

    sd = load_file(_supernet(tmp_path, "psvit") / "weights.safetensors")
    for cell, named in ((f"{'9' * 5000}", "numbers a stage or cell beyond any psvit supernet"),
                        ("²", "unexpected: stages.0.cells.².layer.x")):
        torch.save({"model": {**sd, f"stages.0.cells.{cell}.layer.x": torch.ones(1)}}, tmp_path / "ps.pth")
        assert named in one_error_line(run("extract", "--family", "psvit", "--checkpoint", tmp_path / "ps.pth",
                                           "--config", "min", "--out", tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_slim_prune_refuses_a_checkpoint_with_some_masks_missing(tmp_path):
    partial = _checkpoint(tmp_path / "partial.pth", drop=("blocks.1.attn.zeta", "blocks.1.mlp.zeta"))
    line = one_error_line(run("slim", "prune", "--checkpoint", partial, "--out", tmp_path / "o"))
    assert "has ViT-Slim masks but not blocks.1.attn.zeta, blocks.1.mlp.zeta" in line, line
    assert not (tmp_path / "o").exists()
    # a plain DeiT (no mask at all) still gets them at their initial values
    plain = _checkpoint(tmp_path / "plain.pth", drop=[f"blocks.{i}.{k}" for i in range(2)
                                                      for k in ("attn.zeta", "attn.patch_zeta", "mlp.zeta")])
    assert run("slim", "prune", "--checkpoint", plain, "--out", tmp_path / "o").returncode == 0


def test_layout_options_that_conflict_or_change_nothing_are_refused(tmp_path):
    ckpt = _checkpoint(tmp_path / "slim.pth")
    for flags, named in (
            (("--import-option", "head_layout=grouped", "--head-layout", "padded"),
             "import option head_layout given twice, as 'padded' and as 'grouped' (a --head-layout flag counts too)"),
            (("--import-option", "pad_to=8", "--pad-to", "4"),
             "import option pad_to given twice, as 4 and as 8 (a --pad-to flag counts too)"),
            (("--head-layout", "grouped", "--pad-to", "8"), "pad_to 8 rounds up padded head widths, and the grouped")):
        line = one_error_line(run("slim", "prune", "--checkpoint", ckpt, *flags, "--out", tmp_path / "o"))
        assert named in line, line
    line = one_error_line(run("extract", "--family", "vitslim", "--checkpoint", ckpt, "--config", "vitslim-0.5",
                              "--import-option", "pad_to=8", "--import-option", "head_layout=grouped", "--out",
                              tmp_path / "o"))
    assert "the grouped head layout pads nothing" in line
    sn = _supernet(tmp_path, "vitslim")  # a directory: the flags choose the layout; pad_to with grouped is refused
    budgets = ("--budget-attn", "0.5", "--budget-mlp", "0.5", "--budget-patch", "0.7")
    line = one_error_line(run("slim", "prune", "--checkpoint", sn, *budgets, "--head-layout", "grouped", "--pad-to",
                              "8", "--out", tmp_path / "o"))
    assert "the grouped head layout pads nothing" in line
    assert not (tmp_path / "o").exists()
    # the same value twice, and a layout alone, are fine
    r = run("slim", "prune", "--checkpoint", ckpt, "--import-option", "pad_to=8", "--pad-to", "8", "--out",
            tmp_path / "o")
    assert r.returncode == 0, r.stderr
    r = run("slim", "prune", "--checkpoint", sn, *budgets, "--head-layout", "grouped", "--out", tmp_path / "g")
    assert r.returncode == 0, r.stderr
    # a supernet.json written with both before they were refused together still loads (grouped ignores pad_to)
    meta = json.loads((sn / "supernet.json").read_text())
    meta["arch"].update(head_layout="grouped", pad_to=8)
    (sn / "supernet.json").write_text(json.dumps(meta))
    r = run("slim", "prune", "--checkpoint", sn, *budgets, "--out", tmp_path / "g2")
    assert r.returncode == 0, r.stderr


def test_slim_prune_on_another_familys_supernet_names_the_command_that_reads_it(tmp_path):
    sn = _supernet(tmp_path, "nasvit")
    line = one_error_line(run("slim", "prune", "--checkpoint", sn, "--out", tmp_path / "o"))
    assert f"{sn} holds a 'nasvit' supernet, not a ViT-Slim one" in line and "--family" not in line, line
    assert f"deploy-nas extract --supernet {sn} --config C" in line
    (tmp_path / "empty").mkdir()
    line = one_error_line(run("slim", "prune", "--checkpoint", tmp_path / "empty", "--out", tmp_path / "o"))
    assert "is not a ViT-Slim model directory (no supernet.json); pass a `deploy-nas slim search` output" in line
    assert not (tmp_path / "o").exists()
