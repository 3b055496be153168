"""Findings of the hostile try of 2026-12-08: interrupts that a library turned into its own error."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from deploy_nas.errors import INTERRUPTED, TERMINATED, ExportError, Terminated

# SIGINT as a terminal delivers it (a test run in the background of a non-interactive shell inherits it ignored)
DEFAULT_SIGINT = {"preexec_fn": lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)}


def _ended(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, **DEFAULT_SIGINT)


@pytest.mark.parametrize("wrapped", [True, False])
def test_ctrl_c_that_a_library_raises_as_its_own_error_ends_as_an_interrupt(wrapped):
    """OpenVINO's converter catches the KeyboardInterrupt raised inside its tracing and raises its own
    OpConversionFailure (an Exception, no more): `run` ended with a traceback and exit 1. (`wrapped=False`: a
    Ctrl-C with no library in between, as before.)"""
    handler = ("    except KeyboardInterrupt:  # what the library does with it\n"
               "        raise OpConversionFailure('Conversion is failed for: aten::layer_norm') from None\n"
               if wrapped else "    finally:\n        pass\n")
    code = ("import click, os, signal, time\n"
            "from deploy_nas.cli_options import main_one_line\n"
            "class OpConversionFailure(Exception):\n"
            "    pass\n"
            "@click.command()\n"
            "def cmd():\n"
            "    try:\n"
            "        os.kill(os.getpid(), signal.SIGINT)\n"
            "        time.sleep(5)\n"
            f"{handler}"
            "main_one_line(cmd, [])\n")
    r = _ended(code)
    assert r.returncode == 130 and r.stderr.strip() == "error: interrupted", (r.returncode, r.stderr)


class _Unconvertible(torch.nn.Module):
    """A module OpenVINO cannot trace: its forward raises."""

    spec = SimpleNamespace(in_chans=3, img_size=8)

    def forward(self, x):
        raise RuntimeError("no forward here")


@pytest.fixture
def stopped():
    """Sets a stop flag for one test (as the CLI's handlers do) and clears both afterwards."""
    yield
    INTERRUPTED.clear(), TERMINATED.clear()


@pytest.mark.parametrize("flag, raised", [(INTERRUPTED, KeyboardInterrupt), (TERMINATED, Terminated)])
def test_the_module_cross_check_does_not_turn_an_interrupt_into_a_note(stopped, flag, raised):
    """`run`'s cross-check (OpenVINO straight from the nn.Module) turned the converter's error for a Ctrl-C into
    a note, and `run` went on to exit 0 with its output written."""
    pytest.importorskip("openvino")
    from deploy_nas.export.backends.openvino_backend import ir_from_module

    with pytest.raises(ExportError, match="cannot convert the module"):  # no signal: a note-worthy failure
        ir_from_module(_Unconvertible())
    flag.set()
    with pytest.raises(raised):
        ir_from_module(_Unconvertible())


def test_calib_data_next_to_bn_stored_is_refused_unless_an_int8_build_reads_it(tmp_path):
    """`extract --family nasvit --bn stored --calib-data DIR` folded the stored statistics and read nothing of DIR,
    exit 0: an option that changes nothing is an error, not dropped."""
    import numpy as np
    from PIL import Image

    from deploy_nas.errors import InvalidSubnetConfig
    from deploy_nas.spaces import SPACES
    from deploy_nas.workflows import calibration

    for i in range(2):
        (tmp_path / "c0").mkdir(exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / "c0" / f"{i}.png")
    space = SPACES.get("nasvit-tiny")
    with pytest.raises(InvalidSubnetConfig, match="--calib-data with --bn stored"):
        calibration("stored", tmp_path, space, "nasvit")
    kept = calibration("stored", tmp_path, space, "nasvit", int8=True)  # `run`'s int8 build calibrates on it
    assert kept.mode == "stored" and len(kept.images) == 2
    assert calibration("recalibrate", tmp_path, space, "nasvit").mode == "recalibrate"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to drop the capabilities that let root read any file")
def test_an_unreadable_weights_file_is_named_as_unreadable(tmp_path, tiny_supernet, tiny_space):
    """A weights.safetensors without read permission was 'corrupt or not safetensors (No such file or directory)':
    safetensors' own wording for the open that failed."""
    from deploy_nas import materialize, save_dense

    dense = save_dense(materialize(tiny_supernet, tiny_space.sample(None, "min")), tmp_path / "d")
    (dense / "weights.safetensors").chmod(0)
    r = subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--inh-caps=-all",
                        sys.executable, "-c", f"from deploy_nas import load_dense; load_dense({str(dense)!r})"],
                       capture_output=True, text=True, timeout=120)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and "DenseModelError: cannot read" in last and last.endswith("(Permission denied)"), \
        r.stderr[-800:]


def test_a_space_file_too_deep_or_too_wide_is_refused_before_a_supernet_is_built():
    """A space file with depth 5000 or mlp_ratio 1e6 (`train --space FILE`) built its supernet until the machine's
    memory ran out (the kernel killed the process: exit 137, no message)."""
    import dataclasses

    from deploy_nas.errors import CheckpointError, InvalidSubnetConfig
    from deploy_nas.spaces import SPACES
    from deploy_nas.supernets.autoformer import AutoFormerArch

    tiny = SPACES.get("autoformer-tiny")
    with pytest.raises(InvalidSubnetConfig, match=r"depth = 5000 is not a depth \(1\.\.1024\)"):
        dataclasses.replace(tiny, depth=(2, 5000), super_depth=5000)
    wide = dataclasses.replace(tiny, mlp_ratio=(2.0, 1e6), super_mlp_ratio=1e6)
    with pytest.raises(CheckpointError, match="MLP hidden 64000000 make ~3.33e[+]10 parameters, more than any"):
        AutoFormerArch.from_space(wide)
    for name in ("autoformer-T", "autoformer-S", "autoformer-B"):  # the published supernets stay well inside
        assert AutoFormerArch.from_space(SPACES.get(name)).params_bound() < 2e8


@pytest.mark.parametrize("args, named", [
    (("slim", "search", "--head-search", "--uniform-search"), "--head-search and --uniform-search are two mask"),
    (("train", "--space", "autoformer-tiny", "--grad-projection-from", "1", "--no-grad-projection"),
     "--grad-projection-from 1 is --grad-projection --projection-from-epoch 1; it contradicts"),
    (("train", "--space", "autoformer-tiny", "--grad-projection-from", "2", "--projection-from-epoch", "3"),
     "--grad-projection-from 2 is --grad-projection --projection-from-epoch 2; it contradicts")])
def test_options_that_contradict_each_other_are_refused_not_resolved_silently(tmp_path, args, named):
    """The last of --head-search / --uniform-search won; --grad-projection-from overrode --no-grad-projection and
    --projection-from-epoch: exit 0 with a setting the user had also asked against."""
    from tests.cli.test_extract_info import run
    from tests.cli.test_reliability import one_error_line

    r = run(*args, "--epochs", "1", "--max-steps", "1", "--out", tmp_path / "o")
    assert r.returncode == 2 and named in one_error_line(r)
    assert not (tmp_path / "o").exists()
