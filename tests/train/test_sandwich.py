"""Sandwich training: the schedule, gradient projection, resume, and data-parallel equivalence over 2 processes."""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from deploy_nas.data import Split, digits_splits
from deploy_nas.supernets import default_supernet
from deploy_nas.train import TrainConfig, World, lr_at, project
from deploy_nas.train.sandwich import SandwichTrainer
from tests.conftest import assert_data_parallel_match

STEPS, GLOBAL_BATCH = 3, 16


def small_train_split(n: int = 64) -> Split:
    """The first `n` plain digits at the default supernet's input size."""
    train = digits_splits(default_supernet(seed=0)[1].img_size, 3)["train"]
    return Split(train.images[:n], train.labels[:n])


def test_lr_schedule_warms_up_then_decays_to_min():
    lrs = [lr_at(s, 100, 10, 1e-3, 1e-5) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] == pytest.approx(1e-5, abs=1e-6)


def test_projection_matches_the_formula():
    g_sub, g_s = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    a = min(max(-float(g_sub @ g_s) / float(g_sub @ g_sub), 0), 2)  # conflict: a = 1
    torch.testing.assert_close(project(g_sub, g_s), (1 + a) * g_sub + g_s)
    agree = torch.tensor([1.0, 1.0])  # no conflict: a = 0, a plain sum
    torch.testing.assert_close(project(g_sub, agree), g_sub + agree)


def test_every_step_trains_max_min_and_random_subnets():
    supernet, space = default_supernet()
    trainer = SandwichTrainer(supernet, space, TrainConfig(num_random=2))
    configs = trainer.configs_for_step(5)
    assert configs[0] == space.sample(None, "max") and configs[1] == space.sample(None, "min") and len(configs) == 4
    assert configs == trainer.configs_for_step(5) and configs != trainer.configs_for_step(6)


def test_training_lowers_the_loss_and_resumes(tmp_path):
    supernet, space = default_supernet()
    config = TrainConfig(epochs=3, batch_size=32, lr=2e-3, warmup_epochs=0.5, grad_projection=True, ema_decay=0.9)
    trainer = SandwichTrainer(supernet, space, config)
    data = small_train_split(128)
    history = trainer.fit(data, out=tmp_path / "sn")
    assert history[-1]["loss_max"] < history[0]["loss_max"]
    assert all(math.isfinite(h["loss_sub"]) for h in history)
    resumed = SandwichTrainer(default_supernet(seed=1)[0], space, config)
    assert resumed.resume(tmp_path / "sn") and resumed.epoch == 3 and resumed.step_count == trainer.step_count
    for (k, a), b in zip(trainer.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    from deploy_nas.supernets import load_supernet_dir

    loaded, loaded_space = load_supernet_dir(tmp_path / "sn", "autoformer")  # EMA weights, our supernet format
    assert loaded_space == space
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, trainer.ema[k], rtol=0, atol=0, msg=k)


def _train(rank: int, world_size: int, store: str, out: str, projection: bool) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    if world_size > 1:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    supernet, space = default_supernet(seed=0)  # the official random init: gradients of a fresh network
    config = TrainConfig(epochs=1, batch_size=GLOBAL_BATCH, max_steps=STEPS, grad_projection=projection)
    SandwichTrainer(supernet, space, config, World()).fit(small_train_split())
    save_file({k: v.contiguous() for k, v in supernet.state_dict().items()}, f"{out}/rank{rank}.safetensors")
    if world_size > 1:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("projection", [False, True])
def test_two_processes_match_one_process_on_the_global_batch(tmp_path, projection):
    (tmp_path / "ddp").mkdir()
    (tmp_path / "one").mkdir()
    mp.start_processes(_train, args=(2, str(tmp_path / "store"), str(tmp_path / "ddp"), projection), nprocs=2,
                       join=True, start_method="spawn")
    _train(0, 1, "", str(tmp_path / "one"), projection)
    r0, r1 = (load_file(tmp_path / "ddp" / f"rank{r}.safetensors") for r in (0, 1))
    single = load_file(tmp_path / "one" / "rank0.safetensors")
    start = default_supernet(seed=0)[0].state_dict()
    moved = 0
    for k in single:
        torch.testing.assert_close(r0[k], r1[k], rtol=0, atol=0, msg=f"ranks differ at {k}")
        moved += not torch.equal(single[k], start[k])
    assert_data_parallel_match(r0, single)
    assert moved > len(single) // 2  # the steps really changed the weights


def _diverge(rank: int, world_size: int, store: str, out: str) -> None:
    """Two ranks, one Inf pixel in an image of rank 1's slice of the second step: only rank 1's loss is NaN there."""
    import torch.distributed as dist

    from deploy_nas.errors import TrainingDiverged

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    supernet, space = default_supernet(seed=0)
    trainer = SandwichTrainer(supernet, space, TrainConfig(epochs=1, batch_size=GLOBAL_BATCH, max_steps=STEPS),
                              World())
    data = small_train_split()
    order = np.random.default_rng(trainer.config.seed).permutation(len(data.images))  # trainer.batches' shuffle
    data.images[order[GLOBAL_BATCH + GLOBAL_BATCH // 2]] = np.inf  # step 2, the first image of rank 1's half
    try:
        trainer.fit(data)
        message = "no error"
    except TrainingDiverged as err:
        message = str(err)
    Path(out, f"rank{rank}.txt").write_text(message)
    dist.destroy_process_group()


@pytest.mark.slow
def test_a_loss_diverging_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    """The divergence check all-reduces a flag: rank 0, whose own losses are finite, stops at the same step with a
    message naming the other rank, instead of running on into collectives that rank 1 has left."""
    ranks = mp.start_processes(_diverge, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=False,
                               start_method="spawn")
    deadline = time.monotonic() + 300
    while not ranks.join(timeout=5):
        if time.monotonic() > deadline:  # a rank left waiting in a collective: the hang this check prevents
            for p in ranks.processes:
                p.kill()
            pytest.fail("the ranks did not stop together (still running after 300 s)")
    r0, r1 = ((tmp_path / f"rank{r}.txt").read_text() for r in (0, 1))
    assert r0.startswith("training diverged at step 2: a loss on another rank not finite"), r0
    assert r1.startswith("training diverged at step 2: loss_max, loss_sub not finite"), r1


@pytest.mark.gpu
def test_training_on_cuda_follows_the_cpu_run(tmp_path):
    from deploy_nas.export.backends.torch_backend import ieee_fp32
    from deploy_nas.supernets import load_supernet_dir

    data = digits_splits(default_supernet(seed=0)[1].img_size, 3)
    runs = {}
    for device in ("cpu", "cuda"):
        supernet, space = default_supernet(seed=0)
        config = TrainConfig(epochs=1, batch_size=GLOBAL_BATCH, max_steps=STEPS, device=device, ema_decay=0.9)
        with ieee_fp32(torch.device(device)):
            trainer = SandwichTrainer(supernet, space, config)
            runs[device] = trainer.fit(small_train_split(), data["val"], out=tmp_path / device)[0]
        assert next(trainer.model.parameters()).device.type == device
    cpu, cuda = runs["cpu"], runs["cuda"]
    assert cuda["loss_max"] == pytest.approx(cpu["loss_max"], rel=1e-3)
    assert cuda["loss_sub"] == pytest.approx(cpu["loss_sub"], rel=1e-3)
    for kind in ("max", "min"):  # evaluated on the device; at most 2 of the val images may flip
        assert abs(cuda[f"val_top1_{kind}"] - cpu[f"val_top1_{kind}"]) <= 2 / len(data["val"])
    loaded, _ = load_supernet_dir(tmp_path / "cuda", "autoformer")  # saved as a CPU supernet directory
    assert next(loaded.parameters()).device.type == "cpu"
