"""The installed console script: extract and info, exit codes and no partial output on bad input."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from deploy_nas import load_dense

# DEPLOY_NAS_EXE: test another build of the CLI (e.g. an older one, to see a reproduction fail there); `run` forks a
# warm server unless that or DEPLOY_NAS_FRESH=1 asks for a fresh process per call (tests/cli_runner.py)
from tests.cli_runner import EXE, run  # noqa: E402,F401  (the other CLI test modules import both from here)
from tests.conftest import OFFICIAL, make_supernet, narrow_space


def test_help_works_without_backends():
    r = run("--help")
    assert r.returncode == 0 and "extract" in r.stdout and "info" in r.stdout


def test_extract_default_supernet_then_info(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"depth": 4, "embed_dim": 96, "mlp_ratio": [2, 3, 4, 2], "num_heads": [2, 3, 4, 2]}))
    r = run("extract", "--config", cfg, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    model = load_dense(tmp_path / "out")
    assert [b.num_heads for b in model.spec.body.blocks] == [2, 3, 4, 2]
    r = run("info", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "params" in r.stdout and "GMAC" in r.stdout and "head widths" in r.stdout


def test_extract_official_checkpoint_with_official_yaml_config(tmp_path):
    space = narrow_space("autoformer-S")
    supernet = make_supernet(space, seed=1, reference_relpos=False)
    ckpt = tmp_path / "supernet-small.pth"
    torch.save({"model": supernet.state_dict(), "epoch": 1}, ckpt)
    sub = tmp_path / "sub.yaml"
    official = (OFFICIAL / "autoformer" / "AutoFormer-S.yaml").read_text()
    sub.write_text(official.replace("EMBED_DIM: 384", "EMBED_DIM: 48"))
    r = run("extract", "--family", "autoformer", "--checkpoint", ckpt, "--config", sub, "--out", tmp_path / "s")
    assert r.returncode == 0, r.stderr
    x = torch.randn(2, 3, 32, 32)
    from deploy_nas.spaces import load_config
    with torch.no_grad():
        assert (load_dense(tmp_path / "s")(x) - supernet(x, load_config(sub, "autoformer"))).abs().max() <= 1e-5


def _bad_checkpoint(tmp_path: Path) -> Path:
    p = tmp_path / "trunc.pth"
    torch.save({"model": {"x": torch.zeros(10)}}, p)
    p.write_bytes(p.read_bytes()[:50])
    return p


@pytest.mark.parametrize("case", ["outside_space", "other_family", "truncated", "missing_keys", "not_checkpoint",
                                  "out_is_file", "unknown_family"])
def test_bad_input_exits_2_with_one_line_and_no_output(tmp_path, case):
    out = tmp_path / "out"
    args = ["extract", "--config", "autoformer-t", "--out", out]  # T preset does not fit the tiny default
    if case == "other_family":
        (tmp_path / "c.json").write_text(json.dumps({"family": "nasvit", "depth": 1}))
        args = ["extract", "--config", tmp_path / "c.json", "--out", out]
    elif case == "truncated":
        args += ["--checkpoint", _bad_checkpoint(tmp_path)]
    elif case == "missing_keys":
        sd = make_supernet(narrow_space("autoformer-S"), reference_relpos=False).state_dict()
        sd.pop("blocks.1.fc1.weight")
        torch.save({"model": sd}, tmp_path / "m.pth")
        args += ["--checkpoint", tmp_path / "m.pth"]
    elif case == "not_checkpoint":
        (tmp_path / "x.pth").write_text("not a checkpoint")
        args += ["--checkpoint", tmp_path / "x.pth"]
    elif case == "out_is_file":
        out.write_text("i am a file")
    elif case == "unknown_family":
        args += ["--family", "nope"]
    r = run(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    if case == "missing_keys":
        assert "blocks.1.fc1.weight" in lines[0]
    if case == "out_is_file":
        assert out.read_text() == "i am a file"
    else:
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temp dir left


def test_info_on_corrupt_dir_exits_2(tmp_path):
    (tmp_path / "spec.json").write_text("{not json")
    (tmp_path / "weights.safetensors").write_bytes(b"junk")
    r = run("info", tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: ")


def test_import_options_reach_the_importer_and_aliases_agree(tmp_path):
    space = narrow_space("autoformer-S")
    supernet = make_supernet(space, seed=2, reference_relpos=False, gp=False)
    ckpt = tmp_path / "sn.pth"
    torch.save({"model": supernet.state_dict()}, ckpt)
    cfg = space.sample(__import__("random").Random(0))
    (tmp_path / "c.json").write_text(cfg.to_json())
    x = torch.randn(2, 3, 32, 32)
    for name, flags in (("a", ["--import-option", "gp=false"]), ("b", ["--no-gp"])):
        r = run("extract", "--checkpoint", ckpt, "--config", tmp_path / "c.json", *flags, "--out", tmp_path / name)
        assert r.returncode == 0, r.stderr
        with torch.no_grad():
            assert (load_dense(tmp_path / name)(x) - supernet(x, cfg)).abs().max() <= 1e-5
    assert load_dense(tmp_path / "a").spec.body.pool == "cls"
    r = run("extract", "--checkpoint", ckpt, "--config", "max", "--import-option", "windows=7", "--out", tmp_path / "c")
    assert r.returncode == 2 and r.stderr.startswith("error: import option 'windows=7'")
    assert not (tmp_path / "c").exists()
    r = run("extract", "--checkpoint", ckpt, "--config", "max", "--import-option", "gp=true", "--no-gp", "--out",
            tmp_path / "c")  # an option and its flag disagree: refused, not one of them silently
    assert r.returncode == 2 and r.stderr.startswith("error: import option gp given twice")
    assert not (tmp_path / "c").exists()
    r = run("extract", "--config", "max", "--import-option", "gp=false", "--out", tmp_path / "d")
    assert r.returncode == 2 and "pass --checkpoint" in r.stderr


def test_family_choices_come_from_the_registry(tmp_path):
    r = run("extract", "--family", "nope", "--config", "max", "--out", tmp_path / "o")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("error: Invalid value for '--family': 'nope' is not") and "'autoformer'" in r.stderr


def test_info_renders_full_markdown_when_piped_and_reads_format_1():
    r = run("info", OFFICIAL.parent / "dense_format1")
    assert r.returncode == 0, r.stderr
    assert "| block | tokens | heads | head widths | Q | scale | MLP | rel-pos | params | MMAC |" in r.stdout
    assert "…" not in r.stdout


@pytest.mark.parametrize("module", ["deploy_nas.train", "deploy_nas.search"])
def test_module_entry_points_are_the_click_commands(module):
    r = subprocess.run([__import__("sys").executable, "-m", module, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith(f"Usage: python -m {module} [OPTIONS]")
    r = subprocess.run([__import__("sys").executable, "-m", module, "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: No such option '--bogus'") and r.stderr.count("\n") == 1
