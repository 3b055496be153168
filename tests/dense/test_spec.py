"""spec.json: the format-2 envelope, dispatch on `arch`, and format-1 directories (written before the arch registry)
still loading, bit for bit, from a saved fixture."""
from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from deploy_nas.dense import ARCHS, DenseSpec, build_dense, load_dense, save_dense
from deploy_nas.errors import DenseModelError
from deploy_nas.materialize import materialize
from tests.conftest import FIXTURES

FORMAT1 = FIXTURES / "dense_format1"


def test_format_1_directory_loads_and_gives_its_saved_logits():
    assert json.loads((FORMAT1 / "spec.json").read_text())["format_version"] == 1
    model = load_dense(FORMAT1)
    assert model.spec.arch == "vit" and model.spec.format_version == 2 and model.spec.body.depth == 2
    expected = load_file(str(FORMAT1 / "expected.safetensors"))
    with torch.no_grad():  # the same model; since format 1 the relative-position kernels and the q scaling changed
        torch.testing.assert_close(model(expected["input"]), expected["logits"], rtol=0, atol=1e-5)


def test_resaving_a_format_1_model_writes_format_2(tmp_path):
    again = load_dense(save_dense(load_dense(FORMAT1), tmp_path / "d"))
    d = json.loads((tmp_path / "d" / "spec.json").read_text())
    assert d["format_version"] == 2 and set(d) == {"arch", "img_size", "in_chans", "num_classes", "body", "source",
                                                   "format_version"}
    assert again.spec == load_dense(FORMAT1).spec


def test_envelope_roundtrip_dispatches_on_arch(tiny_supernet, tiny_space):
    spec = materialize(tiny_supernet, tiny_space.sample(random.Random(1))).spec
    again = DenseSpec.from_json(spec.to_json())
    assert again == spec and again.source == spec.source and type(build_dense(again)) is ARCHS.get("vit")


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(arch="swin9"), "unknown dense arch 'swin9'"),
    (lambda d: d.update(format_version=7), "spec.json has format 7"),
    (lambda d: d["body"].pop("blocks"), "not a valid vit spec"),
    (lambda d: d.pop("img_size"), "not a valid vit spec"),
])
def test_bad_specs_are_typed_errors(tiny_supernet, tiny_space, edit, match):
    d = json.loads(materialize(tiny_supernet, tiny_space.sample(None, "min")).spec.to_json())
    edit(d)
    with pytest.raises(DenseModelError, match=match):
        DenseSpec.from_json(json.dumps(d))
