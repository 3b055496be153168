"""The official S3 models (Cream AutoFormerV2 `SSSTransformer`): the YAML files and presets, parameter counts and the
official MAC formula of S3-T/S/B, the checkpoint importer (shapes -> network, buffers checked then rebuilt), exactness
through extract, an independent cross-check against timm's Swin, and bad input (typed errors, exit 2, nothing
written)."""
from __future__ import annotations

import json

import pytest
import torch

from deploy_nas.dense import load_dense, save_dense
from deploy_nas.dense.swin import official_flops, param_count
from deploy_nas.errors import CheckpointError, InvalidSubnetConfig
from deploy_nas.family import FAMILIES
from deploy_nas.materialize import materialize
from deploy_nas.spaces import PRESETS, SPACES, load_config
from deploy_nas.supernets.s3 import S3Arch, S3ImportOptions, S3Supernet, dense_shapes, official_state_dict
from tests.cli.test_extract_info import run
from tests.s3.s3_helpers import (
    OFFICIAL_YAML,
    SMALL,
    SMALL_CLASSES,
    SMALL_IMG,
    SMALL_PATCH,
    images,
    official_checkpoint,
    official_model,
)

FAMILY = FAMILIES.get("s3")
# SSSTransformer(...) parameter counts and .flops() of the official code (Cream 4a13c40), for the three configs
OFFICIAL_NUMBERS = {"T": (28_328_674, 4_627_170_816), "S": (49_737_298, 9_410_348_544),
                    "B": (71_125_762, 13_662_463_488)}


@pytest.mark.parametrize("name", "TSB")
def test_official_yaml_files_read_as_the_presets(name):
    cfg = load_config(OFFICIAL_YAML / f"S3-{name}.yaml", "s3")
    assert cfg == PRESETS.get(f"s3-{name.lower()}").config
    assert SPACES.get(f"S3-{name}").validate(cfg) is cfg
    assert cfg.qkv_dim == tuple(tuple(32 * h for h in heads) for heads in cfg.num_heads)
    if name == "T":  # the stage-3 lists hold 8 entries for a depth of 6: the first 6 count
        assert cfg.depths == (2, 2, 6, 2) and len(cfg.window_size[2]) == 6


@pytest.mark.parametrize("name", "TSB")
def test_parameter_counts_and_the_official_mac_formula(name):
    space = SPACES.get(f"S3-{name}")
    cfg = PRESETS.get(f"s3-{name.lower()}").config
    with torch.device("meta"):  # sizes only: no memory, no time
        supernet = S3Supernet(S3Arch.from_space(space))
    spec = supernet.dense_spec(cfg)
    params, flops = OFFICIAL_NUMBERS[name]
    assert param_count(spec) == params == supernet.param_count(cfg)
    assert sum(math_prod(s) for s in dense_shapes(spec).values()) == params
    assert official_flops(spec) == flops


def math_prod(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def test_windows_clip_to_the_map_and_shift_only_with_several_windows():
    """S3-S at 224: window 14 on maps 56 and 28 (shifted), 14 (one window), 7 (clipped to 7, no shift)."""
    with torch.device("meta"):
        supernet = S3Supernet(S3Arch.from_space(SPACES.get("S3-S")))
    stages = supernet.dense_spec(PRESETS.get("s3-s").config).body.stages
    assert [(s.resolution, s.blocks[1].window_size, s.blocks[1].shift_size) for s in stages] == [
        (56, 14, 7), (28, 14, 7), (14, 14, 0), (7, 7, 0)]
    assert all(b.attn_scale == 32 ** -0.5 and b.head_dim == 32 for s in stages for b in s.blocks)


# --------------------------------------------------------------------------------------------------- import


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    model = official_model()
    path = official_checkpoint(tmp_path_factory.mktemp("official") / "S3-small.pth", model)
    yaml = tmp_path_factory.mktemp("yaml") / "S3-small.yaml"
    official = SMALL.to_official()
    official["NUM_HEADS"][2] += [3, 3]  # longer than the depth: only the first `depth` entries count
    official["WINDOW_SIZE"][2] += [4, 4]
    official["MLP_RATIO"][2] += [2.0, 2.0]
    yaml.write_text(json.dumps(official))
    return model, path, yaml


def test_import_reads_the_network_from_shapes_and_the_input_size_from_the_masks(small):
    model, path, _ = small
    supernet, space = FAMILY.load_official(path, S3ImportOptions())
    assert space.img_size == SMALL_IMG and space.patch_size == SMALL_PATCH and space.num_classes == SMALL_CLASSES
    assert space.validate(SMALL) is SMALL  # window 4 on stage 4's 2x2 map: clipped, the same network
    read = space.sample(None, "max")  # what the shapes say: the clipped window
    assert read.to_dict() == {**SMALL.to_dict(), "window_size": [[4, 4], [2, 2], [4, 4, 4], [2, 2]]}
    x = images()
    with torch.no_grad():
        assert (supernet(x, SMALL) - model(x)).abs().max() == 0
    assert supernet.param_count(SMALL) == sum(p.numel() for p in model.parameters())


def test_extract_with_the_official_yaml_is_exact_and_info_shows_the_stages(tmp_path, small):
    model, path, yaml = small
    r = run("extract", "--family", "s3", "--checkpoint", path, "--config", yaml, "--out", tmp_path / "d")
    assert r.returncode == 0, r.stderr
    dense = load_dense(tmp_path / "d")
    x = images()
    with torch.no_grad():
        assert (dense(x) - model(x)).abs().max() <= 1e-5
    assert dense.spec.arch == "swin" and sum(p.numel() for p in dense.parameters()) == param_count(dense.spec)
    r = run("info", tmp_path / "d")
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ") and "x" in line.split("|")[3]]
    assert len(rows) == sum(SMALL.depths) + 3  # the blocks and the three patch mergings
    assert "| 2 | 2 | 8x8 | 64 | 2 | 32 | 64 | 0.1768 | 2 | 1 | 192 |" in r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", "TSB")
def test_official_models_import_and_materialize_exactly_at_224(name):
    """Random weights in the official layout (S3-T/S/B at 224) -> importer -> supernet and dense model agree."""
    cfg = PRESETS.get(f"s3-{name.lower()}").config
    with torch.device("meta"):
        spec = S3Supernet(S3Arch.from_space(SPACES.get(f"S3-{name}"))).dense_spec(cfg)
    g = torch.Generator().manual_seed(0)
    sd = {k: (1 + 0.1 * torch.randn(s, generator=g) if k.endswith("weight") else 0.1 * torch.randn(s, generator=g))
          if len(s) == 1 else torch.randn(s, generator=g) / math_prod(s[1:]) ** 0.5
          for k, s in dense_shapes(spec).items()}
    with torch.device("meta"):
        skeleton = load_dense_skeleton(spec)
    sd.update({k: v for k, v in official_state_dict(skeleton).items() if k.endswith(("index", "attn_mask"))})
    supernet, space = FAMILY.from_checkpoint({"model": sd}, S3ImportOptions())
    assert space.name == f"S3-{name}"
    dense = materialize(supernet, cfg)
    x = images(224, n=1)
    with torch.no_grad():
        ref, out = supernet(x, cfg), dense(x)
    assert ref.abs().max() > 0.1 and (out - ref).abs().max() <= 1e-5
    assert sum(p.numel() for p in dense.parameters()) == OFFICIAL_NUMBERS[name][0]


def load_dense_skeleton(spec):
    from deploy_nas.dense.swin import SwinTransformer

    return SwinTransformer(spec)


def test_timm_swin_converted_to_the_official_layout_imports_exactly():
    """An independent implementation of the same semantics: timm's Swin (head dim 32, window 4, 64 px, 2 x 2
    patches: maps 32, 16, 8, 4, the last one window) with random weights, its keys moved to the official layout
    and its own index and mask buffers: our importer accepts its buffers and our dense model equals it."""
    timm = pytest.importorskip("timm")
    ref = timm.models.swin_transformer.SwinTransformer(
        img_size=64, patch_size=2, embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=4,
        num_classes=10, drop_path_rate=0.0)
    ref = _scaled(ref).eval()
    sd = {}
    for k, v in [*ref.state_dict().items(), *ref.named_buffers()]:
        parts = k.split(".")
        if k.startswith("layers.") and parts[2] == "downsample":  # timm merges at the start of the next stage
            k = ".".join(["layers", str(int(parts[1]) - 1), *parts[2:]])
        sd[k.replace("head.fc.", "head.")] = v
    supernet, space = FAMILY.from_checkpoint({"model": sd}, S3ImportOptions())
    assert space.img_size == 64
    dense = materialize(supernet, space.sample(None, "max"))
    x = images(64)
    with torch.no_grad():
        expected, got = ref(x), dense(x)
    assert expected.abs().max() > 0.1 and (got - expected).abs().max() <= 1e-5


def _scaled(model):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_((1 + 0.1 * noise if name.endswith("weight") else 0.1 * noise) if p.dim() == 1
                    else noise / max(1, p[0].numel()) ** 0.5)
    return model


# ------------------------------------------------------------------------------------------------ bad input


def _tamper_mask(sd):
    sd["layers.0.blocks.1.attn_mask"][0, 0, 1] = -100.0


def _drop_mask(sd):
    del sd["layers.1.blocks.1.attn_mask"]


def _extra_mask(sd):
    sd["layers.2.blocks.1.attn_mask"] = torch.zeros(1, 16, 16)


def _tamper_index(sd):
    sd["layers.2.blocks.0.attn.relative_position_index"] = sd["layers.2.blocks.0.attn.relative_position_index"].flip(0)


def _head_dim(sd):
    sd["layers.1.blocks.0.attn.relative_position_bias_table"] = torch.zeros(9, 4)


@pytest.mark.parametrize("edit, message", [
    (_tamper_mask, "layers.0.blocks.1.attn_mask (shape (16, 16, 16)) is not what window 4 shifted by 2"),
    (_drop_mask, "layers.1.blocks.1.attn_mask is missing"),
    (_extra_mask, "layers.2.blocks.1.attn_mask is present, but the block does not shift"),
    (_tamper_index, "layers.2.blocks.0.attn.relative_position_index (shape (16, 16)) is not what window 4"),
    (_head_dim, "layers.1.blocks.0: 4 heads x 32 = 128"),
])
def test_checkpoints_whose_buffers_or_shapes_disagree_are_refused(tmp_path, small, edit, message):
    path = official_checkpoint(tmp_path / "bad.pth", small[0], edit)
    with pytest.raises(CheckpointError) as err:
        FAMILY.load_official(path, S3ImportOptions())
    assert message in str(err.value)


def test_an_input_size_option_that_contradicts_the_masks_is_refused(small):
    with pytest.raises(CheckpointError, match=r"imply input sizes \[64\], the img_size import option says 128"):
        FAMILY.load_official(small[1], S3ImportOptions(img_size=128))


def _yaml(tmp_path, edit):
    d = SMALL.to_official()
    edit(d)
    path = tmp_path / "S3-small-edited.yaml"
    path.write_text(json.dumps(d))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["NUM_HEADS"][2].__delitem__(slice(1, None)),
     "NUM_HEADS[2] (stage 3) has 1 entries but DEPTHS gives stage 3 3 blocks"),
    (lambda d: d["NUM_HEADS"][1].__setitem__(0, 3),
     "NUM_HEADS[1][0] (stage 2, block 1) = 3: 3 heads x 32 = 96 != EMBED_DIM 64"),
    (lambda d: d["WINDOW_SIZE"][0].__setitem__(1, 3),
     "window_size[0][1] (stage 1, block 2) = 3 does not divide stage 1's 16x16 map"),
])
def test_bad_yaml_configs_exit_2_and_write_nothing(tmp_path, small, edit, message):
    path = _yaml(tmp_path, edit)
    _, space = FAMILY.load_official(small[1], S3ImportOptions())
    with pytest.raises(InvalidSubnetConfig) as err:
        space.validate(load_config(path, "s3"))
    assert message in str(err.value)
    r = run("extract", "--family", "s3", "--checkpoint", small[1], "--config", path, "--out", tmp_path / "out")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and message in r.stderr
    assert not (tmp_path / "out").exists()


def test_a_bad_checkpoint_exits_2_and_writes_nothing(tmp_path, small):
    path = official_checkpoint(tmp_path / "bad.pth", small[0], _tamper_mask)
    r = run("extract", "--checkpoint", path, "--config", "max", "--out", tmp_path / "out")
    assert r.returncode == 2 and "attn_mask" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_dense_directory_round_trip_rebuilds_the_constants(tmp_path, small):
    """weights.safetensors holds the tables only; the (heads, w*w, w*w) bias and the masks come back on load."""
    model = small[0]
    save_dense(model, tmp_path / "d")
    from safetensors.torch import load_file

    keys = set(load_file(str(tmp_path / "d" / "weights.safetensors")))
    assert not any(k.endswith(("attn.bias", "attn_mask", "relative_position_index")) or ".mask_" in k for k in keys)
    again = load_dense(tmp_path / "d")
    for a, b in zip(model.modules(), again.modules()):
        if hasattr(a, "refresh_constants"):
            assert torch.equal(a.bias, b.bias)
    with torch.no_grad():
        assert torch.equal(again(images()), model(images()))
