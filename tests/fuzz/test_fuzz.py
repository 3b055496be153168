"""The fuzz suite: hostile configs, checkpoints and command lines through the CLI, each case its own process under
a memory limit and a timeout (see conftest.py for what every case must satisfy)."""
from __future__ import annotations

import os
import shutil

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from deploy_nas.family import FAMILIES
from deploy_nas.supernets import DEFAULT_DIR, read_supernet_meta
from tests.fuzz.conftest import SETTINGS, family_settings
from tests.fuzz.strategies import (
    FAMILY_STRATEGIES,
    IN_PLACE,
    alias_yaml,
    checkpoint_file,
    cli_arguments,
    serialize_document,
)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.name != "posix", reason="the fork server needs POSIX")]
FAMILY_NAMES = sorted(set(FAMILIES.names()) & set(FAMILY_STRATEGIES))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_configs(workspace, family):
    strategy = FAMILY_STRATEGIES[family].configs
    source = []  # the embedded default supernet, or a checkpoint of the family's base in its official layout
    default = family == read_supernet_meta(DEFAULT_DIR)["family"]
    if not default:
        torch.save({"model": FAMILY_STRATEGIES[family].checkpoint_base()}, workspace.inputs / "base.pth")
        source = ["--checkpoint", workspace.inputs / "base.pth"]

    @family_settings(default)
    @given(data=st.data())
    def case(data):
        if data.draw(st.integers(0, 7)) == 0:
            suffix, content = ".yaml", data.draw(alias_yaml()).encode()
        elif data.draw(st.integers(0, 9)) == 0:
            suffix, content = data.draw(st.sampled_from([".json", ".yaml", ".txt"])), data.draw(st.binary(max_size=300))
        else:
            suffix, content = serialize_document(data.draw, data.draw(strategy))
        path = workspace.inputs / f"config{suffix}"
        path.write_bytes(content)
        workspace.case("config", ["extract", "--family", family, *source, "--config", path, "--out", workspace.out])
        path.unlink()

    case()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_checkpoints(workspace, family):
    base = FAMILY_STRATEGIES[family].checkpoint_base()

    @family_settings(family == read_supernet_meta(DEFAULT_DIR)["family"])
    @given(data=st.data())
    def case(data):
        suffix, content = data.draw(checkpoint_file(base))
        path = workspace.inputs / f"checkpoint{suffix}"
        path.write_bytes(content)
        args = ["extract", "--checkpoint", path, "--config", data.draw(st.sampled_from(["min", "max"])), "--out",
                workspace.out]
        if data.draw(st.booleans()):
            args[1:1] = ["--family", family]
        workspace.case("checkpoint", args)
        path.unlink()

    case()


def test_command_lines(workspace):
    prepared = workspace.root / "deployment"
    reply = workspace.zygote.run(["extract", "--config", "min", "--out", prepared / "dense"], workspace.cwd)
    assert reply["rc"] == 0, reply["stderr"]
    assert workspace.zygote.run(["export", "onnx", prepared], workspace.cwd)["rc"] == 0
    shutil.copytree(prepared, workspace.inputs / "deploy")
    (workspace.inputs / "file.txt").write_text("not an image folder")

    @SETTINGS
    @given(args=cli_arguments())
    def case(args):
        if args[0] in IN_PLACE:
            shutil.copytree(prepared, workspace.out)
        concrete = [a.replace("{out}", str(workspace.out)).replace("{inputs}", str(workspace.inputs)) for a in args]
        workspace.case("command line", concrete, parity_may_fail=args[0] in ("parity", "run"),
                       in_place=args[0] in IN_PLACE)

    case()
