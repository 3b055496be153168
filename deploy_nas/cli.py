"""`deploy-nas`: one command per pipeline stage. Commands only wire options to library calls (imported lazily).

Exit codes: 0 success, 1 a failed parity gate (after its report is written), 2 bad input.
"""
from __future__ import annotations

import functools
import random
import sys
from pathlib import Path
from typing import Any, Callable

import click

from deploy_nas.errors import DeployNASError


class _Group(click.Group):
    """Turns every DeployNASError into a one-line message and its exit code (2 for bad input, 1 for parity)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DeployNASError as err:
            click.echo(f"error: {err}", err=True)
            ctx.exit(err.exit_code)


def _console():
    from rich.console import Console

    return Console(stderr=False, highlight=False)


def supernet_options(fn: Callable) -> Callable:
    """--family/--checkpoint/--supernet and the import flags the official weights cannot tell."""
    options = [
        click.option("--family", default="autoformer", show_default=True, help="Supernet family."),
        click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
                     help="Official checkpoint (.pth/.safetensors). Default: the embedded default supernet."),
        click.option("--supernet", "supernet_dir", type=click.Path(path_type=Path), default=None,
                     help="A supernet directory written by `deploy-nas train`."),
        click.option("--space", default=None, help="Search space (registered name or YAML/JSON file) to validate "
                     "the config against. Default: the supernet's own, or the official space of its size."),
        click.option("--change-qkv/--no-change-qkv", default=True, show_default=True,
                     help="AutoFormer qkv slicing (official runs: on)."),
        click.option("--gp/--no-gp", default=True, show_default=True,
                     help="Mean-pool patch tokens instead of the cls token (official runs: on)."),
        click.option("--pre-norm/--no-pre-norm", default=True, show_default=True,
                     help="Pre-norm blocks (official runs: on)."),
    ]
    return functools.reduce(lambda f, opt: opt(f), reversed(options), fn)


def extract_subnet(family: str, checkpoint: Path | None, supernet_dir: Path | None, space: str | None,
                   config: str, change_qkv: bool, gp: bool, pre_norm: bool):
    """Load the supernet, resolve and validate the config, and materialize it: (dense model, config, space)."""
    from deploy_nas.errors import InvalidSubnetConfig
    from deploy_nas.materialize import materialize
    from deploy_nas.spaces import load_config, load_space
    from deploy_nas.supernets import load_supernet

    if checkpoint is not None and supernet_dir is not None:
        raise InvalidSubnetConfig("give --checkpoint or --supernet, not both")
    source = checkpoint if checkpoint is not None else supernet_dir
    supernet, own_space = load_supernet(source, family, change_qkv=change_qkv, gp=gp, pre_norm=pre_norm)
    chosen = load_space(space) if space else own_space
    if config in ("min", "max"):
        if chosen is None:
            raise InvalidSubnetConfig(f"--config {config} needs a search space; pass --space")
        cfg = chosen.sample(random.Random(0), config)
    else:
        cfg = load_config(config, family)
    if chosen is not None:
        chosen.validate(cfg)
    supernet.check_config(cfg)
    return materialize(supernet, cfg), cfg, chosen


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="deploy-nas")
def main() -> None:
    """Deploy ViT-NAS subnets: supernet + config -> dense PyTorch -> ONNX -> OpenVINO / TensorRT, with parity and FPS."""


@main.command()
@supernet_options
@click.option("--config", required=True, help="Preset name (autoformer-t|s|b), min or max of the space, or a "
              "JSON/YAML config file (canonical, official dict, or official RETRAIN YAML).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output directory for the dense model.")
@click.option("--force", is_flag=True, help="Replace a non-empty output directory.")
def extract(family: str, checkpoint: Path | None, supernet_dir: Path | None, space: str | None, config: str,
            out: Path, force: bool, change_qkv: bool, gp: bool, pre_norm: bool) -> None:
    """Materialize a subnet as a standalone dense model (spec.json + weights.safetensors)."""
    from deploy_nas.dense import save_dense
    from deploy_nas.io import check_output_dir

    check_output_dir(out, force)  # fail before the (possibly slow) checkpoint load
    model, cfg, _ = extract_subnet(family, checkpoint, supernet_dir, space, config, change_qkv, gp, pre_norm)
    save_dense(model, out, force=force)
    n = sum(p.numel() for p in model.parameters())
    click.echo(f"extracted {family} subnet {cfg.id} (depth {cfg.depth}, embed {cfg.embed_dim}, "
               f"{n / 1e6:.3f}M params) -> {out}")


@main.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
def info(model_dir: Path) -> None:
    """Architecture table, params and FLOPs of a dense model directory."""
    from deploy_nas.dense import load_dense
    from deploy_nas.flops import count_flops

    model = load_dense(model_dir)
    _console().print(architecture_table(model, count_flops(model)))


def architecture_table(model: Any, flops: Any):
    from rich.table import Table

    spec = model.spec
    src = spec.source
    title = (f"{src.get('family', spec.arch)} {src.get('config_id', '')}  {spec.img_size}px/{spec.patch_size}  "
             f"embed {spec.embed_dim}  depth {spec.depth}  pool {spec.pool}")
    table = Table(title=title, caption=f"params {flops.params / 1e6:.3f}M   FLOPs {flops.gmacs:.3f} GMAC (batch 1)")
    for col in ("block", "heads", "head dim", "Q", "scale", "MLP", "rel-pos", "params", "MMAC"):
        table.add_column(col, justify="right")
    for i, (b, blk) in enumerate(zip(spec.blocks, model.blocks)):
        n = sum(p.numel() for p in blk.parameters())
        table.add_row(str(i), str(b.num_heads), str(b.head_dim), str(b.num_heads * b.head_dim),
                      f"{b.attn_scale:.4g}", str(b.mlp_hidden), "yes" if b.relative_position else "no",
                      f"{n:,}", f"{flops.by_module.get(f'blocks.{i}', 0) / 1e6:.1f}")
    return table


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("out/demo"), show_default=True)
def demo(out: Path) -> None:
    """The main job on the embedded default supernet: extract its largest subnet and show it."""
    from deploy_nas.dense import save_dense
    from deploy_nas.flops import count_flops

    model, cfg, _ = extract_subnet("autoformer", None, None, None, "max", True, True, True)
    save_dense(model, out / "dense", force=True)
    click.echo(f"extracted the embedded default supernet's max subnet {cfg.id} -> {out / 'dense'}")
    _console().print(architecture_table(model, count_flops(model)))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
