"""torch.distributed for training and search: the process group torchrun describes, or one process.

`process_group_from_env()` joins the group when torchrun started several processes (WORLD_SIZE > 1) and leaves it
afterwards; `World` wraps the group (or its absence) with the few collectives the trainer and the search need.

Training on GPUs (`--device cuda`) binds each rank to cuda:LOCAL_RANK and uses NCCL; everything else (CPU
training, the search, whose collectives carry pickled Python objects) uses gloo.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch

from deploy_nas.errors import DeployNASError


def launch() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment, checked: (0, 1) for a plain process, whatever RANK says
    then; a typed error for variables that describe no launch. Only the commands that join a process group ask
    (`process_group_from_env`)."""

    def number(name: str) -> int:
        text = os.environ.get(name, "0")
        try:
            return int(text)
        except ValueError:
            raise DeployNASError(f"the environment variable {name}={text[:40]!r} is not a number; torchrun sets "
                                 f"it: run under torchrun or unset {name}") from None

    world = number("WORLD_SIZE") if "WORLD_SIZE" in os.environ else 1
    if world <= 1:
        return 0, 1
    rank, port = number("RANK"), number("MASTER_PORT")
    missing = [n for n in ("RANK", "MASTER_ADDR", "MASTER_PORT") if n not in os.environ]
    if missing or not 0 <= rank < world or not 0 < port < 65536:
        raise DeployNASError(f"WORLD_SIZE={world} asks for a multi-process run, but "
                             f"{', '.join(f'{n}={os.environ.get(n)}' for n in ('RANK', 'MASTER_ADDR', 'MASTER_PORT'))} "
                             "do not describe one; start it with torchrun, or unset WORLD_SIZE")
    return rank, world


def main_process() -> bool:
    """Rank 0 of a torchrun launch, or a plain process: the one that prints what every rank would. Lenient: a
    command that joins no process group runs as a plain process whatever the launch variables say, and one that
    does is checked by `process_group_from_env`."""
    try:
        return launch()[0] == 0
    except DeployNASError:  # no valid launch: a plain process
        return True


@contextlib.contextmanager
def process_group_from_env(cuda: bool = False) -> Iterator[None]:
    """`cuda`: the work runs on GPUs; each rank is bound to cuda:LOCAL_RANK and the group uses NCCL."""
    import torch.distributed as dist

    if cuda and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if launch()[1] <= 1 or dist.is_initialized():
        yield
        return
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


class World:
    """The torch.distributed process group (or a single process)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist if dist.is_available() and dist.is_initialized() else None
        self.rank = self.dist.get_rank() if self.dist else 0
        self.size = self.dist.get_world_size() if self.dist else 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean_(self, tensors: list[torch.Tensor]) -> None:
        """All-reduce the tensors in place to their mean over ranks (one flat buffer, one call)."""
        if self.size == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        self.dist.all_reduce(flat)
        flat /= self.size
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def run_on_main(self, fn: Callable[[], Any]) -> Any:
        """`fn()` on rank 0, its value (or its exception) on every rank: a failure on rank 0 never leaves the other
        ranks waiting in a collective. Exceptions that are not DeployNASError reach the other ranks as one."""
        from deploy_nas.errors import DeployNASError

        value, error = None, None
        if self.main:
            try:
                value = fn()
            except Exception as err:  # noqa: BLE001 (re-raised on every rank below)
                if self.size == 1:
                    raise
                error = err
        if self.size > 1:
            shared = error if isinstance(error, DeployNASError) or error is None else \
                DeployNASError(f"rank 0 failed: {type(error).__name__}: {error}")
            value, shared = self.broadcast((value, shared))
            if error is not None:
                raise error
            if shared is not None:
                raise shared
        return value

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (picklable values computed by our own code only)."""
        if self.size == 1:
            return obj
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        out: list[Any] = [None] * self.size
        self.dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.size > 1:
            self.dist.barrier()


__all__ = ["World", "main_process", "process_group_from_env"]
