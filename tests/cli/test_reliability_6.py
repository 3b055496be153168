"""A sixth hostile try of the CLI (2026-12-07, fifth session). Each test failed on the code before its fix."""
from __future__ import annotations

import pytest

from tests.cli.test_extract_info import run
from tests.cli.test_reliability import one_error_line

SMALL_SEARCH = ("--latency-budget-ms", "5", "--generations", "1", "--population", "4", "--measure", "8")


def test_a_space_larger_than_the_supernet_is_refused_before_the_search(tmp_path):
    """`search --space autoformer-t` on the embedded default (depth 4-6) read the data and built the latency
    backend for a minute, then failed at its first sample with 'depth = 12 does not fit' and no word of the space."""
    line = one_error_line(run("search", "--space", "autoformer-t", *SMALL_SEARCH, "--out", tmp_path / "s"))
    assert "--space autoformer-t (autoformer-T) does not fit the autoformer supernet" in line
    assert "img_size 224 (the supernet's: 48)" in line  # its sizes, then (at the same sizes) its depth and widths
    assert not (tmp_path / "s").exists()


def test_the_demo_replaces_only_its_own_earlier_output(tmp_path):
    """`demo --out DIR` deleted any directory deploy-nas had written (a trained supernet with its training state),
    before its minutes of work: a kill then left nothing. Now such a directory needs --force, and the demo's
    output is built beside the old one and swapped in whole."""
    import json

    from deploy_nas.errors import OutputPathError
    from deploy_nas.workflows import check_demo_output

    sn = tmp_path / "sn"
    assert run("train", "--space", "autoformer-tiny", "--epochs", "1", "--max-steps", "1", "--batch-size", "8",
               "--out", sn).returncode == 0
    before = {p.name: p.read_bytes() for p in sn.iterdir()}
    line = one_error_line(run("demo", "--out", sn, "--generations", "1"))
    assert "holds no earlier demo output" in line and "--force" in line
    assert {p.name: p.read_bytes() for p in sn.iterdir()} == before
    check_demo_output(sn, force=True)  # --force: replaced (it holds only what deploy-nas wrote)
    earlier = tmp_path / "demo"
    (earlier / "search").mkdir(parents=True)
    (earlier / "report.json").write_text(json.dumps({"supernet": {}, "search": {}, "parity": {}, "bench": [],
                                                        "files": ["report.json"]}))
    check_demo_output(earlier)  # an earlier demo's output: replaced without being asked (`make demo` twice)
    (earlier / "notes.txt").write_text("mine")
    with pytest.raises(OutputPathError, match="holds no earlier demo output"):
        check_demo_output(earlier)


def test_a_failed_run_force_does_not_show_the_previous_runs_report(tmp_path):
    """`run --force` into an earlier run's directory, failing (no images in --data), printed the earlier run's
    PASSED summary and tables (another subnet) before its error line."""
    dep, empty = tmp_path / "dep", tmp_path / "empty"
    empty.mkdir()
    quick = ("--backend", "onnxruntime", "--batch", "1")
    assert run("run", "--config", "max", "--out", dep, *quick).returncode == 0
    before = (dep / "report.json").read_bytes()
    r = run("run", "--config", "min", "--out", dep, "--force", "--data", empty, *quick)
    assert "no images" in one_error_line(r) or "image" in one_error_line(r)
    assert "PASSED" not in r.stdout and "report:" not in r.stdout, r.stdout
    assert (dep / "report.json").read_bytes() == before  # the earlier run's directory, untouched


TINY_TRAIN = ("train", "--space", "autoformer-tiny", "--epochs", "1", "--max-steps", "1", "--batch-size", "8")


def test_outputs_inside_a_supernet_directory_are_refused(tmp_path):
    """`extract/search/run --out SN/x` wrote into the supernet directory, and the next `train --resume --out SN`
    (which replaces SN whole every epoch) deleted them."""
    sn = tmp_path / "sn"
    assert run(*TINY_TRAIN, "--out", sn).returncode == 0
    before = sorted(p.name for p in sn.iterdir())
    for args in (("extract", "--supernet", sn, "--config", "max", "--out", sn / "dense"),
                 ("search", "--supernet", sn, *SMALL_SEARCH, "--out", sn / "search")):
        line = one_error_line(run(*args))
        assert "inside the input directory" in line, args
    assert sorted(p.name for p in sn.iterdir()) == before


def test_a_resume_without_the_ema_it_started_with_keeps_it_and_one_adding_an_ema_is_refused(tmp_path):
    """Dropping --ema-decay on --resume was a TypeError traceback; adding it kept no EMA while supernet.json
    recorded one. (Since the seventh hostile try a resume takes the recorded recipe as its defaults: dropping the
    option keeps the run's EMA.)"""
    import json

    sn = tmp_path / "sn"
    assert run(*TINY_TRAIN, "--ema-decay", "0.9", "--out", sn).returncode == 0
    r = run(*TINY_TRAIN[:3], "--epochs", "2", "--max-steps", "2", "--batch-size", "8", "--resume", "--out", sn)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((sn / "supernet.json").read_text())["train"]["ema_decay"] == 0.9
    other = tmp_path / "other"
    assert run(*TINY_TRAIN, "--out", other).returncode == 0
    line = one_error_line(run(*TINY_TRAIN[:3], "--epochs", "2", "--max-steps", "2", "--batch-size", "8",
                              "--ema-decay", "0.9", "--resume", "--out", other))
    assert "holds a run trained with no --ema-decay, this resume gives --ema-decay 0.9" in line


def test_a_kill_while_the_training_state_is_written_leaves_a_resumable_directory(tmp_path, monkeypatch):
    """save() swapped in the new directory (without the state) and then wrote train_state.pt: a kill in between
    left weights that no --resume could continue."""
    import torch

    from deploy_nas.family import FAMILIES
    from deploy_nas.spaces import load_space
    from deploy_nas.train import STATE_FILE, TrainConfig, sandwich

    space = load_space("autoformer-tiny")
    trainer = sandwich.SandwichTrainer(FAMILIES.get("autoformer").build_supernet(space, 0), space,
                                       TrainConfig(epochs=2))
    out = tmp_path / "sn"
    trainer.save(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert STATE_FILE in before
    trainer.epoch = 1

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        trainer.save(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_an_exceptions_message_is_quoted_on_one_line(tmp_path):
    """A resume from another space's state quoted torch's load_state_dict report as '...\\n\\t...'."""
    import json

    sn = tmp_path / "sn"
    assert run(*TINY_TRAIN, "--out", sn).returncode == 0
    meta = json.loads((sn / "supernet.json").read_text())  # no record of the space (as an older version's): the
    del meta["space"]  # resume reaches the state itself (a recorded space refuses another one up front)
    (sn / "supernet.json").write_text(json.dumps(meta))
    line = one_error_line(run("train", "--space", "autoformer-demo", "--epochs", "2", "--max-steps", "2",
                              "--batch-size", "8", "--resume", "--out", sn))
    assert "is not the training state of this supernet" in line and "\\n" not in line and "\\t" not in line


def test_info_takes_a_deployment_directory(tmp_path):
    """`info OUT` said 'spec.json not found' for the directory export, parity and bench take."""
    assert run("extract", "--config", "min", "--out", tmp_path / "dep" / "dense").returncode == 0
    r = run("info", tmp_path / "dep")
    assert r.returncode == 0 and "GMAC" in r.stdout, r.stderr


def test_a_resume_with_ema_decay_0_as_it_started_continues(tmp_path):
    sn = tmp_path / "sn"
    assert run(*TINY_TRAIN, "--ema-decay", "0", "--out", sn).returncode == 0
    r = run(*TINY_TRAIN[:3], "--epochs", "2", "--max-steps", "2", "--batch-size", "8", "--ema-decay", "0",
            "--resume", "--out", sn)
    assert r.returncode == 0, r.stderr[-2000:]


def test_the_demos_deployment_report_names_its_final_place(tmp_path):
    """The demo builds its directory beside its place: the deployment report inside named the temporary one."""
    import json

    from deploy_nas.export.pipeline import RunPlan
    from deploy_nas.export.pipeline import run as deploy
    from deploy_nas.io import atomic_dir
    from deploy_nas.materialize import materialize
    from deploy_nas.supernets import default_supernet

    supernet, space = default_supernet()
    final = tmp_path / "demo"
    with atomic_dir(final, force=True) as tmp:
        deploy(materialize(supernet, space.sample(None, "min")), tmp / "deploy",
               RunPlan(targets=(("onnxruntime", "fp32"),), batches=(1,)), force=True, report_as=final / "deploy")
    text = (final / "deploy" / "report.json").read_text()
    assert ".tmp" not in text and json.loads(text)["onnx"]["path"] == str(final / "deploy" / "model.onnx")
