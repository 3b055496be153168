"""`python -m deploy_nas.train` and `torchrun --nproc_per_node N -m deploy_nas.train`: sandwich supernet training
on the embedded digits; several processes under torchrun talk over gloo (CPU) or NCCL (`--device cuda`)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m deploy_nas.train", description=__doc__)
    ap.add_argument("--family", default="autoformer")
    ap.add_argument("--space", default="autoformer-tiny", help="registered space name or YAML/JSON file")
    ap.add_argument("--out", type=Path, required=True, help="supernet directory to write (and resume from)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=64, help="global batch, split across ranks")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--num-random", type=int, default=2)
    ap.add_argument("--no-distill", action="store_true")
    ap.add_argument("--distill-weight", type=float, default=0.5, help="sub loss = (1 - w) CE + w KL(max || sub)")
    ap.add_argument("--grad-projection", action="store_true")
    ap.add_argument("--projection-from-epoch", type=int, default=0)
    ap.add_argument("--ema-decay", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--shift", type=int, default=0, help="augmentation: random shifts of up to this many pixels")
    ap.add_argument("--no-state", action="store_true", help="do not keep train_state.pt (no resume; for shipping)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: cuda:LOCAL_RANK, over NCCL)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from deploy_nas.distributed import main_process, process_group_from_env
    from deploy_nas.errors import DeployNASError

    args = parse(argv)
    with process_group_from_env(cuda=args.device.startswith("cuda")):
        try:
            train(args)
        except DeployNASError as err:
            if main_process():  # under torchrun every rank fails alike; one says so
                print(f"error: {err}", file=sys.stderr)
            return err.exit_code
    return 0


def train(args: argparse.Namespace) -> None:
    from deploy_nas.data import digits_splits
    from deploy_nas.spaces import load_space
    from deploy_nas.supernets import FAMILIES, AutoFormerArch, AutoFormerSupernet
    from deploy_nas.train import SandwichTrainer, TrainConfig, World

    FAMILIES.get(args.family)
    space = load_space(args.space)
    torch.manual_seed(args.seed)
    supernet = AutoFormerSupernet(AutoFormerArch.from_space(space))
    supernet.reset_parameters(torch.Generator().manual_seed(args.seed))
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, num_random=args.num_random,
                         distill=not args.no_distill, distill_weight=args.distill_weight,
                         grad_projection=args.grad_projection, projection_from_epoch=args.projection_from_epoch,
                         ema_decay=args.ema_decay, seed=args.seed, max_steps=args.max_steps, shift=args.shift,
                         save_state=not args.no_state, device=args.device)
    world = World()
    trainer = SandwichTrainer(supernet, space, config, world)
    if args.resume and trainer.resume(args.out) and world.main:
        print(f"resumed from {args.out} at epoch {trainer.epoch}", flush=True)
    data = digits_splits(space.img_size, space.in_chans, seed=0)
    log = (lambda row: print(json.dumps(row), flush=True)) if world.main else (lambda row: None)
    trainer.fit(data["train"], data["val"], args.out, log=log)
    if world.main:
        print(json.dumps({"test_top1": trainer.evaluate(data["test"])}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
