"""An eighth hostile try, of ViT-Slim (2026-12-07): a timm ViT whose heads are not 64 wide became one head, silently;
`slim prune` of a DeiT never searched "pruned" to the base size without a word; a config file with one budget left
the others at 1 silently, a YAML `5e-1` was "not a budget", and two stored budgets of three read as "none". Each
test failed on the code before its fix."""
from __future__ import annotations

import json

import pytest
import torch

from deploy_nas.errors import CheckpointError, InvalidSubnetConfig
from deploy_nas.spaces import load_config
from deploy_nas.spaces.vitslim import SlimConfig
from deploy_nas.supernets import load_official
from deploy_nas.supernets.vitslim import MASK_KEYS, SlimImportOptions
from tests.cli.test_extract_info import run
from tests.cli.test_reliability import one_error_line
from tests.vitslim.helpers import arch, images, random_masked

BUDGETS = {"budget_attn": 0.5, "budget_mlp": 0.5, "budget_patch": 0.7}


def _plain(path, a, seed: int = 0, **extra):
    """A timm-layout ViT without ViT-Slim masks (random weights) of arch `a`; the masked model it came from."""
    model = random_masked(a, seed)
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith(MASK_KEYS)}
    torch.save({"model": sd, **extra}, path)
    return path, model


# 3 ---------------------------------------------------------------------------------------------------------------
def test_3_heads_not_64_wide_are_refused_unless_the_count_is_given(tmp_path, capsys):
    a = arch("deit-tiny", embed_dim=96, num_heads=3, mlp_hidden=192, depth=2, img_size=32)
    path, model = _plain(tmp_path / "vit96.pth", a)
    with pytest.raises(CheckpointError, match=r"embed dim 96 is not a multiple of 64 .* --import-option num_heads=N"):
        load_official(path, "vitslim")
    line = one_error_line(run("slim", "prune", "--checkpoint", path, "--soft", "--out", tmp_path / "o"))
    assert "--import-option num_heads=N" in line and not (tmp_path / "o").exists()
    loaded, _ = load_official(path, "vitslim", SlimImportOptions(num_heads=3))
    x, full = images(a), SlimConfig()  # budgets 1: every mask 1, the plain ViT
    with torch.no_grad():
        ones = [(torch.ones_like(c), torch.ones_like(t), torch.ones_like(u)) for c, t, u in model.soft_masks()]
        torch.testing.assert_close(loaded(x, full), model.forward_masked(x, ones), rtol=0, atol=0)
    assert "note:" not in capsys.readouterr().err  # the count was given: nothing assumed
    # a head count the checkpoint's args store is used
    path, _ = _plain(tmp_path / "args96.pth", a, args={"num_heads": 3})
    assert load_official(path, "vitslim")[0].arch.num_heads == 3


def test_3_an_assumed_head_count_is_noted(tmp_path, capsys):
    a = arch("deit-tiny", embed_dim=128, num_heads=2, mlp_hidden=128, depth=1, img_size=32)
    path, _ = _plain(tmp_path / "vit128.pth", a)
    loaded, _ = load_official(path, "vitslim")
    assert loaded.arch.num_heads == 2
    err = capsys.readouterr().err
    assert f"note: {path} does not record its head count: assumed 2 heads of 64 channels" in err
    assert "--import-option num_heads=N" in err
    r = run("slim", "prune", "--checkpoint", path, "--soft", "--out", tmp_path / "o")
    assert r.returncode == 0 and "assumed 2 heads of 64 channels" in r.stderr, r.stderr


# 4 ---------------------------------------------------------------------------------------------------------------
def test_4_budgets_that_remove_nothing_of_untrained_masks_are_warned(tmp_path):
    a = arch("deit-tiny", depth=2, img_size=32)
    path, _ = _plain(tmp_path / "deit.pth", a)
    r = run("slim", "prune", "--checkpoint", path, "--budget-attn", "0.5", "--budget-mlp", "0.5", "--budget-patch",
            "1", "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    warning = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warning) == 1 and "removed nothing of the attention channels (budget 0.5), MLP units (budget 0.5):" \
        in warning[0] and "every value of those masks is equal" in warning[0] and "slim search" in warning[0], r.stderr
    # searched masks: the budgets cut, and nothing is said
    searched = tmp_path / "searched.pth"
    torch.save({"model": random_masked(a).state_dict(), "args": BUDGETS}, searched)
    r = run("slim", "prune", "--checkpoint", searched, "--out", tmp_path / "s")
    assert r.returncode == 0 and "warning:" not in r.stderr, r.stderr
    from deploy_nas.supernets.vitslim import unpruned

    assert unpruned(random_masked(a), SlimConfig(0.5, 0.5, 0.5)) is None


# 5 ---------------------------------------------------------------------------------------------------------------
def test_5_a_config_file_gives_all_three_budgets(tmp_path):
    (tmp_path / "one.json").write_text(json.dumps({"budget_attn": 0.5}))
    with pytest.raises(InvalidSubnetConfig, match="gives budget_attn but not budget_mlp, budget_patch"):
        load_config(tmp_path / "one.json", "vitslim")
    sn = tmp_path / "searched.pth"
    torch.save({"model": random_masked(arch("deit-tiny", depth=2, img_size=32)).state_dict()}, sn)
    line = one_error_line(run("extract", "--family", "vitslim", "--checkpoint", sn, "--config", tmp_path / "one.json",
                              "--out", tmp_path / "o"))
    assert "gives budget_attn but not budget_mlp, budget_patch" in line and not (tmp_path / "o").exists()
    (tmp_path / "soft.json").write_text(json.dumps({"soft": True}))
    assert load_config(tmp_path / "soft.json", "vitslim") == SlimConfig(soft=True)


def test_5_a_yaml_number_read_as_a_string_is_named(tmp_path):
    (tmp_path / "c.yaml").write_text("budget_attn: 0.5\nbudget_mlp: 5e-1\nbudget_patch: 0.7\n")
    with pytest.raises(InvalidSubnetConfig, match=r"budget_mlp = '5e-1' is a string, not a number \(YAML reads an "
                                                  r"exponent without a decimal point.*write 0.5 or 5.0e-1"):
        load_config(tmp_path / "c.yaml", "vitslim")
    (tmp_path / "c.yaml").write_text("budget_attn: 0.5\nbudget_mlp: 5.0e-1\nbudget_patch: 0.7\n")
    assert load_config(tmp_path / "c.yaml", "vitslim") == SlimConfig(0.5, 0.5, 0.7)


def test_5_budgets_the_checkpoint_stores_in_part_are_named(tmp_path):
    path = tmp_path / "two.pth"
    torch.save({"model": random_masked(arch("deit-tiny", depth=2, img_size=32)).state_dict(),
                "args": {"budget_attn": 0.5, "budget_mlp": 0.6}}, path)
    line = one_error_line(run("slim", "prune", "--checkpoint", path, "--out", tmp_path / "o"))
    assert "no --budget-patch: give the budgets (its args store only budget_attn, budget_mlp)" in line, line
    r = run("slim", "prune", "--checkpoint", path, "--budget-patch", "0.7", "--out", tmp_path / "o")
    assert r.returncode == 0 and "budgets attn 0.5 mlp 0.6 tokens 0.7" in r.stdout, r.stderr


def test_4_extract_warns_too_when_the_budgets_remove_nothing(tmp_path):
    """`extract --family vitslim` of a DeiT never searched gave the unpruned model without a word."""
    a = arch("deit-tiny", depth=2, img_size=32)
    path, _ = _plain(tmp_path / "deit.pth", a)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"family": "vitslim", "budget_attn": 0.5, "budget_mlp": 0.5, "budget_patch": 1.0}))
    r = run("extract", "--family", "vitslim", "--checkpoint", path, "--config", cfg, "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")][0].count("removed nothing") == 1


def test_3_slim_search_takes_the_head_count_of_its_base(tmp_path):
    """`slim search --base` of a ViT whose heads are not 64 wide was refused with 'pass --import-option num_heads=N',
    an option slim search did not have."""
    a = arch("deit-tiny", embed_dim=96, num_heads=3, mlp_hidden=192, depth=2, img_size=32)
    path, _ = _plain(tmp_path / "vit96.pth", a)
    args = ["slim", "search", "--base", path, "--epochs", "1", "--max-steps", "1", "--batch-size", "8"]
    line = one_error_line(run(*args, "--out", tmp_path / "no"))
    assert "--import-option num_heads=N" in line and not (tmp_path / "no").exists()
    r = run(*args, "--import-option", "num_heads=3", "--out", tmp_path / "s")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "s" / "supernet.json").read_text())["arch"]["num_heads"] == 3
    line = one_error_line(run("slim", "search", "--import-option", "num_heads=3", "--epochs", "1", "--out",
                              tmp_path / "nobase"))
    assert "--import-option reads the DeiT file of --base" in line and not (tmp_path / "nobase").exists()
    line = one_error_line(run(*args, "--import-option", "mask=head", "--uniform-search", "--out", tmp_path / "two"))
    assert "import option mask given twice" in line
