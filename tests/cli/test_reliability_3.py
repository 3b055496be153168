"""A third hostile try of the CLI (2026-12-07, second session): options that changed nothing were silently accepted,
and hand-edited inputs that failed late. Each test failed on the code before its fix."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.cli.test_extract_info import run
from tests.cli.test_reliability import one_error_line


def _images(root):
    (root / "a").mkdir(parents=True)
    Image.fromarray(np.full((48, 48, 3), 128, np.uint8)).save(root / "a" / "x.png")
    return root


def test_batchnorm_options_are_refused_where_there_is_no_batchnorm(tmp_path):
    imgs = _images(tmp_path / "imgs")
    for args in (("extract", "--config", "min", "--bn", "stored"), ("extract", "--config", "min", "--calib-data", imgs),
                 ("run", "--config", "min", "--backend", "onnxruntime", "--calib-data", imgs)):
        line = one_error_line(run(*args, "--out", tmp_path / "o"))
        assert "autoformer subnets have no BatchNorm to calibrate (families with it: nasvit" in line
        assert not (tmp_path / "o").exists()
    assert run("extract", "--config", "min", "--out", tmp_path / "dense").returncode == 0
    for flags, named in ((("--bn", "stored"), "--bn"), (("--no-gp",), "--no-gp"), (("--config", "max"), "--config"),
                         (("--calib-data", imgs), "--calib-data (it calibrates int8 builds only)")):
        line = one_error_line(run("run", "--dense", tmp_path / "dense", *flags, "--out", tmp_path / "o"))
        assert line.endswith(f"do not combine it with {named}")
        assert not (tmp_path / "o").exists()


ARCH_EDITS = {
    "vitslim": ("ViT-Slim", (("norm_eps", "x"), ("norm_eps", -1.0), ("mask", "rows"), ("head_layout", 3),
                             ("num_heads", 5), ("pad_to", 0), ("depth", 2.5), ("patch_size", 4096))),
    "s3": ("S3", (("img_size", "32"), ("patch_size", 4096), ("patch_norm", "no"), ("num_classes", 0))),
    "psvit": ("PSViT", (("widths", [64.5, 128]), ("cells", []), ("pooling", "3d"), ("mlp_ratio", float("nan")),
                        ("head_dim", -1))),
}


@pytest.mark.parametrize("family", sorted(ARCH_EDITS))
def test_a_hand_edited_supernet_arch_is_refused_at_load(tmp_path, family):
    from deploy_nas.family import FAMILIES
    from deploy_nas.spaces import SPACES
    from deploy_nas.supernets import save_supernet

    fam = FAMILIES.get(family)
    space = SPACES.get(fam.tiny_space)
    sn = tmp_path / "sn"
    save_supernet(fam.build_supernet(space), sn, space)
    assert run("extract", "--supernet", sn, "--config", "max", "--out", tmp_path / "ok").returncode == 0
    meta = json.loads((sn / "supernet.json").read_text())
    name, edits = ARCH_EDITS[family]
    for field, value in edits:
        (sn / "supernet.json").write_text(json.dumps({**meta, "arch": {**meta["arch"], field: value}}))
        line = one_error_line(run("extract", "--supernet", sn, "--config", "max", "--out", tmp_path / "o"))
        assert f"{name} supernet arch" in line and field in line, line
    assert not (tmp_path / "o").exists()


def test_resume_never_stands_in_for_force(tmp_path):
    dense = tmp_path / "dense"
    assert run("extract", "--config", "min", "--out", dense).returncode == 0  # deploy-nas's own, nothing to resume
    before = sorted(p.name for p in dense.iterdir())
    train = ("train", "--space", "autoformer-tiny", "--epochs", "1", "--max-steps", "1", "--batch-size", "8")
    search = ("search", "--backend", "torch", "--latency-budget-ms", "5", "--population", "4", "--measure", "8")
    for args, needs in ((train, "train_state.pt"), (search, "generations.jsonl or measured.json or latency.json")):
        line = one_error_line(run(*args, "--out", dense, "--resume"))
        assert line.endswith(f"holds nothing to resume (no {needs}); pass the directory of the interrupted run, or "
                             "choose a new path")
        assert sorted(p.name for p in dense.iterdir()) == before  # the dense model is still there


def test_hand_edited_dense_specs_fail_at_load(tmp_path):
    import shutil

    dense = tmp_path / "dense"
    assert run("extract", "--config", "min", "--out", dense).returncode == 0
    spec = json.loads((dense / "spec.json").read_text())
    flat = {**{k: v for k, v in spec.items() if k != "body"}, **spec["body"], "format_version": 1}
    edits = {"block 0: relative positions need all 37 tokens, not 3": {"body": {"blocks": [{"tokens": [1, 2, 3]}]}},
             "tokens = (0, 0) must be increasing positions in 0..36": {"body": {"blocks": [{"tokens": [0, 0]}]}},
             "head_widths = (8,) must give each of the 2 heads": {"body": {"blocks": [{"head_widths": [8]}]}},
             "img_size = 1000000000000 (must be integers in 1..4096)": {"img_size": 10**12}}
    for i, (message, edit) in enumerate(edits.items()):
        bad = json.loads(json.dumps(spec))
        bad.update({k: v for k, v in edit.items() if k != "body"})
        for block, change in zip(bad["body"]["blocks"], edit.get("body", {}).get("blocks", [])):
            block.update(change)
        shutil.copytree(dense, tmp_path / f"m{i}")
        (tmp_path / f"m{i}" / "spec.json").write_text(json.dumps(bad))
        assert message in one_error_line(run("info", tmp_path / f"m{i}"))
    for value in (48.7, " 48 ", -48):  # format 1 gets the checks of format 2
        (dense / "spec.json").write_text(json.dumps({**flat, "img_size": value}))
        assert "img_size" in one_error_line(run("info", dense))
    (dense / "spec.json").write_text(json.dumps(flat))
    assert run("info", dense).returncode == 0


def test_options_without_effect_on_dense_and_slim_commands(tmp_path):
    dense = tmp_path / "dense"
    assert run("extract", "--config", "min", "--out", dense).returncode == 0
    line = one_error_line(run("run", "--dense", dense, "--family", "nasvit", "--out", tmp_path / "o"))
    assert line.endswith("do not combine it with --family")
    line = one_error_line(run("slim", "prune", "--checkpoint", dense, "--import-option", "num_heads=3", "--out",
                              tmp_path / "o"))
    assert "reads an official checkpoint file" in line
    line = one_error_line(run("slim", "prune", "--checkpoint", dense, "--soft", "--head-layout", "grouped", "--out",
                              tmp_path / "o"))
    assert "drop --head-layout/--pad-to" in line
    assert not (tmp_path / "o").exists()


SPEC_EDITS = {  # path in spec.json -> a value that used to reach a layer (a traceback at the first forward pass)
    "nasvit": ((("stem_stride",), -1), (("blocks", 0, "stride"), 2.5), (("blocks", 1, "pool_padding"), "x"),
               (("norm_eps",), -1)),
    "s3": ((("stages", 0, "blocks", 0, "attn_scale"), "x"), (("stages", 1, "blocks", 0, "attn_scale"), None)),
    "psvit": ((("attn_scale",), None), (("norm_eps",), "x")),
}


@pytest.mark.parametrize("family", sorted(SPEC_EDITS))
def test_hand_edited_specs_of_every_arch_fail_at_load(tmp_path, family):
    from deploy_nas.family import FAMILIES
    from deploy_nas.spaces import SPACES
    from deploy_nas.supernets import save_supernet

    fam = FAMILIES.get(family)
    space = SPACES.get(fam.tiny_space)
    save_supernet(fam.build_supernet(space), tmp_path / "sn", space)
    dense = tmp_path / "dense"
    assert run("extract", "--supernet", tmp_path / "sn", "--config", "min", "--out", dense).returncode == 0
    spec = json.loads((dense / "spec.json").read_text())
    for path, value in SPEC_EDITS[family]:
        bad = json.loads(json.dumps(spec))
        node = bad["body"]
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        (dense / "spec.json").write_text(json.dumps(bad))
        assert f"{path[-1]} = " in one_error_line(run("info", dense))
