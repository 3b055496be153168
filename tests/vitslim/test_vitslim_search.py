"""The mask search: the L1 terms make the masks sparse on the embedded data, a zero weight freezes its mask family,
--freeze-weights trains only masks and norms, the official-layout ckpt.pth, resume, and 2 ranks = 1 process."""
from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from deploy_nas.data import Split, digits_splits
from deploy_nas.family import FAMILIES
from deploy_nas.spaces import SPACES
from deploy_nas.supernets import load_official, load_supernet_dir
from deploy_nas.train import TrainConfig, World, train_config
from deploy_nas.train.slim import OFFICIAL_CHECKPOINT, MaskSearch, mask_sparsity
from tests.conftest import assert_data_parallel_match

FAMILY = FAMILIES.get("vitslim")
SPACE = SPACES.get("vitslim-tiny")


def fresh(seed: int = 0):
    return FAMILY.build_supernet(SPACE, seed)


def split(n: int = 128) -> Split:
    train = digits_splits(SPACE.img_size, SPACE.in_chans)["train"]
    return Split(train.images[:n], train.labels[:n])


def l1(model) -> tuple[float, float, float]:
    return tuple(float(t.detach()) for t in model.sparsity())


def test_the_l1_terms_make_the_masks_sparse(tmp_path):
    # strong weights and a high learning rate so a few dozen steps show what 50 epochs do on ImageNet
    config = train_config(FAMILY, dict(epochs=6, batch_size=32, lr=3e-2, min_lr=3e-2, w_attn=2e-3, w_mlp=1e-3,
                                       w_patch=2e-3))
    model = fresh()
    before, small_before = l1(model), mask_sparsity(model)
    trainer = MaskSearch(model, SPACE, config)
    history = trainer.fit(split(512), split(64), out=tmp_path / "slim")
    after, small_after = l1(model), mask_sparsity(model)
    print(f"\nL1 before {before} after {after}; small before {small_before} after {small_after}")
    assert after[0] < 0.5 * before[0] and after[1] < 0.5 * before[1] and after[2] < before[2]
    assert small_after["small_attn"] > 0.2 and small_after["small_mlp"] > 0.2 and small_before["small_attn"] == 0
    assert {"val_top1_soft", "val_top1_pruned", "small_attn", "small_mlp", "small_patch"} <= set(history[-1])
    # the official layout beside our supernet directory, readable by `slim prune` and the official retrain.py
    ckpt = torch.load(tmp_path / "slim" / OFFICIAL_CHECKPOINT, weights_only=True)
    assert set(ckpt) >= {"model", "args"} and ckpt["args"]["w1"] == 2e-3
    assert "blocks.0.attn.zeta" in ckpt["model"] and "blocks.0.attn.patch_zeta" in ckpt["model"]
    official, _ = load_official(tmp_path / "slim" / OFFICIAL_CHECKPOINT, "vitslim")
    ours, space = load_supernet_dir(tmp_path / "slim", "vitslim")
    assert space == SPACE
    for k, v in ours.state_dict().items():
        assert torch.equal(v, official.state_dict()[k]) and torch.equal(v, model.state_dict()[k]), k


def test_zero_weights_freeze_their_masks_and_freeze_weights_trains_only_masks_and_norms():
    config = TrainConfig(epochs=1, batch_size=32, lr=1e-2, max_steps=3, w_attn=0.0, w_mlp=1e-3, w_patch=1e-3,
                         freeze_weights=True)
    model = fresh()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    MaskSearch(model, SPACE, config).fit(split(96))
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, start[k])}
    assert not any(k.endswith("attn.zeta") for k in changed)
    assert any(k.endswith("mlp.zeta") for k in changed) and any(k.endswith("patch_zeta") for k in changed)
    assert any(".norm" in k for k in changed)
    assert all("zeta" in k or "norm" in k for k in changed), sorted(changed)


def test_search_resumes_where_it_stopped(tmp_path):
    config = TrainConfig(epochs=2, batch_size=32, lr=1e-2, w_attn=1e-3, ema_decay=0.5)
    first = MaskSearch(fresh(), SPACE, config)
    first.fit(split(64), out=tmp_path / "s")
    again = MaskSearch(fresh(seed=1), SPACE, config)
    assert again.resume(tmp_path / "s") and again.epoch == 2 and again.step_count == first.step_count
    for (k, a), b in zip(first.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), k


def _search(rank: int, world_size: int, store: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    if world_size > 1:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    model = fresh()
    config = TrainConfig(epochs=1, batch_size=16, max_steps=3, lr=1e-2, w_attn=1e-3, w_mlp=1e-3, w_patch=1e-3)
    MaskSearch(model, SPACE, config, World()).fit(split(64))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{out}/rank{rank}.safetensors")
    if world_size > 1:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_match_one_process_on_the_global_batch(tmp_path):
    (tmp_path / "ddp").mkdir()
    (tmp_path / "one").mkdir()
    mp.start_processes(_search, args=(2, str(tmp_path / "store"), str(tmp_path / "ddp")), nprocs=2, join=True,
                       start_method="spawn")
    _search(0, 1, "", str(tmp_path / "one"))
    r0, r1 = (load_file(tmp_path / "ddp" / f"rank{r}.safetensors") for r in (0, 1))
    single = load_file(tmp_path / "one" / "rank0.safetensors")
    E = SPACE.embed_dim
    for k in single:
        assert torch.equal(r0[k], r1[k]), f"ranks differ at {k}"
    # the key bias has a zero gradient (softmax ignores a per-row constant): AdamW scales its rounding noise
    key_bias = {k: (lambda t: torch.cat([t[:E], t[2 * E:]])) for k in single if k.endswith("attn.qkv.bias")}
    assert_data_parallel_match(r0, single, skip=key_bias)


def test_the_official_constant_rate_is_the_default_and_follows_a_given_lr():
    """search.py runs `--sched none`: the rate stays at --lr unless --min-lr asks for a decay; the help shows it."""
    from click.testing import CliRunner

    from deploy_nas.cli import main
    from deploy_nas.train import lr_at

    assert (train_config(FAMILY, {}).lr, train_config(FAMILY, {}).min_lr) == (5e-4, 5e-4)
    given = train_config(FAMILY, {"lr": 1e-3})
    assert given.min_lr == 1e-3 and lr_at(900, 1000, 0, given.lr, given.min_lr) == 1e-3
    assert train_config(FAMILY, {"lr": 1e-3, "min_lr": 1e-5}).min_lr == 1e-5
    assert train_config(FAMILIES.get("autoformer"), {"lr": 1e-3}).min_lr == TrainConfig().min_lr  # a decaying recipe
    shown = CliRunner().invoke(main, ["slim", "search", "--help"], terminal_width=200).output
    assert "peak learning rate (AdamW)  [default: 0.0005]" in shown and "[default: 0.001]" in shown
