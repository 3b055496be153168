"""The distributed entry points launched the way users launch them: `torchrun --standalone --nproc_per_node 2`, two
CPU processes over gloo."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deploy_nas.supernets import default_supernet
from tests.cli.test_extract_info import EXE

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # what torchrun sets for its workers; the 1-process runs match it
SEARCH = ["--backend", "torch", "--threads", "1", "--latency-budget-ms", "1e9", "--generations", "2",
          "--population", "8", "--measure", "8"]


def torchrun(module: str, *args) -> subprocess.CompletedProcess:
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", module, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)


@pytest.mark.slow
def test_search_over_two_ranks_scores_the_same_populations_as_one_process(tmp_path, tiny_supernet_dir):
    search = [*SEARCH, "--supernet", tiny_supernet_dir]
    r = torchrun("deploy_nas.search", *search, "--out", tmp_path / "two")
    assert r.returncode == 0, r.stderr[-3000:]
    one = subprocess.run([EXE, "search", *map(str, search), "--out", str(tmp_path / "one")], capture_output=True,
                         text=True, timeout=600, env=ENV)
    assert one.returncode == 0, one.stderr[-3000:]
    assert r.stdout.count("best config:") == 1  # rank 0 alone reports
    # the latency budget never binds, so the search is decided by val top-1 alone: identical generations
    logs = [(tmp_path / d / "generations.jsonl").read_text() for d in ("two", "one")]
    assert logs[0] == logs[1] and len(logs[0].splitlines()) == 2
    two, single = (json.loads((tmp_path / d / "pareto.json").read_text()) for d in ("two", "one"))
    assert two["ranks"] == 2 and single["ranks"] == 1
    # the work was split: each rank scored about half of what one process scores alone
    (alone,), shards = single["scored_per_rank"], two["scored_per_rank"]
    assert sum(shards) == alone and min(shards) >= alone // 2 - 3 and max(shards) < alone
    for method in ("evolution", "random"):
        assert two[method]["evaluated"] == single[method]["evaluated"] > 8
        assert [p["val_top1"] for p in two[method]["points"]] == [p["val_top1"] for p in single[method]["points"]]
    assert json.loads((tmp_path / "two" / "best.json").read_text()) == two["evolution"]["winner"]["config"]


@pytest.mark.slow
def test_training_under_torchrun_writes_one_loadable_supernet(tmp_path):
    from deploy_nas.supernets import load_supernet_dir

    r = torchrun("deploy_nas.train", "--epochs", "1", "--max-steps", "2", "--batch-size", "16", "--out",
                 tmp_path / "sn")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert sum("test_top1" in row for row in rows) == 1  # rank 0 alone logs and evaluates
    supernet, space = load_supernet_dir(tmp_path / "sn", "autoformer")
    start = default_supernet(seed=0)[0].state_dict()  # what `train --seed 0` starts from
    assert space.name == "autoformer-demo"
    assert any(not torch.equal(v, start[k]) for k, v in supernet.state_dict().items())  # it trained


@pytest.mark.slow
def test_bad_input_under_torchrun_fails_every_rank_with_one_message_and_no_output(tmp_path):
    # training: a global batch the 2 ranks cannot split
    r = torchrun("deploy_nas.train", "--epochs", "1", "--batch-size", "15", "--out", tmp_path / "sn")
    assert r.returncode != 0 and r.stderr.count("does not split evenly over 2") == 1
    # search: an infeasible budget is found by rank 0's measurement and raised on both ranks
    r = torchrun("deploy_nas.search", *SEARCH[:4], "--latency-budget-ms", "1e-6", "--out", tmp_path / "s")
    assert r.returncode != 0 and r.stderr.count("error: no subnet can meet") == 1
    assert not (tmp_path / "sn").exists() and not (tmp_path / "s").exists()
