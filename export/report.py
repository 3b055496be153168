"""Deployment reports: a manifest (sha256 of every artifact + tool versions), report.json and report.md."""
from __future__ import annotations

import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from deploy_nas.console import Table
from deploy_nas.io import sha256_file, write_bytes_atomic, write_json_atomic

REPORT_JSON, REPORT_MD = "report.json", "report.md"
TOOLS = ("torch", "onnx", "onnxruntime", "onnxsim", "openvino", "nncf", "tensorrt", "numpy")
# TensorRT ships under several distribution names, one per CUDA major version.
_DISTRIBUTIONS = {"tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11")}


def package_version(name: str) -> str | None:
    """The installed version of a tool, read from package metadata (nothing is imported); None if absent."""
    for dist in _DISTRIBUTIONS.get(name, (name,)):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def versions(names: Iterable[str] = TOOLS) -> dict[str, str | None]:
    out = {n: package_version(n) for n in names}
    out["python"] = platform.python_version()
    out["deploy_nas"] = package_version("deploy-nas")
    return out


def manifest(directory: str | Path, exclude: Sequence[str] = (REPORT_JSON, REPORT_MD)) -> dict[str, Any]:
    """{"files": {relative path: {"sha256", "bytes"}}, "versions": {...}} for every artifact under `directory`
    (hidden temporaries and the report files themselves excluded)."""
    root = Path(directory)
    files = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in exclude and not any(part.startswith(".") for part in p.relative_to(root).parts):
            files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return {"files": files, "versions": versions()}


@dataclass(frozen=True)
class DeployReport:
    """What one deployment run produced and proved."""

    model: dict[str, Any] = field(default_factory=dict)  # spec summary, config id, params, FLOPs ...
    onnx: dict[str, Any] | None = None  # OnnxExportResult.to_dict()
    engines: tuple[dict[str, Any], ...] = ()  # Engine.info() per built engine
    parity: tuple[Any, ...] = ()  # ParityResult
    fps: tuple[Any, ...] = ()  # FpsResult
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool | None:
        """Every parity gate passed; None (not verified) when no row is left for this model (a later command
        replaced the model or graph the run compared and dropped its rows)."""
        return all(p.passed for p in self.parity) if self.parity else None

    def to_dict(self, directory: str | Path | None = None) -> dict[str, Any]:
        return {"passed": self.passed, "model": self.model, "onnx": self.onnx, "engines": list(self.engines),
                "parity": [p.to_dict() for p in self.parity], "fps": [f.to_dict(raw=True) for f in self.fps],
                "notes": list(self.notes),
                "manifest": manifest(directory) if directory is not None else {"files": {}, "versions": versions()}}


def write_report(directory: str | Path, report: DeployReport) -> tuple[Path, Path]:
    """report.json (with the manifest of `directory`) and report.md, each written atomically."""
    directory = Path(directory)
    data = report.to_dict(directory)
    json_path = write_json_atomic(directory / REPORT_JSON, data)
    md_path = write_bytes_atomic(directory / REPORT_MD, render_markdown(report, data["manifest"]).encode())
    return json_path, md_path


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def parity_table(results: Sequence[dict[str, Any]]) -> Table:
    """Parity rows (ParityResult.to_dict() entries), for report.md and the console alike. Each figure a gate judged
    is shown as the gate saw it: top-1 is the tie-aware agreement (the strict one beside it where they differ), and
    the mean-cosine gate, where there is one, gets its figure too."""
    table = Table("parity vs the dense torch model", ("backend", "precision", "output", "max abs", "max rel",
                                                      "cos min", "top-1", "top-5", "tolerance", "result"))
    for r in results:
        t = r["tolerance"]
        tie = f" (ties {_fmt(t.get('top1_tie'), 'g')} std)" if t.get("top1_tie") else ""
        mean = f", cos mean>={_fmt(t['min_mean_cosine'], 'g')}" if t.get("min_mean_cosine") is not None else ""
        tol = (f"abs<={_fmt(t['max_abs'], 'g')}, cos>={_fmt(t['min_cosine'], 'g')}{mean}, "
               f"top1>={_fmt(t['min_top1'], 'g')}{tie}"
               + (f" ({t['source']})" if t.get("source", "default") != "default" else ""))
        for o in r["outputs"]:
            gated = o.get("top1_tie_aware", o["top1"])
            top1 = f"{gated:.3f}" + (f" (strict {o['top1']:.3f})" if f"{gated:.3f}" != f"{o['top1']:.3f}" else "")
            cos = f"{o['cosine_min']:.6f}" + (f" (mean {o['cosine_mean']:.6f})" if mean and "cosine_mean" in o else "")
            table.add_row(r["backend"], r["precision"], o["name"], f"{o['max_abs']:.3g}", f"{o['max_rel']:.3g}",
                          cos, top1, f"{o['top5']:.3f}", tol, "pass" if r["passed"] else "FAIL")
    return table


def fps_table(rows: Sequence[dict[str, Any]]) -> Table:
    """Speed rows (bench.json / FpsResult.to_dict() entries)."""
    table = Table("speed", ("backend", "precision", "mode", "batch", "threads", "requests", "p50 ms", "p90 ms",
                            "p99 ms", "images/s"))
    for f in rows:
        table.add_row(f["backend"], f["precision"], f["mode"], f["batch"], f["threads"], f.get("requests", 1),
                      f"{f['p50_ms']:.3f}", f"{f['p90_ms']:.3f}", f"{f['p99_ms']:.3f}", f"{f['throughput_fps']:.1f}")
    return table


def profile_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """"Where the time goes": the op-type table of every row that carries a profile."""
    tables = profile_tables(rows)
    if not tables:
        return []
    lines = ["## Where the time goes", ""]
    for t in tables:
        lines += [f"**{t.title}**", "", *t.markdown_lines(), ""]
    return lines


def render_markdown(report: DeployReport, files: dict[str, Any]) -> str:
    lines = [f"# Deployment report: {verdict(report.passed)}", ""]
    if report.model:
        lines += ["## Model", "", *(f"- {k}: {v}" for k, v in report.model.items()), ""]
    if report.onnx:
        o = report.onnx
        lines += ["## ONNX", "", f"- exporter {o.get('exporter')}, opset {o.get('opset')}, simplified "
                  f"{o.get('simplified')} ({o.get('simplify_note')})", f"- sha256 {o.get('sha256')}", ""]
    if report.parity:
        lines += ["## Parity (vs the dense torch model)", "",
                  *parity_table([p.to_dict() for p in report.parity]).markdown_lines(), ""]
    if report.fps:
        lines += ["## Speed", "", *fps_table([f.to_dict(raw=False) for f in report.fps]).markdown_lines(), ""]
        lines += profile_lines([f.to_dict(raw=False) for f in report.fps])
    lines += ["## Artifacts", "", "| file | bytes | sha256 |", "|---|---|---|",
              *(f"| {k} | {v['bytes']} | `{v['sha256'][:16]}` |" for k, v in files["files"].items()), "",
              "## Versions", "", *(f"- {k}: {v}" for k, v in files["versions"].items()), ""]
    if report.notes:
        lines += ["## Notes", "", *(f"- {n}" for n in report.notes), ""]
    return "\n".join(lines)


def verdict(passed: bool | None) -> str:
    return "NOT VERIFIED (no parity rows for this model: run `deploy-nas parity`)" if passed is None else (
        "PASSED" if passed else "FAILED")


def summary_of(directory: str | Path) -> tuple[str, list[Table], list[str]]:
    """(headline, [parity table, speed table], note lines) of a deployment directory's report.json."""
    import json

    directory = Path(directory)
    report = json.loads((directory / REPORT_JSON).read_text())
    m = report["model"]
    headline = (f"{verdict(report['passed'])}: {m.get('family')} subnet {m.get('config_id')} "
                f"({m.get('arch')}), {m.get('params', 0) / 1e6:.3f}M params, {m.get('gmacs', 0):.4f} GMAC, "
                f"{m.get('img_size')}px")
    notes = [f"note: {n}" for n in report["notes"]]
    notes.append(f"report: {directory / REPORT_MD} (+ report.json, manifest.json)")
    return headline, [parity_table(report["parity"]), fps_table(report["fps"]), *profile_tables(report["fps"])], notes


def profile_tables(rows: Sequence[dict[str, Any]]) -> list[Table]:
    from deploy_nas.export.profile import profile_table

    return [profile_table(f"{r['backend']} {r['precision']}", r["info"]["op_profile"])
            for r in rows if r.get("info", {}).get("op_profile")]


def print_summary(directory: str | Path) -> None:
    """The headline, the tables and the notes of a deployment directory, for people (stdout)."""
    from deploy_nas.console import say, show

    headline, tables, notes = summary_of(directory)
    say(headline)
    for table in tables:
        show(table)
    for line in notes:
        say(line)
