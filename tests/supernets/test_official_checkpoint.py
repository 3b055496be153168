"""Loading official AutoFormer checkpoint files and refusing bad ones."""
from __future__ import annotations

import argparse
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from deploy_nas import PRESETS, SPACES, load_official
from deploy_nas.errors import CheckpointError
from deploy_nas.supernets import load_supernet
from deploy_nas.supernets.autoformer import AutoFormerArch, AutoFormerSupernet, arch_from_state_dict, space_for_arch
from tests.conftest import make_supernet, narrow_space

PUBLISHED_M = {"autoformer-t": (5.8, 5_867_944), "autoformer-s": (22.9, 22_891_432), "autoformer-b": (53.7, 53_691_688)}


def _official_file(model, path, **extra):
    """The layout supernet_train.py saves: model, optimizer, lr_scheduler, epoch, scaler, args (a Namespace)."""
    args = argparse.Namespace(gp=True, change_qkv=True, relative_position=True, max_relative_position=14,
                              cfg="experiments/supernet/supernet-T.yaml", lr=5e-4)
    torch.save({"model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "lr_scheduler": {},
                "epoch": 499, "scaler": {}, "args": args, **extra}, path)
    return path


@pytest.fixture(scope="module")
def narrow_s():
    return make_supernet(narrow_space("autoformer-S"), seed=7, reference_relpos=False)


def test_loads_official_file_with_pickled_namespace(narrow_s, tmp_path):
    path = _official_file(narrow_s, tmp_path / "supernet.pth")
    with pytest.raises(pickle.UnpicklingError):  # plain weights_only loading refuses the Namespace...
        torch.load(path, weights_only=True)
    loaded, _ = load_official(path)  # ...we read the tensors without executing anything
    assert loaded.arch == narrow_s.arch
    cfg = narrow_space("autoformer-S").sample(__import__("random").Random(0))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x, cfg), narrow_s(x, cfg))


def test_infers_sizes_and_R_from_shapes(narrow_s):
    arch = arch_from_state_dict(narrow_s.state_dict())
    assert (arch.embed_dim, arch.depth, arch.mlp_hidden, arch.max_relative_position, arch.img_size,
            arch.patch_size, arch.num_classes, arch.table_dim) == (56, 14, 224, 2, 32, 8, 10, 8)
    # Issue #153: a table with 130 rows means R = 64, not the default 14.
    sd = dict(narrow_s.state_dict())
    for k in [k for k in sd if "embeddings_table" in k]:
        sd[k] = torch.zeros(130, 8)
    assert arch_from_state_dict(sd).max_relative_position == 64


def test_real_T_checkpoint_roundtrip_and_space_detection(tmp_path):
    space = SPACES.get("autoformer-T")
    model = AutoFormerSupernet(AutoFormerArch.from_space(space))
    loaded, found = load_official(_official_file(model, tmp_path / "supernet-tiny.pth"))
    assert space_for_arch(loaded.arch) == space == found
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_ddp_prefix_state_dict_and_safetensors(narrow_s, tmp_path):
    sd = narrow_s.state_dict()
    torch.save({"module." + k: v for k, v in sd.items()}, tmp_path / "ddp.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    for path in (tmp_path / "ddp.pth", tmp_path / "w.safetensors"):
        assert load_official(path)[0].arch == narrow_s.arch


@pytest.mark.parametrize("preset", sorted(PUBLISHED_M))
def test_dense_params_of_published_presets_match_official_count(preset):
    letter = preset[-1].upper()
    with torch.device("meta"):  # real T/S/B sizes without allocating 80M parameters
        supernet = AutoFormerSupernet(AutoFormerArch.from_space(SPACES.get(f"autoformer-{letter}")))
        from deploy_nas.dense import VisionTransformer
        dense = VisionTransformer(supernet.dense_spec(PRESETS.get(preset).config))
    published_m, official = PUBLISHED_M[preset]
    n = sum(p.numel() for p in dense.parameters())
    assert n == official == supernet.param_count(PRESETS.get(preset).config)
    assert abs(n / 1e6 - published_m) < 0.1  # the README rounds 5.868 down to 5.8, 22.891 up to 22.9


# --- bad input ----------------------------------------------------------------------------------------------
def _edit(sd, drop=(), add=None, reshape=None):
    sd = dict(sd)
    for k in drop:
        sd.pop(k)
    sd.update(add or {})
    for k, shape in (reshape or {}).items():
        sd[k] = torch.zeros(shape)
    return sd


@pytest.mark.parametrize("edit, match", [
    (dict(drop=["blocks.3.fc1.bias", "norm.weight"]), r"missing: blocks.3.fc1.bias, norm.weight \(2\)"),
    (dict(add={"blocks.0.attn.extra": torch.zeros(3)}), r"unexpected: blocks.0.attn.extra"),
    (dict(reshape={"blocks.2.fc2.weight": (56, 100)}),
     r"misshapen: blocks.2.fc2.weight \(56, 100\) \(expected \(56, 224\)\)"),
    (dict(drop=["head.weight"]), r"not an AutoFormer supernet state dict: missing head.weight"),
])
def test_mismatched_keys_are_listed(narrow_s, tmp_path, edit, match):
    path = tmp_path / "bad.pth"
    torch.save({"model": _edit(narrow_s.state_dict(), **edit)}, path)
    with pytest.raises(CheckpointError, match=match):
        load_official(path)


def test_truncated_and_non_checkpoint_files(narrow_s, tmp_path):
    good = _official_file(narrow_s, tmp_path / "good.pth")
    data = good.read_bytes()
    (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.pth").write_text("hello, not a checkpoint\n")
    (tmp_path / "trunc.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    for name in ("trunc.pth", "text.pth", "trunc.safetensors", "missing.pth"):
        with pytest.raises(CheckpointError):
            load_official(tmp_path / name)
    torch.save({"epoch": 3}, tmp_path / "nomodel.pth")
    with pytest.raises(CheckpointError, match="not tensors|no state dict"):
        load_official(tmp_path / "nomodel.pth")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_needing_code_execution_is_refused_and_not_run(narrow_s, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": narrow_s.state_dict(), "args": _Exploit(marker)}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="posix.system.*will not be unpickled"):
        load_official(path)
    assert not marker.exists()


def test_load_supernet_default_and_family_check(tmp_path):
    model, space = load_supernet(None)
    assert space.name == "autoformer-demo" and model.arch.embed_dim == space.super_embed_dim
    with pytest.raises(Exception, match="embedded default supernet is 'autoformer', not 'nasvit'"):
        load_supernet(None, family="nasvit")
    with pytest.raises(Exception, match="unknown family"):
        load_supernet(None, family="nosuchfamily")
