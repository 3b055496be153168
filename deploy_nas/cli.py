"""`deploy-nas`: one command per pipeline stage. Commands turn options into library calls (imported lazily, so
`deploy-nas --help` needs no backend) and results into tables; the click plumbing is in `cli_options`.

Exit codes: 0 success, 1 a failed parity gate (after its report is written), 2 bad input (one line `error: ...`).
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import click

from deploy_nas import cli_options as opt
from deploy_nas.train import STATE_FILE, TrainConfig  # (the core imports torch anyway: `import deploy_nas` does)
from deploy_nas.workflows import SearchRequest


def _show(table: Any) -> None:
    from deploy_nas.console import show

    show(table)


@click.group(cls=opt.WithFamilyCommands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="deploy-nas")
def main() -> None:
    """Deploy ViT-NAS subnets: supernet + config -> dense PyTorch -> ONNX -> OpenVINO / TensorRT, with parity
    and FPS."""


@main.command()
@opt.supernet
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output directory for the dense model.")
@opt.bn
@opt.calib
@opt.force
@opt.writes()
def extract(out: Path, force: bool, config: str | None, bn: str | None, calib_dir: Path | None, **source: Any) -> None:
    """Materialize a subnet as a standalone dense model (spec.json + weights.safetensors)."""
    from deploy_nas.dense import save_dense
    from deploy_nas.workflows import extract_subnet

    if config is None:
        raise click.UsageError("missing option --config")
    result = extract_subnet(opt.supernet_source(source), config, bn, calib_dir)
    save_dense(result.model, out, force=force)
    n = sum(p.numel() for p in result.model.parameters())
    click.echo(f"extracted {result.config.family} subnet {result.config.id} ({result.model.spec.arch}, "
               f"{n / 1e6:.3f}M params) -> {out}")


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
def info(model_dir: Path) -> None:
    """The architecture table (each arch supplies its own), params and FLOPs of a dense model directory (or of
    a deployment directory's OUT/dense)."""
    from deploy_nas.dense import SPEC_FILE, load_dense
    from deploy_nas.flops import count_flops

    if not (model_dir / SPEC_FILE).is_file() and (model_dir / "dense" / SPEC_FILE).is_file():
        model_dir = model_dir / "dense"  # as export, parity and bench take it
    model = load_dense(model_dir)
    flops = count_flops(model)
    table = model.architecture_table(flops.by_module)
    table.caption = f"params {flops.params / 1e6:.3f}M   FLOPs {flops.gmacs:.3f} GMAC (batch 1)"
    _show(table)


@main.group("export")
def export_group() -> None:
    """Lower the dense model of a deployment directory (OUT/dense) to ONNX, OpenVINO IR or a TensorRT engine."""


@export_group.command("onnx")
@opt.out_argument
@click.option("--opset", type=click.IntRange(min=1), default=17, show_default=True)
@click.option("--dynamo", is_flag=True, help="Use the torch.export-based exporter (opset >= 18).")
@click.option("--no-simplify", is_flag=True, help="Keep the exported graph as is (no onnxsim).")
@opt.writes(new=False, replaces=("model.onnx", "model.onnx.json"))
def export_onnx_cmd(out: Path, opset: int, dynamo: bool, no_simplify: bool) -> None:
    """OUT/model.onnx (+ model.onnx.json), proven against torch with onnxruntime."""
    from deploy_nas.export.pipeline import export_to

    _check_opset(opset, dynamo)

    r = export_to(out, opset=opset, dynamo=dynamo, simplify=not no_simplify)
    click.echo(f"{r.path}: {r.exporter} exporter, opset {r.opset}, {r.nodes_after} nodes, max abs vs torch "
               f"{r.max_abs_after:.3g}; {r.simplify_note}")


def _build(out: Path, backend: str, precision: str, threads: int | None = None, calib_dir: Path | None = None,
           max_batch: int = 32) -> None:
    from deploy_nas.export.pipeline import build

    with build(out, backend, precision, threads, calib_dir, max_batch) as engine:
        hints = ", ".join(f"{k} {v}" for k, v in engine.info().items() if k.endswith("hint"))
        click.echo(f"built {backend} {precision} -> {out / backend / precision} ({hints})")


@export_group.command("openvino")
@opt.out_argument
@click.option("--precision", default="fp32", show_default=True, help="fp32 | fp16 | int8")
@opt.calib
@opt.threads
@opt.writes(new=False)
def export_openvino_cmd(out: Path, precision: str, calib_dir: Path | None, threads: int | None) -> None:
    """OUT/openvino/<precision>/model.xml from OUT/model.onnx."""
    if calib_dir is not None and precision != "int8":
        from deploy_nas.errors import DeployNASError

        raise DeployNASError(f"--calib-data calibrates int8 builds only; {precision} builds do not read it: "
                             "leave it out, or pass --precision int8")
    _build(out, "openvino", precision, threads, calib_dir)


@export_group.command("tensorrt")
@opt.out_argument
@click.option("--precision", default="fp32", show_default=True, help="fp32 | fp16")
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True)
@opt.writes(new=False)
def export_tensorrt_cmd(out: Path, precision: str, max_batch: int) -> None:
    """OUT/tensorrt/<precision>/model.engine from OUT/model.onnx (needs a CUDA GPU and tensorrt)."""
    _build(out, "tensorrt", precision, max_batch=max_batch)


@main.command("parity")
@opt.out_argument
@click.option("--backend", required=True, help="onnxruntime | openvino | tensorrt")
@click.option("--precision", default="fp32", show_default=True)
@opt.data
@opt.threads
@opt.writes(new=False, replaces=("parity.json",))
def parity_cmd(out: Path, backend: str, precision: str, data_dir: Path | None, threads: int | None) -> None:
    """Compare a built engine with the dense torch model; updates OUT/parity.json, exit 1 if a gate fails."""
    from deploy_nas.errors import ParityError
    from deploy_nas.export.pipeline import parity_of
    from deploy_nas.export.report import parity_table

    try:
        result = parity_of(out, backend, precision, data_dir, threads)
    except ParityError as err:
        _show(parity_table([err.result.to_dict()]))
        raise
    _show(parity_table([result.to_dict()]))


@main.command("bench")
@opt.out_argument
@click.option("--backend", required=True, help="torch | onnxruntime | openvino | tensorrt")
@click.option("--precision", default="fp32", show_default=True)
@opt.batches
@opt.runs
@click.option("--warmup", type=click.IntRange(min=0, max=100_000), default=10, show_default=True)
@opt.threads
@opt.writes(new=False, replaces=("bench.json",))
def bench_cmd(out: Path, backend: str, precision: str, batches: tuple[int, ...], runs: int, warmup: int,
              threads: int | None) -> None:
    """Latency (p50/p90/p99) and throughput of an engine; updates OUT/bench.json."""
    from deploy_nas.export.pipeline import bench_of
    from deploy_nas.export.report import fps_table, profile_tables

    rows = [r.to_dict(raw=False) for r in bench_of(out, backend, precision, batches, runs, warmup, threads)]
    for table in (fps_table(rows), *profile_tables(rows)):
        _show(table)


def show_report(out: Path) -> None:
    from deploy_nas.export.report import print_summary

    print_summary(out)


@main.command("run")
@opt.supernet
@click.option("--dense", "dense_dir", type=click.Path(path_type=Path), default=None,
              help="Deploy an already materialized dense model directory instead (no supernet needed).")
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--backend", "backends", default="onnxruntime,openvino", show_default=True, callback=opt.csv(),
              help="Comma-separated: onnxruntime, openvino, tensorrt.")
@click.option("--precision", "precisions", default="fp32", show_default=True, callback=opt.csv(),
              help="Comma-separated: fp32, fp16, int8 (each backend builds those it supports).")
@opt.batches
@opt.runs
@opt.threads
@opt.calib
@opt.bn
@opt.data
@click.option("--opset", type=click.IntRange(min=1), default=17, show_default=True)
@click.option("--dynamo", is_flag=True)
@opt.force
@opt.writes()
def run_cmd(out: Path, force: bool, dense_dir: Path | None, config: str | None, backends: tuple[str, ...],
            precisions: tuple[str, ...], bn: str | None, **params: Any) -> None:
    """extract (or --dense) -> ONNX -> build -> parity -> bench, one report.md + report.json + manifest.json."""
    from deploy_nas.console import Steps
    from deploy_nas.export.pipeline import RunPlan, plan_targets, run
    from deploy_nas.workflows import model_to_deploy

    _check_opset(params["opset"], params["dynamo"])
    source = opt.supernet_source(params)
    plan = RunPlan(targets=plan_targets(backends, precisions), **params).check()
    int8 = any(precision == "int8" for _, precision in plan.targets)
    model = model_to_deploy(source, config, dense_dir, bn, params["calib_dir"], int8)
    earlier = _stamp(out / "report.json")
    try:
        with Steps(plan.steps) as progress:
            run(model, out, plan, progress, force=force)
    finally:
        report = _stamp(out / "report.json")
        if report is not None and report != earlier:  # this run's report (never one a --force run did not replace)
            show_report(out)  # also after a failed parity gate: the directory is complete, show why


def _check_opset(opset: int, dynamo: bool) -> None:
    """--dynamo builds at opset 18 or later: the default 17 is raised to it, a smaller --opset given is refused."""
    from deploy_nas.export.onnx import DYNAMO_MIN_OPSET

    if dynamo and opset < DYNAMO_MIN_OPSET and not opt.is_default("opset"):
        raise click.BadParameter(f"{opset}: the dynamo exporter builds at opset {DYNAMO_MIN_OPSET} or later; give "
                                 f"--opset {DYNAMO_MIN_OPSET} or more, or drop --dynamo", param_hint="'--opset'")


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime in ns) of a file, None when there is none: whether a command wrote it anew."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


@main.command()
@opt.family
@click.option("--space", default=None, help="Registered space or file (default: the family's default space).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Supernet directory to write.")
@opt.train_data
@click.option("--resume", is_flag=True, help="Continue from OUT/train_state.pt, with the space and settings OUT "
              "records (another value given is refused; more --epochs trains longer).")
@click.option("--grad-projection-from", "grad_projection_from", type=click.IntRange(min=0), default=None,
              help="NASViT's gradient projection from this epoch on (--grad-projection --projection-from-epoch N).")
@opt.dataclass_options(TrainConfig)
@opt.writes(force="resume", resumes=(STATE_FILE,))
def train(family: str | None, space: str | None, data_dir: Path | None, out: Path, resume: bool,
          grad_projection_from: int | None, **config: Any) -> None:
    """Supernet training with the family's rule on the embedded task (cluttered digits) or your image folders
    (--data); under `torchrun --nproc_per_node N` (or `python -m deploy_nas.train`) data-parallel.

    The defaults shown are AutoFormer's recipe. A family's own recipe replaces them for the options not given:
    NASViT lr 3e-4 decaying to 1e-6, warm-up 1 epoch, no weight decay, clip 1.0, gradient projection, shift 1;
    PSViT no distillation and no random subnets (SPOS); ViT-Slim trains with `deploy-nas slim search`."""
    import json

    from deploy_nas.distributed import main_process, process_group_from_env
    from deploy_nas.train import RecordedRun, resume_target, train_config, train_supernet
    from deploy_nas.workflows import train_data

    run = RecordedRun.of(out, resume)  # the run a resume continues: its space and settings are the defaults
    fam, chosen = resume_target(run, family, space)
    given = {k: v for k, v in config.items() if not opt.is_default(k)}  # the run's or family's recipe: the rest
    if grad_projection_from is not None:  # --grad-projection --projection-from-epoch N: refused next to others
        if not given.get("grad_projection", True) or given.get("projection_from_epoch", grad_projection_from) != \
                grad_projection_from:
            raise click.UsageError(f"--grad-projection-from {grad_projection_from} is --grad-projection "
                                     f"--projection-from-epoch {grad_projection_from}; it contradicts "
                                     "--no-grad-projection or another --projection-from-epoch given with it")
        given.update(grad_projection=True, projection_from_epoch=grad_projection_from)
    log = (lambda row: click.echo(json.dumps(row))) if main_process() else (lambda row: None)
    with process_group_from_env(cuda=config["device"].startswith("cuda")):
        train_supernet(fam, chosen, out, train_config(fam, given, run), resume, train_data(chosen, data_dir),
                       log=log)


@main.command("search")
@opt.family
@click.option("--supernet", "supernet_dir", type=click.Path(path_type=Path), default=None,
              help="A supernet directory (`deploy-nas train`). Default: the embedded trained supernet.")
@click.option("--space", default=None, help="Search this space (registered name or file) instead of the "
              "supernet's own.")
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--resume", is_flag=True, help="Continue an interrupted search in OUT from its log.")
@opt.dataclass_options(SearchRequest, exclude=("bn", "calib_dir"))
@opt.bn
@opt.calib
@opt.writes(force="resume", in_place=True)  # what a resume needs, Search checks (its log files)
def search_cmd(family: str | None, supernet_dir: Path | None, space: str | None, out: Path, resume: bool,
               **request: Any) -> None:
    """Evolution (and a random baseline) for the most accurate subnet under a measured-latency budget.

    Under `torchrun --nproc_per_node N -m deploy_nas.search ...` the populations are scored across the N ranks."""
    from deploy_nas.distributed import main_process, process_group_from_env
    from deploy_nas.search import search_table
    from deploy_nas.workflows import SupernetSource, run_search

    supernet, own = SupernetSource(family, supernet_dir=supernet_dir, space=space).load()
    with process_group_from_env():
        try:
            result = run_search(supernet, own, out, SearchRequest(**request), resume, log=click.echo)
        except KeyboardInterrupt as err:
            from deploy_nas.search import LOG_FILE, MEASURED_FILE

            how, code = opt.interruption(err)
            if main_process():
                click.echo(f"error: {how}: what the search did is in {out}; continue with --resume" if any(
                           (out / name).is_file() for name in (LOG_FILE, MEASURED_FILE)) else
                           f"error: {how} before the search wrote anything; nothing to resume, run it again", err=True)
            sys.exit(code)
        if not main_process():
            return
    _show(search_table(result))
    source = [(flag, value) for flag, value in (("--supernet", supernet_dir), ("--space", space)) if value is not None]
    bn = result.get("settings", {}).get("bn") or {}
    calib = {"--calib-data": request.get("calib_dir"), "DIR/train": (request.get("data_dir") or Path()) / "train"}
    if bn.get("source") in calib:  # its BatchNorm recalibrated on the images the search scored it with
        source.append(("--calib-data", calib[bn["source"]]))
    command = shlex.join(["deploy-nas", "run", *(str(x) for pair in source for x in pair),
                          "--config", str(out / "best.json"), "--out", "DEPLOY_DIR"])
    click.echo(f"best config: {out / 'best.json'} (deploy it with `{command}`)")


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/demo"), show_default=True)
@click.option("--generations", type=click.IntRange(min=1, max=10_000), default=None,
              help="evolution generations (default: the demo's, see workflows.DEMO_SEARCH)")
@click.option("--force", is_flag=True, help="Replace a non-empty OUT that is not an earlier demo's output (the "
              "demo replaces its own without being asked).")
@opt.writes(force=None)
def demo(out: Path, generations: int | None, force: bool) -> None:
    """The main job on the embedded trained supernet: search under a latency budget that binds on this machine
    (OpenVINO fp32), evolution and random side by side, then deploy the winner to onnxruntime and OpenVINO."""
    from deploy_nas import workflows
    from deploy_nas.console import Steps
    from deploy_nas.export.pipeline import RunPlan
    from deploy_nas.search import search_table

    with Steps(RunPlan(targets=workflows.DEMO_TARGETS).steps) as progress:
        result = workflows.demo(out, generations, log=click.echo, progress=progress, force=force)
    _show(search_table(result["search"]))
    show_report(result["deploy_dir"])
    click.echo(f"demo report: {out / 'report.json'}; deployment: {result['deploy_dir']}; search: {out / 'search'}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
