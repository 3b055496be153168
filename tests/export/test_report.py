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


def test_the_parity_table_shows_the_figures_its_gates_judged():
    """An int8 row read `top-1 0.944 | ... top1>=0.95 | pass`: the gate had judged the tie-aware agreement (0.972),
    the table printed the strict one, and the mean-cosine gate's figure was nowhere."""
    row = {"backend": "openvino", "precision": "int8", "passed": True,
           "tolerance": {"max_abs": None, "min_cosine": 0.9, "min_mean_cosine": 0.98, "min_top1": 0.95,
                         "top1_tie": 0.1, "source": "default"},
           "outputs": [{"name": "logits", "max_abs": 0.3, "max_rel": 0.2, "cosine_min": 0.93, "cosine_mean": 0.991,
                        "top1": 0.944, "top1_tie_aware": 0.972, "top5": 0.9}]}
    line = parity_table([row]).markdown_lines()[-1]
    assert "0.972 (strict 0.944)" in line and "0.930000 (mean 0.991000)" in line
    assert "cos mean>=0.98" in line and "top1>=0.95 (ties 0.1 std)" in line
    same = {**row, "outputs": [{**row["outputs"][0], "top1_tie_aware": 0.944}]}
    assert "strict" not in parity_table([same]).markdown_lines()[-1]
