"""Findings of the hostile try of 2026-12-08 on ViT-Slim: a stray block key, an edited masked-token count."""
from __future__ import annotations

import json

import pytest
import torch

from deploy_nas import load_dense, materialize, save_dense
from deploy_nas.errors import CheckpointError, DenseModelError
from deploy_nas.spaces.vitslim import SlimConfig
from deploy_nas.supernets import load_official
from tests.vitslim.test_vitslim_reliability import _checkpoint


def test_a_stray_key_under_a_high_block_number_is_named_as_unexpected(tmp_path):
    """`blocks.99.extra.weight` in a 2-block checkpoint was read as a 100-block model: 'has ViT-Slim masks but not
    blocks.2.attn.zeta, ... and 282 more'."""
    path = _checkpoint(tmp_path / "c.pth", **{"blocks.99.extra.weight": torch.zeros(3, 3)})
    with pytest.raises(CheckpointError, match=r"unexpected: blocks\.99\.extra\.weight \(1\)") as err:
        load_official(path, "vitslim")
    assert "blocks.2." not in str(err.value)


def test_an_edited_masked_token_count_is_refused(tmp_path):
    """A spec.json whose `masked_tokens` was edited loaded, and the model's logits moved by up to 0.56: the count is
    what the kept tokens leave masked, which the spec says already."""
    supernet, _ = load_official(_checkpoint(tmp_path / "c.pth"), "vitslim")
    dense = save_dense(materialize(supernet, SlimConfig(0.5, 0.5, 0.5)), tmp_path / "d")
    spec = json.loads((dense / "spec.json").read_text())
    blocks = spec["body"]["blocks"]
    i = next(i for i, b in enumerate(blocks) if b["num_heads"] and b["masked_tokens"])  # a block with masked tokens
    load_dense(dense)  # as written: consistent
    for value in (blocks[i]["masked_tokens"] + 1, 0):
        blocks[i]["masked_tokens"] = value
        (dense / "spec.json").write_text(json.dumps(spec))
        with pytest.raises(DenseModelError, match=f"block {i}: masked_tokens = {value}, but its tokens leave"):
            load_dense(dense)
