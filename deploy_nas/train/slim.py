"""ViT-Slim's mask search (`search.py` of Arnav0400/ViT-Slim): the weights and the soft masks of a DeiT train
jointly on the classification loss plus L1 sparsity terms, `w_attn * sum|attn.zeta| + w_mlp * sum|mlp.zeta| +
w_patch * sum|tanh(patch_zeta)|` over all layers. A mask family whose weight is 0 stays frozen at its initial value
(`correct_require_grad`); `freeze_weights` trains only the masks and the norms. AdamW, the masks and the
1-d parameters without weight decay, the learning-rate schedule of `TrainConfig` (the family's defaults give the
official constant 5e-4, weight decay 1e-3); optional EMA; checkpoint + resume as the sandwich trainer.

Data-parallel like the sandwich rule: each rank takes its slice of the global batch and gradients are averaged, so
the result equals one process on the global batch. The L1 weights are the effective ones: the official search.py
divides its --w1/--w2/--w3 by the world size, so an official N-GPU run corresponds to w / N here.

Besides the supernet directory, every save writes `ckpt.pth` in the official layout (`{'model': state_dict,
'args': {...}}`, tensors and plain values only, loadable with weights_only=True): the official `retrain.py` reads it
as --searched_path, and `deploy-nas slim prune --checkpoint` as any ViT-Slim checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deploy_nas.errors import DeployNASError
from deploy_nas.evaluate import top1
from deploy_nas.spaces.vitslim import SlimConfig
from deploy_nas.train import TRAIN_RULES, TrainConfig
from deploy_nas.train.sandwich import SandwichTrainer

OFFICIAL_CHECKPOINT = "ckpt.pth"
SMALL = 0.05  # a mask value below this counts as (nearly) pruned in the logged sparsity


def mask_weight(name: str, config: TrainConfig) -> float | None:
    """The L1 weight of the mask parameter `name` (None: not a mask)."""
    if name.endswith("attn.patch_zeta"):
        return config.w_patch
    if name.endswith("attn.zeta"):
        return config.w_attn
    if name.endswith("mlp.zeta"):
        return config.w_mlp
    return None


class MaskSearch(SandwichTrainer):
    """The rule "slim": one forward of the soft-masked model per step (no subnet sampling)."""

    ignores = ("num_random", "distill", "distill_weight", "grad_projection", "projection_from_epoch")

    def __init__(self, supernet: nn.Module, space: Any, config: TrainConfig, world: Any = None):
        if not hasattr(supernet, "soft_masks") or not hasattr(supernet, "sparsity"):
            raise DeployNASError(f"the mask search trains a masked model (soft_masks, sparsity); "
                                 f"{type(supernet).__name__} is not one")
        for name, p in supernet.named_parameters():
            weight = mask_weight(name, config)
            trainable = weight != 0 if weight is not None else not config.freeze_weights or ".norm" in f".{name}"
            p.requires_grad_(trainable)
        super().__init__(supernet, space, config, world)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]

    def train_step(self, x: torch.Tensor, y: torch.Tensor, total_steps: int, steps_per_epoch: int) -> dict:
        c, model = self.config, self.model
        model.train()
        x, y = self.augment(x).to(self.device), y.to(self.device)
        self.optimizer.zero_grad(set_to_none=False)
        logits = model.forward_masked(x, model.soft_masks())
        ce = F.cross_entropy(logits, y, label_smoothing=c.label_smoothing)
        attn, mlp, patch = model.sparsity()
        l1 = c.w_attn * attn + c.w_mlp * mlp + c.w_patch * patch
        (ce + l1).backward()  # the L1 terms are the same on every rank: averaging keeps them as they are
        grads = []
        for p in self.trainable:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        self.world.mean_(grads)
        lr = self._apply_update(self.trainable, total_steps, steps_per_epoch)
        return {"loss_max": float(ce.detach()), "loss_sub": float(l1.detach()), "lr": lr}

    @torch.no_grad()
    def evaluate(self, split: Any, kinds: tuple[str, ...] = ("soft", "pruned"), batch: int = 256) -> dict[str, float]:
        """Top-1 with the soft masks and with the masks thresholded at budgets 0.5 (EMA weights when kept)."""
        configs = {"soft": SlimConfig(soft=True), "pruned": SlimConfig(0.5, 0.5, 0.5)}
        with self.ema_weights():
            return {kind: top1(self.model.fixed(configs[kind]), split, batch, self.device) for kind in kinds}

    def epoch_stats(self) -> dict[str, float]:
        """The share of each mask family below 0.05 (attention and MLP masks as they are, tokens through tanh)."""
        with self.ema_weights():
            return mask_sparsity(self.model)

    def write_extra(self, directory: Path) -> None:
        """The training state, and ckpt.pth in the official layout (search.py's checkpoint)."""
        super().write_extra(directory)
        with self.ema_weights():
            state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        arch = self.model.arch
        args = {"w1": self.config.w_attn, "w2": self.config.w_mlp, "w3": self.config.w_patch,
                "freeze_weights": self.config.freeze_weights, "epochs": self.config.epochs, "lr": self.config.lr,
                "head_search": arch.mask == "head", "uniform_search": arch.mask == "uniform",
                "model": getattr(self.space, "name", "deit"), "epoch": self.epoch}
        # "epoch": the epochs finished; "epoch_step": the batches of the next one done (a --max-steps stop inside it)
        from deploy_nas.io import library_write

        with library_write(directory / OFFICIAL_CHECKPOINT):
            torch.save({"model": state, "args": args, "epoch": self.epoch, "epoch_step": self.epoch_step},
                       directory / OFFICIAL_CHECKPOINT)


def mask_sparsity(model: Any) -> dict[str, float]:
    """Per mask family, the share of values below SMALL in magnitude (tokens: tanh(patch_zeta))."""
    attn, tokens, mlp = zip(*model.soft_masks())
    return {f"small_{name}": float(torch.cat([m.detach().abs().reshape(-1) for m in masks]).lt(SMALL).float().mean())
            for name, masks in (("attn", attn), ("mlp", mlp), ("patch", tokens))}


TRAIN_RULES.register("slim", MaskSearch)


def search_target(base: Path | None, space: str | None, mask: str | None, run: Any = None,
                  import_options: tuple[str, ...] = ()) -> tuple[Any, Any, Any]:
    """(family, the masked DeiT to search in, or None to build one from the space seeded, its space): the DeiT
    file `base` (masks of the `mask` variant added at their initial values if it has none; `import_options`,
    "key=value" strings, what else the file cannot tell, such as num_heads), else the space `space` (default
    vitslim-tiny) with `mask`. On a resume (`run`, a `train.RecordedRun`) the run's own space, and one given must be
    that."""
    from dataclasses import replace

    from deploy_nas.family import FAMILIES, parse_import_options
    from deploy_nas.spaces import load_space
    from deploy_nas.supernets.vitslim import FAMILY, SlimImportOptions

    fam = FAMILIES.get(FAMILY)
    if import_options and base is None:
        raise DeployNASError("--import-option reads the DeiT file of --base; pass --base")
    recorded = run.target() if run is not None and (base, space, mask) == (None, None, None) else None
    if recorded is not None:
        supernet, chosen = None, recorded[1]
    elif base is not None:
        if space is not None:
            raise DeployNASError("give --base (a DeiT checkpoint) or --space (a DeiT built from scratch), not both")
        supernet, chosen = fam.load_official(base, parse_import_options(SlimImportOptions, import_options,
                                                                        mask=mask))
    else:
        chosen = load_space(space or fam.default_space, FAMILY)
        supernet, chosen = None, replace(chosen, mask=mask) if mask else chosen
    if run is not None:
        run.check_target(fam, chosen, "--base/--space/--head-search/--uniform-search")
    return fam, supernet, chosen
