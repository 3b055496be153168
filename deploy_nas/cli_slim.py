"""`deploy-nas slim search|prune`: ViT-Slim's commands, contributed by its family (`ViTSlimFamily.commands`).

`search` trains the soft masks of a DeiT (`deploy_nas.train.slim`); `prune` turns budgets (given, or stored in the
checkpoint's `args`) into the exact dense model with ragged heads, constant-bias sub-blocks and token gathers.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from deploy_nas import cli_options as opt
from deploy_nas.errors import command
from deploy_nas.supernets.vitslim import ViTSlimFamily
from deploy_nas.train import STATE_FILE, TrainConfig
from deploy_nas.train.slim import MaskSearch


@click.group("slim")
def slim() -> None:
    """ViT-Slim: search soft masks on a DeiT, then prune it to budgets (exact dense heads, MLP channels, tokens)."""


@slim.command("search")
@click.option("--base", type=click.Path(path_type=Path), default=None,
              help="The DeiT to search in: an official DeiT file ({'model': ...}), a timm state dict or a ViT-Slim "
                   "checkpoint. Default: a random initialisation of --space.")
@click.option("--space", default=None, help="Without --base: the registered space or file of the DeiT to build "
              "(default: vitslim-tiny, a 4-block DeiT for 32px images).")
@opt.train_data
@click.option("--head-search", is_flag=True,
              help="Without masks in --base: one mask per head (official --head_search).")
@click.option("--uniform-search", is_flag=True,
              help="Without masks in --base: one channel mask shared by all heads (official --uniform_search).")
@click.option("--import-option", "import_options", multiple=True, metavar="KEY=VALUE",
              help="A ViT-Slim import option of --base (num_heads=N for a DeiT whose heads are not 64 wide).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Directory for the searched model (supernet.json + weights, and ckpt.pth in the official layout).")
@click.option("--resume", is_flag=True, help="Continue from OUT/train_state.pt, with the space and settings OUT "
              "records (another value given is refused; more --epochs searches longer).")
@opt.dataclass_options(TrainConfig, exclude=MaskSearch.ignores, defaults=ViTSlimFamily.train_defaults)
@opt.writes(force="resume", resumes=(STATE_FILE,))
def search(base: Path | None, space: str | None, data_dir: Path | None, head_search: bool, uniform_search: bool,
           import_options: tuple[str, ...], out: Path, resume: bool, **config: Any) -> None:
    """Train the weights and the soft masks of a DeiT with ViT-Slim's L1 sparsity terms (data-parallel under
    torchrun). Then `deploy-nas slim prune --checkpoint OUT --budget-attn ...`.

    The learning rate is constant, as the official search.py runs it: --min-lr follows --lr unless given."""
    from deploy_nas.distributed import main_process, process_group_from_env
    from deploy_nas.train import RecordedRun, train_config, train_supernet
    from deploy_nas.train.slim import search_target
    from deploy_nas.workflows import train_data

    if head_search and uniform_search:  # one shared destination let the last one given win, silently
        raise click.UsageError("--head-search and --uniform-search are two mask layouts; give one of them")
    mask = "head" if head_search else "uniform" if uniform_search else None
    run = RecordedRun.of(out, resume)  # the run a resume continues: its space and settings are the defaults
    fam, supernet, chosen = search_target(base, space, mask, run, import_options)
    given = {k: v for k, v in config.items() if not opt.is_default(k)}
    log = (lambda row: click.echo(json.dumps(row))) if main_process() else (lambda row: None)
    with process_group_from_env(cuda=config["device"].startswith("cuda")):
        result = train_supernet(fam, chosen, out, train_config(fam, given, run), resume, train_data(chosen, data_dir),
                                log=log, supernet=supernet)
    if main_process():
        last = result["history"][-1] if result["history"] else {}
        small = ", ".join(f"{k[6:]} {v:.0%}" for k, v in last.items() if k.startswith("small_"))
        click.echo(f"searched masks -> {out} (masks below 0.05: {small or 'n/a'}); prune with "
                   f"`{command('slim', 'prune', '--checkpoint', out)} --budget-attn B --budget-mlp B --budget-patch B "
                   "--out DIR`")


@slim.command("prune")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="A ViT-Slim checkpoint (official search/retrain ckpt, `slim search` output directory or its "
                   "ckpt.pth, or a timm DeiT state dict with masks).")
@click.option("--budget-attn", type=float, default=None, help="Kept fraction of the attention channels, in (0, 1].")
@click.option("--budget-mlp", type=float, default=None, help="Kept fraction of the MLP hidden units, in (0, 1].")
@click.option("--budget-patch", type=float, default=None, help="Kept fraction of the tokens, in (0, 1].")
@click.option("--soft", is_flag=True, help="Fold the soft masks as they are (nothing pruned; no budgets).")
@click.option("--head-layout", type=click.Choice(["padded", "grouped"]), default=None,
              help="Heads of different widths: zero-padded to the widest (default) or one attention per width.")
@click.option("--pad-to", type=click.IntRange(min=1, max=256), default=None,
              help="Round padded head widths up to a multiple of this (8 for TensorRT's fused attention).")
@click.option("--import-option", "import_options", multiple=True, metavar="KEY=VALUE",
              help="A ViT-Slim import option (num_heads=N for a DeiT without masks).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output directory for the dense model.")
@opt.force
@opt.writes()
def prune(checkpoint: Path, budget_attn: float | None, budget_mlp: float | None, budget_patch: float | None,
          soft: bool, head_layout: str | None, pad_to: int | None, import_options: tuple[str, ...], out: Path,
          force: bool) -> None:
    """Budgets -> masks (one global threshold per mask family, as the official code) -> the exact dense model.
    Budgets not given are read from the checkpoint's `args` (official search/retrain checkpoints store them)."""
    from deploy_nas.dense import save_dense
    from deploy_nas.flops import count_flops
    from deploy_nas.materialize import materialize
    from deploy_nas.supernets.vitslim import FAMILY, prune_config, unpruned, with_layout
    from deploy_nas.workflows import SupernetSource

    directory = checkpoint.is_dir()
    if directory and import_options:
        raise click.UsageError(f"--import-option reads an official checkpoint file; {checkpoint} is a directory "
                               "(its supernet.json already holds the arch)")
    if soft and (head_layout is not None or pad_to is not None):
        raise click.UsageError("--soft prunes nothing, so no head is ragged: drop --head-layout/--pad-to")
    if directory:
        _check_slim_dir(checkpoint)
    # a file: the layout flags are its import options (one given twice with different values is refused)
    layout = {"head_layout": head_layout, "pad_to": pad_to}
    supernet, _ = SupernetSource(FAMILY, checkpoint=None if directory else checkpoint,
                                 supernet_dir=checkpoint if directory else None, import_options=import_options,
                                 aliases={} if directory else layout).load()
    if directory:
        supernet = with_layout(supernet, head_layout, pad_to)
    cfg = prune_config(supernet, {"budget_attn": budget_attn, "budget_mlp": budget_mlp,
                                  "budget_patch": budget_patch}, soft)
    warning = unpruned(supernet, cfg)  # budgets below 1 that removed nothing: untrained masks (all equal, ties kept)
    model = materialize(supernet, cfg)
    save_dense(model, out, force=force)
    flops = count_flops(model)
    table = model.architecture_table(flops.by_module)
    base = supernet.param_count(type(cfg)())
    table.caption = (f"params {flops.params / 1e6:.3f}M (base {base / 1e6:.3f}M)   FLOPs {flops.gmacs:.3f} GMAC "
                     f"(batch 1)   budgets attn {cfg.budget_attn:g} mlp {cfg.budget_mlp:g} tokens "
                     f"{cfg.budget_patch:g}{'   soft masks folded' if cfg.soft else ''}")
    from deploy_nas.console import show

    show(table)
    if warning:
        click.echo(warning, err=True)
    click.echo(f"pruned -> {out} (deploy it with `{command('run', '--dense', out)} --out DIR`)")


def _check_slim_dir(directory: Path) -> None:
    """A directory `slim prune` reads holds a ViT-Slim model (a `slim search` output); another family's supernet is
    named with the command that reads it (`slim` has no --family to pass)."""
    from deploy_nas.errors import CheckpointError, brief
    from deploy_nas.supernets import SUPERNET_FILE, read_supernet_meta
    from deploy_nas.supernets.vitslim import FAMILY

    if not (directory / SUPERNET_FILE).is_file():
        raise CheckpointError(f"{directory} is not a ViT-Slim model directory (no {SUPERNET_FILE}); pass a "
                              "`deploy-nas slim search` output or a checkpoint file")
    family = read_supernet_meta(directory)["family"]
    if family != FAMILY:
        raise CheckpointError(f"{directory} holds a {brief(family)} supernet, not a ViT-Slim one (`slim prune` reads "
                              f"`slim search` outputs); extract its subnets with `deploy-nas extract --supernet "
                              f"{directory} --config C`")
