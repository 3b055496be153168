"""The deployment directory and the stages that fill it: extract -> export -> build -> parity -> bench -> report.

A deployment directory `out/` holds:

    dense/                      spec.json + weights.safetensors (the reference model)
    model.onnx, model.onnx.json the exported graph and its sidecar
    openvino/<precision>/       model.xml + model.bin + build.json
    tensorrt/<precision>/       model.engine + build.json (tensorrt/timing.cache beside them)
    parity.json                 {"<backend>/<precision>": ParityResult}, updated by every parity run
    bench.json                  a list of FPS rows, updated by every bench run
    report.md, report.json, manifest.json   written by `run`

Each stage reads what the earlier ones wrote, so the CLI commands can be run one by one or chained by `run`.
Every file is written under a temporary name and renamed; `run` builds the whole directory under a temporary
name and renames it at the end, so an interrupted run leaves nothing under `out/`.

Every parity and bench row records what it measured (`measured_on`: the sha256 of the dense model's files, for
an engine run from an ONNX graph that graph's sha256, and for a saved engine its files' sha256). Each command that
writes into a deployment keeps only the rows of the model the directory holds now (`refresh`): rows measured on
other dense files, on another graph of them than model.onnx's sidecar records, or on an engine since built again
(other calibration data, say), are dropped from parity.json and bench.json with a note naming the commands that
measure them again, and a report.json whose model, graph or engines were replaced since `run` is rewritten for
what is there now. A row written before rows carried the record is kept only when `run`'s report.json vouches for
it: the manifest copy in it records the very parity.json/bench.json and dense files there now (the row file is then
the one that run wrote, for this model); the row gets the record of that run's dense files and graph. Any other
row without a record is dropped: a sidecar that matches the dense files says nothing of rows measured before it.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploy_nas.errors import DeployNASError, ExportError, ParityError, command
from deploy_nas.export.backends import BuildConfig, Engine, backend_class, get_backend
from deploy_nas.io import one_command, sha256_file, write_json_atomic

DENSE_DIR, ONNX_FILE = "dense", "model.onnx"
PARITY_JSON, BENCH_JSON, MANIFEST_JSON = "parity.json", "bench.json", "manifest.json"
REPORT_JSON = "report.json"  # = export.report.REPORT_JSON (imported lazily there)
MEASURED_ON = "measured_on"  # a parity/bench row's record of the files it measured
BENCH_KEYS = ("backend", "precision", "batch", "mode", "threads", "p50_ms", "p90_ms", "p99_ms", "throughput_fps")
# Parity batch: real images first (top-1 agreement means something on them), then random inputs (they reach
# activation ranges the images do not).
PARITY_IMAGES, PARITY_RANDOM = 64, 8


def dense_dir(out: str | Path) -> Path:
    """The dense model of a deployment directory: out/dense, or `out` itself when it holds spec.json."""
    from deploy_nas.dense import SPEC_FILE

    out = Path(out)
    if (out / SPEC_FILE).is_file():
        return out
    if (out / DENSE_DIR / SPEC_FILE).is_file():
        return out / DENSE_DIR
    raise ExportError(f"no dense model in {out} (expected {out / DENSE_DIR / SPEC_FILE}); "
                      f"create it with `{command('extract', '--out', out / DENSE_DIR)}` or `deploy-nas run`")


def onnx_path(out: str | Path) -> Path:
    return Path(out) / ONNX_FILE


def check_request(backend: str, precision: str) -> None:
    """Typed errors for an unknown backend or precision, or one the backend cannot build or run here."""
    cls = backend_class(backend)
    BuildConfig(precision=precision).validate()
    reason = cls.unavailable_reason()
    if reason is not None:
        from deploy_nas.errors import BackendUnavailable

        raise BackendUnavailable(f"{backend} is unavailable: {reason}")
    cls().check(BuildConfig(precision=precision))


# ----------------------------------------------------------------------------------------------------- digests

# ------------------------------------------------------------------------------------------------------ stages


@one_command()
def export_to(out: str | Path, opset: int = 17, dynamo: bool = False, simplify: bool = True):
    """out/model.onnx (+ sidecar, which records the dense model's files it came from) from out's dense model."""
    from deploy_nas.dense import load_dense
    from deploy_nas.export.onnx import export_onnx

    d = dense_dir(out)
    source = dense_digests(d)
    result = export_onnx(load_dense(d), onnx_path(out), opset=opset, dynamo=dynamo, simplify=simplify,
                         exported_from=source)
    refresh(out)
    return result


def refresh(out: str | Path, now: _Current | None = None) -> None:
    """After a command wrote into a deployment: parity.json and bench.json keep the rows of the model the directory
    holds now (the others are dropped, with a note), a report.json whose model or graph was replaced since is
    rewritten for the model there now, and a run directory's manifest.json records every file anew. Only files
    deploy-nas wrote are touched; each is rewritten atomically, and only when something changed."""
    out = Path(out)
    now = now or _Current.of(out)
    for name in (PARITY_JSON, BENCH_JSON):
        _prune(now, name)
    _refresh_report(now)
    refresh_manifest(out)


def refresh_manifest(out: str | Path) -> None:
    """A deployment that `run` wrote keeps its manifest.json true: a later export, build, parity or bench in it
    records the sha256 of every file anew (nothing to do in a directory without one)."""
    from deploy_nas.io import written_here

    path = Path(out) / MANIFEST_JSON
    if path.is_file() and written_here(path):  # a user's file of that name is theirs
        from deploy_nas.export.report import manifest

        write_json_atomic(path, manifest(out, exclude=(MANIFEST_JSON,)))


def dense_digests(d: Path) -> dict[str, str]:
    """{file: sha256} of a dense model's spec and weights (hashed once per command)."""
    from deploy_nas.dense import SPEC_FILE, WEIGHTS_FILE

    missing = [name for name in (SPEC_FILE, WEIGHTS_FILE) if not (d / name).is_file()]
    if missing:
        raise ExportError(f"{d / missing[0]} not found: the dense model in {d} is incomplete; extract it again "
                          f"(`{command('extract', '--out', d, '--force')}` with its supernet and config)")
    return {name: sha256_file(d / name) for name in (SPEC_FILE, WEIGHTS_FILE)}


def build_config(out: str | Path, precision: str, threads: int | None = None, calib_dir: str | Path | None = None,
                 max_batch: int = 32, device: str | None = None) -> BuildConfig:
    return BuildConfig(precision=precision, threads=threads, out_dir=Path(out), calib_dir=calib_dir,
                       max_batch=max_batch, opt_batch=min(8, max_batch), device=device)


@one_command()
def build(out: str | Path, backend: str, precision: str = "fp32", threads: int | None = None,
          calib_dir: str | Path | None = None, max_batch: int = 32) -> Engine:
    """Build (and save, for openvino/tensorrt) the engine of out/model.onnx; torch opens the dense model."""
    check_request(backend, precision)
    config = build_config(out, precision, threads, calib_dir, max_batch)
    if backend == "torch":
        return get_backend("torch").build(dense_dir(out), config)
    source = onnx_path(out)
    if not source.is_file():
        raise ExportError(f"{source} not found; run `{command('export', 'onnx', out)}` first")
    check_onnx_record(source, out)
    engine = get_backend(backend).build(source, config)
    if backend != "onnxruntime":  # it saves nothing
        refresh(out)
    return engine


def check_onnx_record(source: Path, out: str | Path) -> str:
    """A deployment's model.onnx must be the graph its sidecar records (sha256), exported from the dense model the
    directory holds now: one copied in from another deployment, edited, or left from before the dense model was
    extracted again would be built, timed and compared against a model it does not lower. (A sidecar written before
    the dense files were recorded is checked for the graph alone.) Returns the graph's sha256."""
    from deploy_nas.export.onnx import sidecar_path

    side, again = sidecar_path(source), f"export it again with `{command('export', 'onnx', out)}`"
    try:
        record = json.loads(side.read_text())
        recorded, exported_from = record["sha256"], record.get("exported_from")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ExportError(f"{source} has no readable record of its export ({side.name}); {again}") from None
    digest = sha256_file(source)
    if recorded != digest:
        raise ExportError(f"{source} is not the graph {side.name} records (replaced or modified since its export); "
                          f"{again}")
    d = dense_dir(out)
    if exported_from is None:
        if not _Current.of(out).run_vouches_graph(digest):
            raise ExportError(f"{side} does not record the dense model {source.name} was exported from (an older "
                              f"version's export, or export_onnx called by hand), and no report of `deploy-nas run` "
                              f"ties it to the one in {d}; {again}")
    elif not isinstance(exported_from, dict) or exported_from != dense_digests(d):
        raise ExportError(f"{source} was exported from another dense model than {d} holds now (extracted again "
                          f"since?); {again}, then build its engines again")
    return digest


def check_engine_source(engine: Engine, out: str | Path, backend: str, precision: str) -> Engine:
    """A saved engine must have been built from the deployment's current model.onnx (which check_onnx_record
    ties to the dense model), and from a graph of the dense model there now (build.json records the dense files
    too, so this holds with model.onnx deleted): an IR left from an earlier export would be timed and compared as
    this model's. Engines built before these records were kept are checked for what they record."""
    meta = getattr(engine, "meta", {})
    source, rebuild = onnx_path(out), f"`{command('export', backend, out, '--precision', precision)}`"
    if meta.get("onnx_sha256") is not None and source.is_file():  # the graph's record ties it to the dense model
        if meta["onnx_sha256"] != check_onnx_record(source, out):
            raise ExportError(f"the {backend} {precision} engine in {out} was built from another model.onnx than the "
                              f"one there now (exported again since); build it again with {rebuild}")
        return engine
    exported_from = meta.get("exported_from")  # no graph left: the engine's own record of the dense model
    if exported_from is not None and exported_from != dense_digests(dense_dir(out)):
        raise ExportError(f"the {backend} {precision} engine in {out} was built from another dense model than "
                          f"{dense_dir(out)} holds now (extracted again since?); export it again with "
                          f"`{command('export', 'onnx', out)}`, then {rebuild}")
    return engine


def open_engine(out: str | Path, backend: str, precision: str = "fp32", threads: int | None = None) -> Engine:
    """The engine a previous `build` saved (openvino, tensorrt), or a fresh one (torch, onnxruntime); the backend
    named in any case, as `run` and the backend registry take it (ONNXRUNTIME looked for a saved engine)."""
    backend = str(backend).lower()
    check_request(backend, precision)
    if backend in ("torch", "onnxruntime"):
        return build(out, backend, precision, threads)
    return check_engine_source(get_backend(backend).load(out, build_config(out, precision, threads)), out, backend,
                               precision)


def parity_batch(spec: Any, data_dir: str | Path | None = None, n_images: int = PARITY_IMAGES,
                 n_random: int = PARITY_RANDOM) -> np.ndarray:
    """Real images (from `data_dir`, else the plain embedded digits' test split) followed by seeded random inputs."""
    from deploy_nas.data import embedded_images, load_image_folder
    from deploy_nas.export.parity import parity_inputs

    if data_dir is not None:
        images = load_image_folder(data_dir, spec.img_size, spec.in_chans, limit=n_images).images
    else:
        images = embedded_images(n_images, spec.img_size, spec.in_chans)
    return parity_inputs(spec, images, n_random=n_random)


@one_command()
def parity(out: str | Path, engine: Engine, reference: Engine, data_dir: str | Path | None = None,
           write: bool = True):
    """Compare `engine` with the torch reference (both of out's model), record it in out/parity.json, and raise
    ParityError on failure."""
    from deploy_nas.export.parity import check_parity, gate

    spec = reference.model.spec
    record = measured_on(out, engine) if write else None  # the files as they are when it is measured
    result = check_parity(reference, engine, parity_batch(spec, data_dir))
    if record is not None:
        update_json(Path(out) / PARITY_JSON, {f"{result.backend}/{result.precision}": parity_row(result, record,
                                                                                                 data_dir)})
    return gate(result)


def measured_on(out: str | Path, engine: Engine) -> dict[str, Any]:
    """What a parity or bench row of `engine` (built from out's files) measured: the sha256 of out's dense files
    (the torch reference, and the model every engine lowers), for an engine run from an ONNX graph that graph's
    sha256 (a saved engine's build.json records the graph it was built from), and for a saved engine the sha256 of
    its files (build.json's `files`): an engine built again from the same graph with other settings (int8 with
    other calibration data, another runtime version) is another engine, its rows measured on the one it replaced."""
    record: dict[str, Any] = {"dense": dense_digests(dense_dir(out))}
    graph = _engine_graph(engine)
    if graph is not None:
        record["onnx_sha256"] = graph
    files = _engine_files(getattr(engine, "meta", None)) if engine.name in SAVED_ENGINES else None
    if files is not None:
        record["engine_files"] = files
    return record


SAVED_ENGINES = ("openvino", "tensorrt")  # the backends whose engines live in out/<backend>/<precision>/


def _engine_files(meta: Any) -> dict[str, str] | None:
    """{file: sha256} of a saved engine, as its build.json records them (None: not a saved engine's record)."""
    files = meta.get("files") if isinstance(meta, dict) else None
    ok = isinstance(files, dict) and files and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())
    return dict(files) if ok else None


def _engine_graph(engine: Engine) -> str | None:
    if engine.name == "torch":
        return None
    meta = getattr(engine, "meta", None)
    if isinstance(meta, dict) and isinstance(meta.get("onnx_sha256"), str):
        return meta["onnx_sha256"]
    source = getattr(engine, "source", None)  # onnxruntime runs the file itself
    if isinstance(source, (str, Path)) and str(source) and Path(source).is_file():
        return sha256_file(Path(source))
    return None


def parity_row(result: Any, record: dict[str, Any], data_dir: str | Path | None = None) -> dict[str, Any]:
    """The parity.json entry of a ParityResult, with the record of what it measured (`measured_on`) and on which
    images (`data`: the folder given, else the embedded digits; seeded random inputs follow them)."""
    data = str(Path(data_dir).resolve()) if data_dir is not None else "embedded digits"
    return {**result.to_dict(), "data": data, MEASURED_ON: record}


@one_command()
def bench(out: str | Path, engine: Engine, batches: Sequence[int] = (1, 8), runs: int = 50, warmup: int = 10,
          write: bool = True, profile: bool = True) -> list:
    """FPS rows for each batch size (1: latency mode, > 1: throughput mode), recorded in out/bench.json. The row of
    the first batch also carries `info.op_profile`: where the time goes, from the runtime's profiler (a separate
    run), for the engines whose runtime has one."""
    from deploy_nas.export.fps import measure_fps, mode_for_batch

    record = measured_on(out, engine) if write else None  # the files as they are when it is timed
    rows = []
    for b in batches:
        rows += measure_fps(engine, batch=b, mode=mode_for_batch(b), runs=runs, warmup=warmup)
    if profile and rows:
        x = np.random.default_rng(0).standard_normal((rows[0].batch, *engine.input_shape), dtype=np.float32)
        ops = engine.op_profile(x)
        if ops is not None:
            rows[0].info["op_profile"] = [o.to_dict() for o in ops]
    if record is not None:
        update_bench(Path(out) / BENCH_JSON, [{**bench_row(r), MEASURED_ON: record} for r in rows])
    return rows


@one_command()
def parity_of(out: str | Path, backend: str, precision: str = "fp32", data_dir: str | Path | None = None,
              threads: int | None = None):
    """`deploy-nas parity`: the saved engine of `out` against its dense torch model, recorded in out/parity.json;
    ParityError (carrying the result) after the record when a gate fails."""
    check_compared(backend)
    with build(out, "torch", threads=threads) as reference, open_engine(out, backend, precision, threads) as engine:
        return parity(out, engine, reference, data_dir)


@one_command()
def bench_of(out: str | Path, backend: str, precision: str = "fp32", batches: Sequence[int] = (1, 8),
             runs: int = 50, warmup: int = 10, threads: int | None = None) -> list:
    """`deploy-nas bench`: FPS rows of the saved engine of `out`, recorded in out/bench.json."""
    with open_engine(out, backend, precision, threads) as engine:
        return bench(out, engine, batches, runs, warmup)


def bench_row(result: Any) -> dict[str, Any]:
    """The bench.json row of an FpsResult: the fixed keys first, then the details (raw times included)."""
    d = result.to_dict(raw=True)
    return {**{k: d[k] for k in BENCH_KEYS}, **{k: v for k, v in d.items() if k not in BENCH_KEYS}}


# -------------------------------------------------------------------------------------------------- json files


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text()) if path.is_file() else default
    except (OSError, ValueError):
        return default  # a damaged report is replaced, never trusted


def _prune(now: _Current, name: str) -> None:
    """Drop the rows of another model from out/<name> (parity.json or bench.json) when deploy-nas wrote it."""
    from deploy_nas.io import written_here

    path = now.out / name
    if now.dense is None or not (path.is_file() and written_here(path)):
        return
    data = _read_json(path, None)
    if name == PARITY_JSON and isinstance(data, dict):
        rows = list(data.items())
    elif name == BENCH_JSON and isinstance(data, list):
        rows = [(None, r) for r in data]
    else:
        return  # damaged or hand-made: the next parity or bench run replaces it
    kept, dropped = now.sort(path, rows)
    if kept != rows:  # rows dropped, or rows vouched for by the run given their record
        _say_dropped(now, name, dropped)
        write_json_atomic(path, dict(kept) if name == PARITY_JSON else [r for _, r in kept])


def _remeasure(out: Path, name: str, rows: Sequence[Any]) -> list[str]:
    """The commands that measure the dropped rows of out/<name> again."""
    wanted: dict[tuple[str, str], set[int]] = {}
    for r in rows:
        if isinstance(r, dict) and isinstance(r.get("backend"), str) and isinstance(r.get("precision"), str):
            batches = wanted.setdefault((r["backend"], r["precision"]), set())
            if isinstance(r.get("batch"), int) and not isinstance(r["batch"], bool):
                batches.add(r["batch"])
    verb = "parity" if name == PARITY_JSON else "bench"
    return [f"`{command(verb, out, '--backend', b, '--precision', p)}"
            + (f" --batch {','.join(map(str, sorted(batches)))}`" if verb == "bench" and batches else "`")
            for (b, p), batches in wanted.items() if not (verb == "parity" and b == "torch")]


def _dropped_words(now: _Current, name: str, rows: Sequence[Any]) -> str:
    def label(r: Any) -> str:
        if not isinstance(r, dict):
            return "a damaged row"
        return f"{r.get('backend')}/{r.get('precision')}" + (f" batch {r['batch']}" if name == BENCH_JSON else "")

    def of_old_graph(r: Any) -> bool:  # a saved engine's row that no longer matches the dense model or the graph
        return isinstance(r, dict) and MEASURED_ON in r and r.get("backend") in SAVED_ENGINES and not now.holds(
            r, engine=False)

    out = now.out
    labels = [label(r) for r in rows]
    shown = ", ".join(labels[:6]) + (", ..." if len(labels) > 6 else "")
    unrecorded = sum(not isinstance(r, dict) or MEASURED_ON not in r for r in rows)
    why = [f"{len(rows) - unrecorded} measured on another dense model, ONNX graph or engine build than {out} holds "
           "now"] * bool(len(rows) - unrecorded) + [
        f"{unrecorded} from before rows recorded what they measured, not tied to the model there now by `run`'s "
        "report.json"] * bool(unrecorded)
    again = _remeasure(out, name, rows)
    return (f"dropped {len(rows)} row(s) of {out / name} ({shown}): {'; '.join(why)}"
            + (f"; measure them again with {', '.join(again)}" if again else "")
            + (" (an engine built from an earlier graph asks to be built again first)"
               if any(of_old_graph(r) for r in rows) else ""))


def _say_dropped(now: _Current, name: str, rows: Sequence[Any]) -> None:
    if rows:
        print(f"note: {_dropped_words(now, name, rows)}", file=sys.stderr, flush=True)


class _Row:
    """A parity.json or bench.json row where a DeployReport holds a ParityResult or an FpsResult."""

    def __init__(self, row: dict[str, Any]):
        self.row = row

    @property
    def passed(self) -> bool:
        return self.row.get("passed") is True

    def to_dict(self, raw: bool = True) -> dict[str, Any]:
        return dict(self.row) if raw else {k: v for k, v in self.row.items() if k != "times_ms"}


def _file_rows(now: _Current, name: str) -> list[dict[str, Any]]:
    """The rows of out/<name> (deploy-nas's, already pruned) that a report can show."""
    from deploy_nas.export.report import fps_table, parity_table, profile_tables
    from deploy_nas.io import written_here

    path = now.out / name
    data = _read_json(path, None) if path.is_file() and written_here(path) else None
    rows = list(data.values()) if isinstance(data, dict) else data if isinstance(data, list) else []
    shown = []
    for r in rows:
        if name == PARITY_JSON and isinstance(r, dict) and r.get("backend") == "torch":
            continue  # torch against itself (older versions let `parity --backend torch` write it): no evidence
        try:  # a row in a form no command writes is left out of the report, never a traceback
            if name == PARITY_JSON:
                parity_table([r])
            else:
                fps_table([r]), profile_tables([r])
        except (KeyError, TypeError, ValueError, AttributeError, IndexError):
            continue
        shown.append(r)
    return shown


REWRITTEN = "rewritten by a later command"  # how a report.json that `run` no longer stands behind begins its note


def _refresh_report(now: _Current) -> None:
    """report.json + report.md when the dense model, the ONNX graph or an engine that `run` reported was replaced
    since (its model, graph, engines and rows are then of files the directory no longer holds), or when parity.json
    or bench.json no longer hold the rows it shows (a later `parity` or `bench` measured again: a parity failed on
    other data, say): rewritten for the model there now, its graph (the sidecar's), the run's engines and notes that
    still hold, and the rows parity.json and bench.json hold for it, with a note saying what changed. A report
    rewritten so is kept up to date by every later command; the run's own report is left as `run` wrote it while
    all it shows holds."""
    from deploy_nas.export.report import DeployReport, write_report

    report = now.run_report()
    if report is None or now.dense is None:
        return
    onnx = report.get("onnx") if isinstance(report.get("onnx"), dict) else None
    dense_same = now.report_dense(report) == now.dense
    run_graph = onnx.get("sha256") if onnx else None
    graph_same = run_graph is None or now.graph is None or run_graph == now.graph
    notes = [n for n in _listed(report, "notes") if isinstance(n, str)] if dense_same else []
    rewritten = any(n.startswith(REWRITTEN) for n in notes)
    rebuilt = [e for e in _listed(report, "engines") if not now.holds_engine(e)]
    parity, fps = _file_rows(now, PARITY_JSON), _file_rows(now, BENCH_JSON)
    remeasured = not (_same_rows(_listed(report, "parity"), parity) and _same_rows(_listed(report, "fps"), fps))
    if dense_same and graph_same and not rebuilt and not rewritten and not remeasured:
        return
    from deploy_nas.export.onnx import sidecar_path

    if dense_same:
        model = report.get("model") if isinstance(report.get("model"), dict) else {}
    else:
        from deploy_nas.dense import load_dense

        model = model_info(load_dense(dense_dir(now.out)))
    sidecar = _read_json(sidecar_path(onnx_path(now.out)), None) if now.graph is not None else None
    new_onnx = {**sidecar, "path": str(onnx_path(now.out))} if isinstance(sidecar, dict) else None
    notes = [n for n in notes if not onnx or n != onnx.get("simplify_note")]  # the graph's note comes anew
    if new_onnx and isinstance(new_onnx.get("simplify_note"), str):
        notes.insert(0, new_onnx["simplify_note"])
    if not (dense_same and graph_same) or rebuilt:  # what the report described was replaced: say what is dropped
        def stays(r: Any) -> bool:  # a row that stays true: torch's when only the graph was replaced, and the rows
            # of engines not rebuilt when only engines were
            if not (dense_same and isinstance(r, dict)):
                return False
            return r.get("backend") == "torch" or graph_same and (r.get("backend"), r.get("precision")) not in {
                (e.get("backend"), e.get("precision")) for e in rebuilt if isinstance(e, dict)}

        parities = sum(not stays(r) for r in _listed(report, "parity"))
        speeds = sum(not stays(r) for r in _listed(report, "fps"))
        names = sorted({f"{e.get('backend')} {e.get('precision')}" for e in rebuilt if isinstance(e, dict)})
        what = ("dense model" if not dense_same else "ONNX graph" if not graph_same else
                f"{' and '.join(names)} engine{'s' * (len(names) > 1)}")
        notes = [n for n in notes if not n.startswith(REWRITTEN)] + [
            f"{REWRITTEN}: the {what} this report described {'were' if what.endswith('engines') else 'was'} "
            f"replaced since, and its {parities} parity and {speeds} speed row(s) were dropped; it shows the model "
            f"{now.out} holds now with the rows parity.json and bench.json hold for it (each later export, parity "
            f"and bench keeps it so); measure others with `{command('parity', now.out)} --backend ...` and "
            f"`{command('bench', now.out)} --backend ...`"]
    elif not rewritten:  # only rows changed: measured again, or more of them
        notes.append(f"{REWRITTEN}: parity or speed rows were measured in {now.out} after `run`; this report shows "
                     "the rows parity.json and bench.json hold now (each later export, parity and bench keeps it so)")
    engines = [] if not dense_same else [  # graph replaced: the torch engine alone still holds
        e for e in _listed(report, "engines") if e not in rebuilt and (
            graph_same or isinstance(e, dict) and e.get("backend") == "torch")]
    write_report(now.out, DeployReport(model=model, onnx=new_onnx, engines=tuple(engines + now.saved_engines(
        parity + fps, engines)), parity=tuple(_Row(r) for r in parity), fps=tuple(_Row(r) for r in fps),
        notes=tuple(notes)))


def _same_rows(shown: list[Any], held: list[dict[str, Any]]) -> bool:
    """Whether a report's rows are the rows a row file holds (their records of what they measured, and on which
    images, aside: the report's rows from `run` are its results without them)."""
    def key(r: Any) -> str:
        return json.dumps({k: v for k, v in r.items() if k not in (MEASURED_ON, "data")} if isinstance(r, dict) else r,
                          sort_keys=True, default=str)

    return sorted(map(key, shown)) == sorted(map(key, held))


def _listed(report: dict[str, Any], key: str) -> list[Any]:
    value = report.get(key)
    return value if isinstance(value, list) else []


@one_command()
def update_json(path: Path, entries: dict[str, Any]) -> Path:
    """parity.json: `entries` replace those of the same key; the other entries are kept if they are rows of the
    model the directory holds now (`refresh`)."""
    data = _read_json(path, {})
    data = data if isinstance(data, dict) else {}
    now = _Current.of(path.parent)
    kept, dropped = now.sort(path, [(k, v) for k, v in data.items() if k not in entries])
    _say_dropped(now, path.name, dropped)
    write_json_atomic(path, {**dict(kept), **entries})
    refresh(path.parent, now)
    return path


def _bench_key(row: Any) -> tuple | None:  # None: not a row bench wrote (hand-edited or damaged), dropped
    k = tuple(row.get(n) for n in ("backend", "precision", "batch", "mode")) if isinstance(row, dict) else None
    return k if k is not None and all(isinstance(v, (str, int, type(None))) for v in k) else None


@one_command()
def update_bench(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Replace rows with the same (backend, precision, batch, mode), keep the others if they are rows of the model
    the directory holds now (`refresh`)."""
    new = {_bench_key(r) for r in rows}
    old = _read_json(path, [])
    old = [r for r in (old if isinstance(old, list) else []) if _bench_key(r) is not None and _bench_key(r) not in new]
    now = _Current.of(path.parent)
    kept, dropped = now.sort(path, [(None, r) for r in old])
    _say_dropped(now, path.name, dropped)
    write_json_atomic(path, [r for _, r in kept] + rows)
    refresh(path.parent, now)
    return path


# ---------------------------------------------------------------------------------------- rows of the model now


@dataclass(frozen=True)
class _Current:
    """What a deployment directory holds now: its dense files' sha256 (None: no dense model, nothing is judged) and
    the sha256 of model.onnx as its sidecar records it, when that graph was exported from these dense files (None:
    no graph of them; rows are then judged by the dense files alone, as an engine built from a deleted graph is)."""

    out: Path
    dense: dict[str, str] | None
    graph: str | None
    dense_prefix: str = ""  # the dense directory relative to out ("dense/", or "" when out holds spec.json)

    @classmethod
    def of(cls, out: str | Path) -> _Current:
        from deploy_nas.export.onnx import sidecar_path

        out = Path(out)
        try:
            d = dense_dir(out)
            dense = dense_digests(d)
        except (DeployNASError, OSError):
            return cls(out, None, None)
        prefix = "" if d == out else f"{d.relative_to(out).as_posix()}/"
        record = _read_json(sidecar_path(onnx_path(out)), {}) if onnx_path(out).is_file() else {}
        record = record if isinstance(record, dict) else {}
        graph = record.get("sha256")
        now = cls(out, dense, graph if isinstance(graph, str) else None, prefix)
        of_these = record.get("exported_from") == dense or (  # a sidecar from before the record: run's report
            record.get("exported_from") is None and now.run_vouches_graph(graph))
        return now if of_these else cls(out, dense, None, prefix)

    def holds(self, row: dict[str, Any], engine: bool = True) -> bool:
        """Whether a row's record is of the dense model there now (and of its graph, where the row ran one, and,
        with `engine`, of the saved engine there now, where it ran one: an engine directory deleted since is judged
        without it, as a deleted graph is)."""
        record = row.get(MEASURED_ON)
        if not isinstance(record, dict) or record.get("dense") != self.dense:
            return False
        graph = record.get("onnx_sha256")
        if not (graph is None or self.graph is None or graph == self.graph):
            return False
        files = record.get("engine_files") if engine else None
        now = self.engine_files(row.get("backend"), row.get("precision")) if files is not None else None
        return now is None or files == now

    def holds_engine(self, info: Any) -> bool:
        """Whether an engine a report lists (its info) is the saved engine there now, where it records its files
        (a report from before engines recorded them, or an engine directory deleted since, is not judged)."""
        if not isinstance(info, dict) or _engine_files(info) is None:
            return True
        now = self.engine_files(info.get("backend"), info.get("precision"))
        return now is None or now == _engine_files(info)

    def saved_engines(self, rows: list[dict[str, Any]], listed: list[Any]) -> list[dict[str, Any]]:
        """What a rewritten report lists of the saved engines the rows were measured on and `listed` lacks (built
        after `run`): each one's build.json, where it is."""
        have = {(e.get("backend"), e.get("precision")) for e in listed if isinstance(e, dict)}
        found = []
        for key in dict.fromkeys((r.get("backend"), r.get("precision")) for r in rows):
            meta = self.build_record(*key) if key not in have else None
            if meta is not None:
                found.append({**meta, "backend": key[0], "precision": key[1], "dir": str(self.out / key[0] / key[1])})
        return found

    def build_record(self, backend: Any, precision: Any) -> dict[str, Any] | None:
        """out/<backend>/<precision>/build.json when it records a saved engine's files (None: no saved engine)."""
        from deploy_nas.export.backends.base import BUILD_JSON, PRECISIONS

        if backend not in SAVED_ENGINES or precision not in PRECISIONS:
            return None
        meta = _read_json(self.out / backend / precision / BUILD_JSON, None)
        return meta if _engine_files(meta) is not None else None

    def engine_files(self, backend: Any, precision: Any) -> dict[str, str] | None:
        """{file: sha256} that out/<backend>/<precision>/build.json records now (None: no saved engine there)."""
        return _engine_files(self.build_record(backend, precision))

    def sort(self, path: Path, rows: list[tuple[Any, Any]]) -> tuple[list[tuple[Any, Any]], list[Any]]:
        """(kept (key, row) pairs, dropped rows) of a row file's rows. With no dense model nothing is judged."""
        if self.dense is None:
            return rows, []
        vouched, run_graph = False, None
        if any(not isinstance(r, dict) or MEASURED_ON not in r for _, r in rows):
            vouched, run_graph = self.vouched_by_run(path)
        kept, dropped = [], []
        for key, row in rows:
            if isinstance(row, dict) and MEASURED_ON not in row and vouched:
                graph = run_graph if row.get("backend") != "torch" else None
                row = {**row, MEASURED_ON: {"dense": self.dense, **({"onnx_sha256": graph} if graph else {})}}
            if isinstance(row, dict) and self.holds(row):
                kept.append((key, row))
            else:
                dropped.append(row)
        return kept, dropped

    def run_report(self) -> dict[str, Any] | None:
        """report.json when deploy-nas wrote it and it reads as one (its manifest copy included)."""
        from deploy_nas.io import written_here

        path = self.out / REPORT_JSON
        if not (path.is_file() and written_here(path)):
            return None
        report = _read_json(path, None)
        try:
            files = report["manifest"]["files"]
            return report if isinstance(files, dict) and all(isinstance(v, dict) for v in files.values()) else None
        except (KeyError, TypeError):
            return None

    def report_dense(self, report: dict[str, Any]) -> dict[str, str | None]:
        from deploy_nas.dense import SPEC_FILE, WEIGHTS_FILE

        files = report["manifest"]["files"]
        return {n: files.get(f"{self.dense_prefix}{n}", {}).get("sha256") for n in (SPEC_FILE, WEIGHTS_FILE)}

    def run_vouches_graph(self, digest: Any) -> bool:
        """Whether `run`'s report.json ties the graph of sha256 `digest` to the dense files there now (its manifest
        copy records both): what ties a sidecar from before sidecars recorded the dense model to it."""
        report = self.run_report()
        if report is None or self.dense is None or self.report_dense(report) != self.dense:
            return False
        return isinstance(digest, str) and report["manifest"]["files"].get(ONNX_FILE, {}).get("sha256") == digest

    def vouched_by_run(self, path: Path) -> tuple[bool, str | None]:
        """For rows written before rows recorded what they measured: whether `run`'s report.json proves that the
        row file `path` is the very one it wrote for the dense files there now (a later command never rewrote
        report.json then, and its manifest copy records the row files, the dense files and model.onnx as `run` left
        them), and the sha256 of the graph that run measured (None if it recorded none)."""
        report = self.run_report()
        if report is None or self.report_dense(report) != self.dense:
            return False, None
        files, rel = report["manifest"]["files"], path.relative_to(self.out).as_posix()
        if not path.is_file() or files.get(rel, {}).get("sha256") != sha256_file(path):
            return False, None
        onnx = report.get("onnx")
        graph = (onnx.get("sha256") if isinstance(onnx, dict) else None) or files.get(ONNX_FILE, {}).get("sha256")
        return True, graph if isinstance(graph, str) else None


# ------------------------------------------------------------------------------------------------------- run


def check_compared(backend: str) -> None:
    """torch runs the dense model itself: the reference of every parity check, never one compared with it (a
    torch row would compare the model with itself and say PASSED for nothing deployed)."""
    if str(backend).lower() == "torch":
        raise DeployNASError("torch is the reference every engine is compared with, not an engine to compare; "
                             "choose onnxruntime, openvino or tensorrt (torch's speed: `deploy-nas bench --backend "
                             "torch`)")


def plan_targets(backends: Sequence[str], precisions: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """Every backend at every precision it builds (each backend must build at least one of them)."""
    for b in backends:
        check_compared(b)
    for p in precisions:
        BuildConfig(precision=p).validate()
    targets: list[tuple[str, str]] = []
    for b in backends:
        supported = [p for p in precisions if p in backend_class(b).precisions]
        if not supported:
            raise DeployNASError(f"{b} builds none of {', '.join(precisions)}; it builds "
                                 f"{', '.join(backend_class(b).precisions)}")
        targets += [(b, p) for p in supported]
    return tuple(targets)


def model_info(model: Any) -> dict[str, Any]:
    """What a report says about the deployed model: family, arch, config, input size, params, MACs."""
    from deploy_nas.flops import count_flops

    flops = count_flops(model)
    spec = model.spec
    src = spec.source
    info = {"family": src.get("family", spec.arch), "arch": spec.arch, "config_id": src.get("config_id"),
            "config": src.get("config"), "img_size": spec.img_size, "params": flops.params,
            "gmacs": round(flops.gmacs, 6)}
    if "layers" in src:  # a family's short form of the config (PSViT's layer string)
        info["layers"] = src["layers"]
    if spec.class_names is not None:  # the class name of each output index
        info["classes"] = spec.class_names
    return info


@dataclass
class RunPlan:
    """What `run` does: which engines to build, how to measure them."""

    targets: tuple[tuple[str, str], ...]  # (backend, precision), torch excluded: it is the reference
    batches: tuple[int, ...] = (1, 8)
    threads: int | None = None
    runs: int = 50
    warmup: int = 10
    opset: int = 17
    dynamo: bool = False
    simplify: bool = True
    calib_dir: Path | None = None
    data_dir: Path | None = None
    max_batch: int | None = None  # the engines' largest batch (TensorRT's profile): 32, or the largest of `batches`
    cross_check_module: bool = True  # also convert the nn.Module straight to OpenVINO and compare
    model_info: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        """The progress steps `run` reports: extract, export, torch bench, report; build/parity/bench per target;
        the module cross-check."""
        return 4 + 3 * len(self.targets) + (("openvino", "fp32") in self.targets and self.cross_check_module)

    def check(self) -> RunPlan:
        if not self.targets:
            raise DeployNASError("nothing to deploy: pass at least one --backend")
        for backend, precision in self.targets:
            check_compared(backend)
            check_request(backend, precision)
        if any(b < 1 for b in self.batches) or not self.batches:
            raise DeployNASError(f"batch sizes must be >= 1, got {list(self.batches)}")
        self.batches = tuple(dict.fromkeys(self.batches))  # each once: a row per (backend, precision, batch)
        if self.max_batch is None:
            self.max_batch = max(32, *self.batches)
        elif max(self.batches) > self.max_batch:
            raise DeployNASError(f"batch {max(self.batches)} > max_batch {self.max_batch}; raise max_batch or leave "
                                 "it unset (the largest batch)")
        if self.calib_dir is not None and any(p == "int8" for _, p in self.targets):
            from deploy_nas.data import load_image_folder

            load_image_folder(self.calib_dir, 8, limit=1)  # typed error now, not after the ONNX export
        return self


Progress = Callable[[str], None]


@one_command()
def run(model: Any, out: str | Path, plan: RunPlan, progress: Progress = lambda step: None,
        force: bool = False, report_as: str | Path | None = None):
    """extract -> onnx -> build -> parity -> bench -> report, into `out` (replaced as a whole at the end).
    `report_as`: where `out` will be once a caller's own temporary directory is renamed into place (the demo's);
    the report's paths name it.

    Returns the DeployReport. A failed parity gate still writes the whole directory, then raises ParityError.
    """
    from deploy_nas.dense import write_dense
    from deploy_nas.io import atomic_dir

    plan.check()
    if not plan.model_info:
        plan.model_info = model_info(model)
    out = Path(out)
    with atomic_dir(out, force=force) as tmp:
        progress("extract: dense model")
        (tmp / DENSE_DIR).mkdir()
        write_dense(model, tmp / DENSE_DIR)
        report = _run_stages(tmp, plan, progress, Path(report_as) if report_as is not None else out)
        progress("report")
        _write_reports(tmp, report)
    failed = [p for p in report.parity if not p.passed]
    if failed:
        raise ParityError(f"parity failed for {', '.join(f'{p.backend}/{p.precision}' for p in failed)}: "
                          f"{'; '.join(f for p in failed for f in p.failures)}; see {out / 'report.md'}",
                          failed[0])
    return report


def _run_stages(tmp: Path, plan: RunPlan, progress: Progress, out: Path):
    from deploy_nas.export.parity import check_parity
    from deploy_nas.export.report import DeployReport

    progress("export: ONNX")
    onnx_result = export_to(tmp, plan.opset, plan.dynamo, plan.simplify)
    engines, parities, fps, notes = [], [], [], [onnx_result.simplify_note]
    with build(tmp, "torch", threads=plan.threads) as reference:
        inputs = parity_batch(reference.model.spec, plan.data_dir)
        progress("bench: torch fp32")
        fps += bench(tmp, reference, plan.batches, plan.runs, plan.warmup)
        engines.append(_moved(reference.info(), tmp, out))
        for backend, precision in plan.targets:
            progress(f"build: {backend} {precision}")
            with build(tmp, backend, precision, plan.threads, plan.calib_dir, plan.max_batch or 32) as engine:
                progress(f"parity: {backend} {precision}")
                result = check_parity(reference, engine, inputs)
                update_json(tmp / PARITY_JSON, {f"{backend}/{precision}": parity_row(
                    result, measured_on(tmp, engine), plan.data_dir)})
                parities.append(result)
                progress(f"bench: {backend} {precision}")
                fps += bench(tmp, engine, plan.batches, plan.runs, plan.warmup)
                engines.append(_moved(engine.info(), tmp, out))
            if backend == "openvino" and precision == "fp32" and plan.cross_check_module:
                progress("cross-check: OpenVINO from the nn.Module")
                notes.append(_module_cross_check(reference, inputs, plan))
    return DeployReport(model=plan.model_info, onnx=_moved(onnx_result.to_dict(), tmp, out), engines=tuple(engines),
                        parity=tuple(parities), fps=tuple(fps), notes=tuple(n for n in notes if n))


def _module_cross_check(reference: Engine, inputs: np.ndarray, plan: RunPlan) -> str:
    from deploy_nas.export.backends.openvino_backend import OpenVinoBackend
    from deploy_nas.export.parity import check_parity

    try:
        with OpenVinoBackend().build_from_module(reference.model, BuildConfig(threads=plan.threads)) as engine:
            r = check_parity(reference, engine, inputs)
    except ExportError as err:
        return f"OpenVINO straight from the nn.Module failed ({err}); the ONNX path is the one deployed"
    return (f"OpenVINO IR converted straight from the nn.Module: max abs {r.max_abs:.3g} vs torch "
            f"({'pass' if r.passed else 'FAIL'}), a cross-check of the ONNX path")


def _moved(value: Any, tmp: Path, out: Path) -> Any:
    """`value` with paths inside the temporary directory rewritten to where they will be after the rename."""
    if isinstance(value, dict):
        return {k: _moved(v, tmp, out) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_moved(v, tmp, out) for v in value)
    return value.replace(str(tmp), str(out)) if isinstance(value, str) else value


def _write_reports(tmp: Path, report: Any) -> None:
    """report.json + report.md, then manifest.json: the sha256 of every file in the directory."""
    from deploy_nas.export.report import manifest, write_report

    write_report(tmp, report)
    write_json_atomic(tmp / MANIFEST_JSON, manifest(tmp, exclude=(MANIFEST_JSON,)))
