"""An eighth hostile try, of reading checkpoints (2026-12-07): a zip checkpoint damaged inside a tensor's bytes loaded
as wrong weights (torch.load does not check the CRC-32 each zip member records), and the official NASViT training
file was refused for the yacs `CfgNode` it stores under 'config'. Each test failed on the code before its fix."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch

from deploy_nas import load_official
from deploy_nas.errors import CheckpointError
from deploy_nas.spaces import SPACES
from deploy_nas.supernets.checkpoint import read_checkpoint
from tests.cli.test_reliability import one_error_line
from tests.cli_runner import run
from tests.conftest import make_supernet
from tests.fuzz.strategies import FAMILY_STRATEGIES
from tests.vitslim.helpers import arch, random_masked


def _damage(path, length: int = 4096) -> str:
    """Zero `length` bytes in the middle of the largest member's data (a tensor's bytes); the member's name."""
    with zipfile.ZipFile(path) as archive:
        member = max(archive.infolist(), key=lambda m: m.file_size)
    assert member.compress_type == zipfile.ZIP_STORED and member.file_size > 2 * length
    with open(path, "r+b") as f:
        f.seek(member.header_offset)
        local = f.read(30)
        start = member.header_offset + 30 + int.from_bytes(local[26:28], "little") + \
            int.from_bytes(local[28:30], "little")
        f.seek(start + member.file_size // 2 - length // 2)
        f.write(bytes(length))
    return member.filename


def _autoformer_file(path):
    torch.save({"model": make_supernet(SPACES.get("autoformer-tiny")).state_dict()}, path)
    return path


# 1 ---------------------------------------------------------------------------------------------------------------
def test_1_a_zip_checkpoint_damaged_inside_a_tensor_is_refused_naming_the_member(tmp_path):
    path = _autoformer_file(tmp_path / "c.pth")
    good = read_checkpoint(path)["model"]
    member = _damage(path)
    with pytest.raises(CheckpointError, match="does not match the CRC-32") as err:
        read_checkpoint(path)
    assert str(path) in str(err.value) and repr(member) in str(err.value) and "\n" not in str(err.value)
    # torch.load alone takes it: the damage is real and silent without the check
    loaded = torch.load(path, weights_only=True)["model"]
    assert any(not torch.equal(loaded[k], good[k]) for k in good)
    # a legacy (non-zip) torch file records no CRC, and torch's compute_crc32=False writes 0 for every member:
    # nothing to check, so both load as before
    sd = {"w": torch.arange(12.0).reshape(3, 4)}
    torch.save({"model": sd}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert torch.equal(read_checkpoint(tmp_path / "legacy.pth")["model"]["w"], sd["w"])
    from torch.utils.serialization import config

    before = config.save.compute_crc32
    config.save.compute_crc32 = False
    try:
        torch.save({"model": sd}, tmp_path / "nocrc.pth")
    finally:
        config.save.compute_crc32 = before
    with zipfile.ZipFile(tmp_path / "nocrc.pth") as archive:
        assert all(m.CRC == 0 for m in archive.infolist())
    assert torch.equal(read_checkpoint(tmp_path / "nocrc.pth")["model"]["w"], sd["w"])


def test_1_extract_and_slim_prune_refuse_a_damaged_checkpoint_and_write_nothing(tmp_path):
    path = _autoformer_file(tmp_path / "af.pth")
    member = _damage(path)
    line = one_error_line(run("extract", "--checkpoint", path, "--config", "max", "--out", tmp_path / "o"))
    assert f"{path} is damaged: its member {member!r} does not match the CRC-32" in line, line
    slim = tmp_path / "slim.pth"
    torch.save({"model": random_masked(arch("deit-tiny", img_size=32, depth=2)).state_dict(),
                "args": {"budget_attn": 0.5, "budget_mlp": 0.5, "budget_patch": 0.7}}, slim)
    member = _damage(slim)
    line = one_error_line(run("slim", "prune", "--checkpoint", slim, "--out", tmp_path / "o"))
    assert f"its member {member!r} does not match the CRC-32" in line, line
    assert not (tmp_path / "o").exists()


# 2 ---------------------------------------------------------------------------------------------------------------
FAKE_YACS = '''
class CfgNode(dict):  # the shape of yacs.config.CfgNode: a dict subclass with bookkeeping in its __dict__
    def __init__(self, init_dict=None, key_list=None, new_allowed=False):
        super().__init__({} if init_dict is None else init_dict)
        self.__dict__["__immutable__"] = False
        self.__dict__["__deprecated_keys__"] = set()
        self.__dict__["__renamed_keys__"] = {}
        self.__dict__["__new_allowed__"] = new_allowed

    def __getattr__(self, name):
        if name in self:
            return self[name]
        raise AttributeError(name)

    def __setattr__(self, name, value):
        self[name] = value


class Other(dict):  # any other global of the module: still refused
    pass
'''

WRITE = '''
import sys, torch
from yacs.config import CfgNode as CN
sd = torch.load(sys.argv[1], weights_only=True)
config = CN()
config.MODEL = CN()
config.MODEL.NAME = "attentive_nas"
config.DATA = CN({"IMG_SIZE": 224, "MEAN": (0.485, 0.456, 0.406)})
config.TRAIN = CN({"EPOCHS": 360, "BASE_LR": 0.0005, "AUTO_RESUME": True})
torch.save({"model": sd, "model_ema": sd, "optimizer": {}, "lr_scheduler": {}, "max_accuracy": 80.0, "epoch": 359,
            "config": config}, sys.argv[2])
if hasattr(sys.modules["yacs.config"], "Other"):
    from yacs.config import Other
    torch.save({"model": sd, "config": Other(a=1)}, sys.argv[2] + ".other")
'''


@pytest.mark.parametrize("yacs", ["stand-in", "installed"])
def test_2_the_official_nasvit_file_with_its_yacs_config_loads(tmp_path, monkeypatch, yacs):
    """save_checkpoint stores the yacs CfgNode: it is read as a plain mapping; yacs is never imported (here it
    cannot be) and nothing is executed."""
    env = {"PATH": "/usr/bin:/bin"}
    if yacs == "stand-in":
        (tmp_path / "fake" / "yacs").mkdir(parents=True)
        (tmp_path / "fake" / "yacs" / "__init__.py").write_text("")
        (tmp_path / "fake" / "yacs" / "config.py").write_text(textwrap.dedent(FAKE_YACS))
        env["PYTHONPATH"] = str(tmp_path / "fake")
    else:
        pytest.importorskip("yacs.config")
    sd = FAMILY_STRATEGIES["nasvit"].checkpoint_base()
    torch.save(sd, tmp_path / "sd.pth")
    (tmp_path / "write.py").write_text(WRITE)
    subprocess.run([sys.executable, tmp_path / "write.py", tmp_path / "sd.pth", tmp_path / "ckpt.pth"], check=True,
                   env=env, cwd=tmp_path, timeout=300)
    for name in ("yacs", "yacs.config"):
        monkeypatch.setitem(sys.modules, name, None)  # an import of it would raise
    obj = read_checkpoint(tmp_path / "ckpt.pth")
    config = obj["config"]
    assert isinstance(config, dict) and config["MODEL"]["NAME"] == "attentive_nas"
    assert config["DATA"]["IMG_SIZE"] == 224 and config["DATA"]["MEAN"] == (0.485, 0.456, 0.406)
    assert config["TRAIN"]["AUTO_RESUME"] is True
    model, _ = load_official(tmp_path / "ckpt.pth", "nasvit")
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items() if k in sd and "relative_position" not in k)
    if yacs == "stand-in":  # only the CfgNode name is mapped: any other global of the module is refused by name
        with pytest.raises(CheckpointError, match=r"holds pickled objects \('yacs.config.Other'\)"):
            read_checkpoint(tmp_path / "ckpt.pth.other")
