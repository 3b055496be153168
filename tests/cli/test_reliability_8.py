"""An eighth hostile try of the CLI (2026-12-07, seventh session). Each test failed on the code before its fix."""
from __future__ import annotations

import json

import pytest

from tests.cli.test_extract_info import run
from tests.cli.test_reliability import one_error_line


def _earlier_demo(d, files=None):
    """A directory laid out as the demo leaves it: report.json (listing `files` when given), search/, deploy/,
    each file recorded as written by deploy-nas."""
    from deploy_nas.io import make_dirs, record_written

    make_dirs(d / "search")
    make_dirs(d / "deploy" / "openvino" / "fp32")
    (d / "search" / "pareto.json").write_text("{}")
    (d / "deploy" / "openvino" / "fp32" / "model.xml").write_text("<net/>")
    report = {"supernet": {}, "search": {}, "parity": {}, "bench": []}
    if files is not None:
        report["files"] = files
    (d / "report.json").write_text(json.dumps(report))
    for f in ("search/pareto.json", "deploy/openvino/fp32/model.xml", "report.json"):
        record_written(d / f, create=True)
    return d


def test_the_demo_does_not_replace_another_commands_output_inside_its_own(tmp_path):
    """The demo replaced its earlier output whole without being asked, with whatever another command had written
    inside it since (`export openvino --int8 --out DEMO/deploy/int8`: minutes of work, gone at the next `make demo`).
    Now the demo's report lists the files it wrote, and any other is refused without --force."""
    from deploy_nas.errors import OutputPathError
    from deploy_nas.io import make_dirs, record_written
    from deploy_nas.workflows import _demo_files, check_demo_output

    demo = _earlier_demo(tmp_path / "demo")
    listed = _demo_files(demo)
    assert listed == ["deploy/openvino/fp32/model.xml", "report.json", "search/pareto.json"]  # no markers
    report = json.loads((demo / "report.json").read_text())
    (demo / "report.json").write_text(json.dumps({**report, "files": listed}))  # recorded above
    check_demo_output(demo)  # only what the demo wrote: replaced without being asked (`make demo` twice)
    (demo / ".deploy.deploy-nas-lock").write_text("123")  # a lock left by a kill beside deploy/ is no user file
    check_demo_output(demo)

    make_dirs(demo / "deploy" / "int8")
    (demo / "deploy" / "int8" / "model.xml").write_text("<net/>")
    record_written(demo / "deploy" / "int8" / "model.xml", create=True)  # another deploy-nas command's output
    with pytest.raises(OutputPathError, match=r"files the demo did not write \('deploy/int8/model.xml'\)"):
        check_demo_output(demo)
    line = one_error_line(run("demo", "--out", demo, "--generations", "1"))
    assert "deploy/int8/model.xml" in line and "--force" in line
    assert (demo / "deploy" / "int8" / "model.xml").read_text() == "<net/>"
    check_demo_output(demo, force=True)  # asked: replaced with the rest


def test_an_older_demos_output_without_its_file_list_needs_force(tmp_path):
    from deploy_nas.errors import OutputPathError
    from deploy_nas.workflows import check_demo_output

    demo = _earlier_demo(tmp_path / "demo")
    with pytest.raises(OutputPathError, match="older demo.*--force"):
        check_demo_output(demo)
    check_demo_output(demo, force=True)


@pytest.mark.parametrize("given", ["dep", "dep/openvino/fp32"])
def test_the_rebuild_hint_names_the_deployment_whichever_directory_was_given(tmp_path, given):
    """Given the precision directory of a build that is gone, the hint said `export openvino dep/openvino/fp32/openvino`
    (the path it looked in, dep/openvino/fp32/openvino/fp32, two levels too deep)."""
    from deploy_nas.errors import ExportError
    from deploy_nas.export.backends import get_backend
    from deploy_nas.export.backends.base import BuildConfig

    (tmp_path / "dep" / "openvino" / "fp32").mkdir(parents=True)
    with pytest.raises(ExportError) as err:
        get_backend("openvino").load(tmp_path / given, BuildConfig(precision="fp32"))
    assert f"in {tmp_path / 'dep' / 'openvino' / 'fp32'};" in str(err.value)
    assert f"export openvino {tmp_path / 'dep'} --precision fp32" in str(err.value)
