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
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploy_nas.errors import DeployNASError, ExportError, ParityError
from deploy_nas.export.backends import BuildConfig, Engine, backend_class, get_backend
from deploy_nas.io import write_json_atomic

DENSE_DIR, ONNX_FILE = "dense", "model.onnx"
PARITY_JSON, BENCH_JSON, MANIFEST_JSON = "parity.json", "bench.json", "manifest.json"
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
                      f"create it with `deploy-nas extract --out {out / DENSE_DIR}` or `deploy-nas run`")


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


# ------------------------------------------------------------------------------------------------------ stages


def export_to(out: str | Path, opset: int = 17, dynamo: bool = False, simplify: bool = True):
    """out/model.onnx (+ sidecar, which records the dense model's files it came from) from out's dense model."""
    from deploy_nas.dense import load_dense
    from deploy_nas.export.onnx import export_onnx

    d = dense_dir(out)
    source = dense_digests(d)
    result = export_onnx(load_dense(d), onnx_path(out), opset=opset, dynamo=dynamo, simplify=simplify,
                         exported_from=source)
    refresh_manifest(out)
    return result


def refresh_manifest(out: str | Path) -> None:
    """A deployment that `run` wrote keeps its manifest.json true: a later export, build, parity or bench in it
    records the sha256 of every file anew (nothing to do in a directory without one)."""
    from deploy_nas.io import written_here

    path = Path(out) / MANIFEST_JSON
    if path.is_file() and written_here(path):  # a user's file of that name is theirs
        from deploy_nas.export.report import manifest

        write_json_atomic(path, manifest(out, exclude=(MANIFEST_JSON,)))


def dense_digests(d: Path) -> dict[str, str]:
    """{file: sha256} of a dense model's spec and weights."""
    from deploy_nas.dense import SPEC_FILE, WEIGHTS_FILE
    from deploy_nas.io import sha256_file

    return {name: sha256_file(d / name) for name in (SPEC_FILE, WEIGHTS_FILE)}


def build_config(out: str | Path, precision: str, threads: int | None = None, calib_dir: str | Path | None = None,
                 max_batch: int = 32, device: str | None = None) -> BuildConfig:
    return BuildConfig(precision=precision, threads=threads, out_dir=Path(out), calib_dir=calib_dir,
                       max_batch=max_batch, opt_batch=min(8, max_batch), device=device)


def build(out: str | Path, backend: str, precision: str = "fp32", threads: int | None = None,
          calib_dir: str | Path | None = None, max_batch: int = 32) -> Engine:
    """Build (and save, for openvino/tensorrt) the engine of out/model.onnx; torch opens the dense model."""
    check_request(backend, precision)
    config = build_config(out, precision, threads, calib_dir, max_batch)
    if backend == "torch":
        return get_backend("torch").build(dense_dir(out), config)
    source = onnx_path(out)
    if not source.is_file():
        raise ExportError(f"{source} not found; run `deploy-nas export onnx {out}` first")
    check_onnx_record(source, out)
    engine = get_backend(backend).build(source, config)
    if backend != "onnxruntime":  # it saves nothing
        refresh_manifest(out)
    return engine


def check_onnx_record(source: Path, out: str | Path) -> str:
    """A deployment's model.onnx must be the graph its sidecar records (sha256), exported from the dense model the
    directory holds now: one copied in from another deployment, edited, or left from before the dense model was
    extracted again would be built, timed and compared against a model it does not lower. (A sidecar written before
    the dense files were recorded is checked for the graph alone.) Returns the graph's sha256."""
    from deploy_nas.export.onnx import sidecar_path
    from deploy_nas.io import sha256_file

    side, again = sidecar_path(source), f"export it again with `deploy-nas export onnx {out}`"
    try:
        record = json.loads(side.read_text())
        recorded, exported_from = record["sha256"], record.get("exported_from")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ExportError(f"{source} has no readable record of its export ({side.name}); {again}") from None
    digest = sha256_file(source)
    if recorded != digest:
        raise ExportError(f"{source} is not the graph {side.name} records (replaced or modified since its export); "
                          f"{again}")
    if exported_from is not None:
        d = dense_dir(out)
        if not isinstance(exported_from, dict) or exported_from != dense_digests(d):
            raise ExportError(f"{source} was exported from another dense model than {d} holds now (extracted again "
                              f"since?); {again}, then build its engines again")
    return digest


def check_engine_source(engine: Engine, out: str | Path, backend: str, precision: str) -> Engine:
    """A saved engine must have been built from the deployment's current model.onnx (which check_onnx_record
    ties to the dense model), and from a graph of the dense model there now (build.json records the dense files
    too, so this holds with model.onnx deleted): an IR left from an earlier export would be timed and compared as
    this model's. Engines built before these records were kept are checked for what they record."""
    meta = getattr(engine, "meta", {})
    source, rebuild = onnx_path(out), f"`deploy-nas export {backend} {out} --precision {precision}`"
    if meta.get("onnx_sha256") is not None and source.is_file():  # the graph's record ties it to the dense model
        if meta["onnx_sha256"] != check_onnx_record(source, out):
            raise ExportError(f"the {backend} {precision} engine in {out} was built from another model.onnx than the "
                              f"one there now (exported again since); build it again with {rebuild}")
        return engine
    exported_from = meta.get("exported_from")  # no graph left: the engine's own record of the dense model
    if exported_from is not None and exported_from != dense_digests(dense_dir(out)):
        raise ExportError(f"the {backend} {precision} engine in {out} was built from another dense model than "
                          f"{dense_dir(out)} holds now (extracted again since?); export it again with `deploy-nas "
                          f"export onnx {out}`, then {rebuild}")
    return engine


def open_engine(out: str | Path, backend: str, precision: str = "fp32", threads: int | None = None) -> Engine:
    """The engine a previous `build` saved (openvino, tensorrt), or a fresh one (torch, onnxruntime)."""
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


def parity(out: str | Path, engine: Engine, reference: Engine, data_dir: str | Path | None = None,
           write: bool = True):
    """Compare `engine` with the torch reference, record it in out/parity.json, and raise ParityError on failure."""
    from deploy_nas.export.parity import check_parity, gate

    spec = reference.model.spec
    result = check_parity(reference, engine, parity_batch(spec, data_dir))
    if write:
        update_json(Path(out) / PARITY_JSON, {f"{result.backend}/{result.precision}": result.to_dict()})
    return gate(result)


def bench(out: str | Path, engine: Engine, batches: Sequence[int] = (1, 8), runs: int = 50, warmup: int = 10,
          write: bool = True, profile: bool = True) -> list:
    """FPS rows for each batch size (1: latency mode, > 1: throughput mode), recorded in out/bench.json. The row of
    the first batch also carries `info.op_profile`: where the time goes, from the runtime's profiler (a separate
    run), for the engines whose runtime has one."""
    from deploy_nas.export.fps import measure_fps, mode_for_batch

    rows = []
    for b in batches:
        rows += measure_fps(engine, batch=b, mode=mode_for_batch(b), runs=runs, warmup=warmup)
    if profile and rows:
        x = np.random.default_rng(0).standard_normal((rows[0].batch, *engine.input_shape), dtype=np.float32)
        ops = engine.op_profile(x)
        if ops is not None:
            rows[0].info["op_profile"] = [o.to_dict() for o in ops]
    if write:
        update_bench(Path(out) / BENCH_JSON, [bench_row(r) for r in rows])
    return rows


def parity_of(out: str | Path, backend: str, precision: str = "fp32", data_dir: str | Path | None = None,
              threads: int | None = None):
    """`deploy-nas parity`: the saved engine of `out` against its dense torch model, recorded in out/parity.json;
    ParityError (carrying the result) after the record when a gate fails."""
    with build(out, "torch", threads=threads) as reference, open_engine(out, backend, precision, threads) as engine:
        return parity(out, engine, reference, data_dir)


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


def update_json(path: Path, entries: dict[str, Any]) -> Path:
    data = _read_json(path, {})
    data = data if isinstance(data, dict) else {}
    data.update(entries)
    write_json_atomic(path, data)
    refresh_manifest(path.parent)
    return path


def update_bench(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Replace rows with the same (backend, precision, batch, mode), keep the others."""
    def key(row: Any) -> tuple | None:  # None: not a row bench wrote (hand-edited or damaged), dropped
        k = tuple(row.get(n) for n in ("backend", "precision", "batch", "mode")) if isinstance(row, dict) else None
        return k if k is not None and all(isinstance(v, (str, int, type(None))) for v in k) else None

    new = {key(r) for r in rows}
    old = _read_json(path, [])
    kept = [r for r in (old if isinstance(old, list) else []) if key(r) is not None and key(r) not in new]
    write_json_atomic(path, kept + rows)
    refresh_manifest(path.parent)
    return path


# ------------------------------------------------------------------------------------------------------- run


def plan_targets(backends: Sequence[str], precisions: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """Every backend at every precision it builds (each backend must build at least one of them)."""
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
    max_batch: int = 32
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
            if backend == "torch":
                raise DeployNASError("torch is the reference every run measures; pick another --backend")
            check_request(backend, precision)
        if any(b < 1 for b in self.batches) or not self.batches:
            raise DeployNASError(f"batch sizes must be >= 1, got {list(self.batches)}")
        if max(self.batches) > self.max_batch:
            raise DeployNASError(f"batch {max(self.batches)} > --max-batch {self.max_batch}; raise --max-batch")
        if self.calib_dir is not None and any(p == "int8" for _, p in self.targets):
            from deploy_nas.data import load_image_folder

            load_image_folder(self.calib_dir, 8, limit=1)  # typed error now, not after the ONNX export
        return self


Progress = Callable[[str], None]


def run(model: Any, out: str | Path, plan: RunPlan, progress: Progress = lambda step: None,
        force: bool = False):
    """extract -> onnx -> build -> parity -> bench -> report, into `out` (replaced as a whole at the end).

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
        report = _run_stages(tmp, plan, progress, out)
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
            with build(tmp, backend, precision, plan.threads, plan.calib_dir, plan.max_batch) as engine:
                progress(f"parity: {backend} {precision}")
                result = check_parity(reference, engine, inputs)
                update_json(tmp / PARITY_JSON, {f"{backend}/{precision}": result.to_dict()})
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
