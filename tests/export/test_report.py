"""Reports: the manifest hashes every artifact, report.md and the console render the same tables, and the summary
the CLI prints is read back from report.json."""
from __future__ import annotations

import json

from deploy_nas.export.fps import measure_fps
from deploy_nas.export.parity import check_parity
from deploy_nas.export.report import DeployReport, fps_table, manifest, parity_table, summary_of, versions, write_report
from deploy_nas.io import sha256_file


def _report(reference_engines, parity_batch) -> DeployReport:
    engine = reference_engines["min"]
    return DeployReport(model={"family": "autoformer", "arch": "vit", "config_id": "abc", "params": 1000,
                               "gmacs": 0.001, "img_size": 32},
                        parity=(check_parity(engine, engine, parity_batch),),
                        fps=tuple(measure_fps(engine, batch=[1, 2], runs=50, warmup=1)), notes=("a note",))


def test_manifest_hashes_files_and_skips_hidden_and_reports(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "w.bin").write_bytes(b"123")
    (tmp_path / ".tmp.x").write_bytes(b"partial")
    (tmp_path / "report.md").write_text("# r")
    m = manifest(tmp_path)
    assert set(m["files"]) == {"a/w.bin"} and m["files"]["a/w.bin"] == {"sha256": sha256_file(tmp_path / "a/w.bin"),
                                                                       "bytes": 3}
    assert {"torch", "onnx", "python", "deploy_nas"} <= set(m["versions"]) and versions()["torch"]


def test_report_json_and_markdown_carry_the_same_rows(tmp_path, reference_engines, parity_batch):
    report = _report(reference_engines, parity_batch)
    json_path, md_path = write_report(tmp_path, report)
    data = json.loads(json_path.read_text())
    assert data["passed"] is True and len(data["fps"]) == 2 and len(data["fps"][0]["times_ms"]) == 50
    md = md_path.read_text()
    assert md.startswith("# Deployment report: PASSED")
    for line in parity_table(data["parity"]).markdown_lines() + fps_table(data["fps"]).markdown_lines()[:2]:
        assert line in md
    assert "| torch | fp32 | logits | 0 |" in md and "- a note" in md


def test_summary_is_read_back_from_report_json(tmp_path, reference_engines, parity_batch):
    write_report(tmp_path, _report(reference_engines, parity_batch))
    headline, tables, notes = summary_of(tmp_path)
    assert headline.startswith("PASSED: autoformer subnet abc (vit), 0.001M params")
    assert [t.title for t in tables] == ["parity vs the dense torch model", "speed"]
    assert [len(t.rows) for t in tables] == [1, 2]
    assert notes[0] == "note: a note" and notes[-1].startswith("report: ")
