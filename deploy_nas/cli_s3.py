"""`deploy-nas evolve-space`: S3's search-space evolution, contributed by its family (`S3Family.commands`).

Options come from `EvolveSpaceRequest` (deploy_nas/search/space_evolution.py), so a setting and its option cannot
drift apart.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from deploy_nas import cli_options as opt
from deploy_nas.errors import command
from deploy_nas.search.space_evolution import EvolveSpaceRequest


@click.command("evolve-space")
@click.option("--supernet", "supernet_dir", required=True, type=click.Path(path_type=Path),
              help="An S3 supernet directory (`deploy-nas train --family s3`).")
@click.option("--space", default=None, help="The space to start from (registered name or JSON/YAML file). "
              "Default: the supernet's own.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Directory for evolution.json, final.json, et_error.png and the fine-tuned supernet/.")
@opt.dataclass_options(EvolveSpaceRequest)
@opt.force
@opt.writes()
def evolve_space(supernet_dir: Path, space: str | None, out: Path, force: bool, **request: Any) -> None:
    """S3: score a space by its E-T error (the mean of the average and the top-tier error of its subnets under
    --budget-gmac, inherited weights), then per step fit E-T error against each dimension's choices, move them
    downhill and fine-tune the supernet on the new space."""
    from deploy_nas.console import Table, show
    from deploy_nas.family import FAMILIES
    from deploy_nas.search.space_evolution import evolve_space as run
    from deploy_nas.supernets import read_supernet_meta
    from deploy_nas.workflows import SupernetSource

    supernet, start = SupernetSource("s3", supernet_dir=supernet_dir, space=space).load()
    meta = read_supernet_meta(supernet_dir)  # the space it was trained on bounds the choices (without --grow)
    trained = FAMILIES.get("s3").space_from_dict(meta["space"]) if meta.get("space") else None
    record = run(supernet, start, out, EvolveSpaceRequest(**request), log=click.echo, force=force, trained=trained)
    table = Table("E-T error per step (top-1 error, inherited weights)", ("step", "E-T", "E", "T", "subnets",
                                                                          "moved"))
    for row in record["steps"]:
        moved = sum(1 for d in row.get("dimensions", ()) if d["action"].startswith(("up", "down")))
        table.add_row(row["step"], f"{row['et_error']:.4f}", f"{row['e_error']:.4f}", f"{row['t_error']:.4f}",
                      row["scored"], moved if "dimensions" in row else "")
    show(table)
    where = out / "supernet" if request["grow"] else supernet_dir
    search = command("search", "--supernet", where, "--space", out / "final.json")
    click.echo(f"final space: {out / 'final.json'}; search it with `{search} --latency-budget-ms MS --out DIR`")
