"""A third hostile try of the CLI (2026-12-07, second session): options that changed nothing were silently accepted,
and hand-edited inputs that failed late. Each test failed on the code before its fix."""
from __future__ import annotations

import numpy as np
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
    for flags, named in ((("--bn", "stored"), "--bn"), (("--no-gp",), "--no-gp"), (("--config", "max"), "--config")):
        line = one_error_line(run("run", "--dense", tmp_path / "dense", *flags, "--out", tmp_path / "o"))
        assert line.endswith(f"do not combine it with {named}")
        assert not (tmp_path / "o").exists()


def test_a_hand_edited_vitslim_arch_is_refused_at_load(tmp_path):
    import json

    from deploy_nas.family import FAMILIES
    from deploy_nas.spaces import SPACES
    from deploy_nas.supernets import save_supernet

    fam = FAMILIES.get("vitslim")
    space = SPACES.get(fam.tiny_space)
    sn = tmp_path / "sn"
    save_supernet(fam.build_supernet(space), sn, space)
    assert run("extract", "--supernet", sn, "--config", "max", "--out", tmp_path / "ok").returncode == 0
    meta = json.loads((sn / "supernet.json").read_text())
    for field, value in (("norm_eps", "x"), ("norm_eps", -1.0), ("mask", "rows"), ("head_layout", 3),
                         ("num_heads", 5), ("pad_to", 0), ("depth", 2.5), ("patch_size", 4096)):
        (sn / "supernet.json").write_text(json.dumps({**meta, "arch": {**meta["arch"], field: value}}))
        line = one_error_line(run("extract", "--supernet", sn, "--config", "max", "--out", tmp_path / "o"))
        assert "ViT-Slim supernet arch" in line and field in line, line
    assert not (tmp_path / "o").exists()
