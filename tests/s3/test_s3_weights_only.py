"""An S3 checkpoint filtered to its weights (no relative_position_index / attn_mask buffers: a state dict saved from
`named_parameters()`, or by a tool that drops buffers) was refused with "layers.0.blocks.0.attn.relative_position_
index is missing", or, with the masks alone gone, "attn_mask is missing ... on a 112x112 map" for a 64 px network
(the size the masks would have told, guessed). The buffers are constants of the architecture and the input size:
given the size (`--import-option img_size=N`), such a file loads, and extracts the same model as the full one."""
from __future__ import annotations

import torch

from deploy_nas.io import load_safetensors
from deploy_nas.supernets.s3 import is_buffer_key
from tests.cli.test_reliability import one_error_line
from tests.cli_runner import run
from tests.s3.s3_helpers import SMALL_IMG, official_checkpoint, official_model


def test_a_weights_only_checkpoint_needs_the_input_size_and_then_extracts_the_same_model(tmp_path):
    model = official_model()
    full = official_checkpoint(tmp_path / "full.pth", model)
    bare = official_checkpoint(tmp_path / "bare.pth", model, edit=lambda sd: [
        sd.pop(k) for k in [k for k in sd if is_buffer_key(k)]])
    assert not any(k.endswith(("relative_position_index", "attn_mask"))
                   for k in torch.load(bare, weights_only=True)["model"])

    line = one_error_line(run("extract", "--checkpoint", bare, "--config", "max", "--out", tmp_path / "no"))
    assert "without their relative_position_index and attn_mask buffers" in line
    assert "--import-option img_size=N" in line and not (tmp_path / "no").exists()

    for name, path in (("a", full), ("b", bare)):
        r = run("extract", "--checkpoint", path, "--import-option", f"img_size={SMALL_IMG}", "--config", "max",
                "--out", tmp_path / name)
        assert r.returncode == 0, r.stderr
    # a size at which the windows need other tables than the file's: the option is named, not only the file
    line = one_error_line(run("extract", "--checkpoint", bare, "--import-option", "img_size=32", "--config", "max",
                              "--out", tmp_path / "small"))
    assert "img_size=32 is its input size" in line and not (tmp_path / "small").exists()
    a, b = (load_safetensors(tmp_path / n / "weights.safetensors") for n in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "spec.json").read_text() == (tmp_path / "b" / "spec.json").read_text()


def test_a_checkpoint_missing_some_buffers_is_still_refused(tmp_path):
    """Some present, some not: a damaged file, not a filtered one."""
    model = official_model()
    path = official_checkpoint(tmp_path / "part.pth", model,
                               edit=lambda sd: sd.pop("layers.0.blocks.1.attn_mask"))
    line = one_error_line(run("extract", "--checkpoint", path, "--import-option", f"img_size={SMALL_IMG}",
                              "--config", "max", "--out", tmp_path / "o"))
    assert "layers.0.blocks.1.attn_mask is missing" in line and not (tmp_path / "o").exists()


def test_masks_missing_without_the_size_say_where_the_size_was_to_come_from(tmp_path):
    """Only the masks gone (the index buffers kept): the size was taken as 224, and the message said only that the
    shapes describe no network at 224 px."""
    path = official_checkpoint(tmp_path / "nomask.pth", official_model(), edit=lambda sd: [
        sd.pop(k) for k in [k for k in sd if k.endswith("attn_mask")]])
    line = one_error_line(run("extract", "--checkpoint", path, "--config", "max", "--out", tmp_path / "o"))
    assert "no attn_mask buffer to read the input size from, so 224 px was assumed" in line
    assert "--import-option img_size=N" in line and not (tmp_path / "o").exists()


def test_a_stray_key_ending_like_a_buffer_is_refused_not_dropped(tmp_path):
    path = official_checkpoint(tmp_path / "stray.pth", official_model(),
                               edit=lambda sd: sd.update({"extra.attn_mask": torch.zeros(2, 2)}))
    line = one_error_line(run("extract", "--checkpoint", path, "--config", "max", "--out", tmp_path / "o"))
    assert "extra.attn_mask" in line and not (tmp_path / "o").exists()
