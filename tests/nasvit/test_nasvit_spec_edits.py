"""Hand-edited NASViT spec.json files: every size that must agree through the network (the input size, the stem's and
each block's stride, the pool padding of each stride-2 shortcut, the transformer grids and heads) is checked when the
model is built from its spec, before any layer exists: one DenseModelError naming the field, never a shape error in
the first forward pass (`RuntimeError: shape '[-1, 40, 36]' is invalid`) nor, worse, a model that runs on a map of
another size (a stem_stride of 1 made one image come out as 4 rows of logits). Each case failed on the code before
the check."""
from __future__ import annotations

import json
import random
import shutil
from dataclasses import replace

import pytest
import torch

from deploy_nas.dense import build_dense, load_dense, save_dense
from deploy_nas.dense.layers import count_parameters
from deploy_nas.errors import DenseModelError
from deploy_nas.materialize import materialize
from tests.cli.test_reliability import one_error_line
from tests.cli_runner import run
from tests.nasvit.nasvit_helpers import random_supernet, tiny_space


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two dense models of the tiny space: the smallest subnet at 32 px (even maps throughout), and one at 40 px,
    where a stride-2 block pools a 5 x 5 map (its shortcut padded by 1)."""
    root = tmp_path_factory.mktemp("nasvit_specs")
    supernet, space = random_supernet(seed=5), tiny_space()
    cfgs = {"min32": space.sample(random.Random(0), "min"), "odd40": replace(space.sample(random.Random(1)),
                                                                              resolution=40)}
    out = {name: save_dense(materialize(supernet, cfg), root / name) for name, cfg in cfgs.items()}
    odd = json.loads((out["odd40"] / "spec.json").read_text())["body"]["blocks"]
    assert any(b.get("pool_padding") == 1 for b in odd)  # the case the fixture is for
    return out


def _edited(tmp_path, source, edit):
    """A copy of the dense directory `source` with `edit` applied to its spec.json (as a dict)."""
    target = tmp_path / "edited"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    spec = json.loads((target / "spec.json").read_text())
    edit(spec)
    (target / "spec.json").write_text(json.dumps(spec))
    return target


def _set(*path, value):
    def edit(spec):
        node = spec
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value(node[path[-1]]) if callable(value) else value
    return edit


def _block_edits(spec, field, value, only=lambda b: True):
    blocks = spec["body"]["blocks"]
    return [(f"blocks[{i}].{field}", _set("body", "blocks", i, field, value=value))
            for i, b in enumerate(blocks) if field in b and only(b)]


# (field, value or function of the old value, which blocks): every edit of this list crashed (a RuntimeError from
# torch), or loaded into a model computing on maps of other sizes, before the check.
BLOCK_EDITS = [
    ("stride", lambda v: 3 - v, lambda b: True),  # 1 <-> 2: the maps after it are of another size
    ("stride", 3, lambda b: True),  # the shortcut's 2 x 2 average pool cannot meet a stride-3 conv
    ("stride", 4, lambda b: True),
    ("stride", 2**31 - 1, lambda b: True),
    ("pool_padding", lambda v: 1 - v, lambda b: b["stride"] == 2),  # 1 exactly on odd maps
    ("pool_padding", 1, lambda b: b["stride"] == 1),  # no pooled shortcut: was ignored
    ("pool_padding", 2, lambda b: True),  # over half the 2 x 2 pool's kernel
    ("pool_padding", 2**31 - 1, lambda b: True),
    ("head_dim", 9, lambda b: True),  # does not divide the width: q reshaped into (L, heads, 9)
    ("head_dim", 13, lambda b: True),
]
TOP_EDITS = [  # (path, value): the resolution entering the first block
    (("body", "stem_stride"), 1),  # loaded; one image came out as 4 rows of logits
    (("body", "stem_stride"), 3),
    (("body", "stem_stride"), 4),
    (("body", "stem_stride"), 2**31 - 1),
    (("img_size",), 1),
    (("img_size",), 5),
    (("img_size",), 64),
    (("img_size",), 100),
]


@pytest.mark.parametrize("model", ["min32", "odd40"])
@pytest.mark.parametrize("field, value, which", BLOCK_EDITS,
                         ids=[f"{f}-{'edit' if callable(v) else v}-{n}" for n, (f, v, _) in enumerate(BLOCK_EDITS)])
def test_an_edited_block_is_a_dense_model_error_naming_the_field(models, tmp_path, model, field, value, which):
    spec = json.loads((models[model] / "spec.json").read_text())
    cases = _block_edits(spec, field, value, which)
    assert cases
    for where, edit in cases:
        with pytest.raises(DenseModelError, match=field) as err:
            load_dense(_edited(tmp_path, models[model], edit))
        assert "re-extract" in str(err.value) and "\n" not in str(err.value), (where, str(err.value))


@pytest.mark.parametrize("model", ["min32", "odd40"])
@pytest.mark.parametrize("path, value", TOP_EDITS, ids=[f"{p[-1]}-{v}" for p, v in TOP_EDITS])
def test_an_edited_input_size_or_stem_stride_is_a_dense_model_error(models, tmp_path, model, path, value):
    with pytest.raises(DenseModelError, match=rf"{path[-1]} {value}\b"):
        load_dense(_edited(tmp_path, models[model], _set(*path, value=value)))


def test_the_message_names_the_disagreeing_field_and_the_strides_before_it(models, tmp_path):
    """The reported case: body.blocks[0].stride 1 -> 2 (was `RuntimeError: shape '[-1, 40, 36]' is invalid`)."""
    edit = _set("body", "blocks", 0, "stride", value=2)
    spec = json.loads((models["min32"] / "spec.json").read_text())
    assert spec["body"]["blocks"][0]["stride"] == 1
    with pytest.raises(DenseModelError) as err:
        load_dense(_edited(tmp_path, models["min32"], edit))
    message = str(err.value)
    assert "grid = 4, but the map there is 2 x 2" in message and "img_size 32, stem_stride 2, then stride 2" in message


@pytest.mark.parametrize("edit, match", [
    (_set("body", "blocks", 1, "kernel", value=4), r"blocks\[1\]\.kernel = 4 \(must be odd"),
    (_set("body", "activation", value="relu"), "activation = 'relu'"),
    (_set("body", "resize", value="cubic"), "resize = 'cubic'"),
])
def test_other_fields_the_layers_cannot_honour_are_named(models, tmp_path, edit, match):
    """An even kernel (the map would grow by one), an activation the layers do not compute (it was recorded and
    silently ignored), a resize mode F.interpolate does not know (a traceback at the first call at another size)."""
    with pytest.raises(DenseModelError, match=match):
        load_dense(_edited(tmp_path, models["min32"], edit))


def test_a_consistent_edit_still_loads_and_a_huge_one_is_refused_before_any_layer(models, tmp_path):
    """img_size 31 gives the maps of 32 (the stem's stride rounds up): the same network, which loads. A spec of
    ~1e19 parameters is refused by its parameter count, not by a failed allocation."""
    model = load_dense(_edited(tmp_path, models["min32"], _set("img_size", value=31)))
    assert model(torch.randn(1, 3, 31, 31)).shape == (1, 10)
    with pytest.raises(DenseModelError, match="parameters, more than any NASViT subnet"):
        load_dense(_edited(tmp_path, models["min32"], _set("body", "blocks", 1, "kernel", value=2**31 - 1)))


def test_the_checks_accept_every_subnet_and_count_its_parameters():
    """Every materialized subnet passes (its maps agree with its grids and paddings), and the formula the bound uses
    is the built model's parameter count."""
    from deploy_nas.dense.nasvit import MBConvSpec, TransformerSpec, map_sides, param_count

    supernet, space = random_supernet(seed=2), tiny_space()
    rng = random.Random(3)
    for cfg in [space.sample(rng, "min"), space.sample(rng, "max")] + [space.sample(rng) for _ in range(4)]:
        for resolution in space.resolution:
            spec = supernet.subnet_state(replace(cfg, resolution=resolution)).spec
            sides = map_sides(spec)
            grids = [(side, b.grid) for side, b in zip(sides[1:], spec.body.blocks) if isinstance(b, TransformerSpec)]
            assert grids and all(side == grid for side, grid in grids)
            assert any(isinstance(b, MBConvSpec) and b.stride == 2 for b in spec.body.blocks)
            assert param_count(spec) == count_parameters(build_dense(spec))


def test_info_on_an_edited_stride_exits_2_with_one_error_line(models, tmp_path):
    dense = _edited(tmp_path, models["min32"], _set("body", "blocks", 0, "stride", value=2))
    line = one_error_line(run("info", dense))
    assert "blocks[4].grid = 4" in line and "stride 2" in line
    line = one_error_line(run("run", "--dense", dense, "--out", tmp_path / "out"))
    assert "blocks[4].grid = 4" in line and not (tmp_path / "out").exists()
