"""ViT-Slim (Chavan et al., CVPR 2022): the space is the budgets.

A ViT-Slim "supernet" is a DeiT with learned soft masks: `attn.zeta` on the (head, channel) positions of q/k/v,
`mlp.zeta` on the hidden units, `attn.patch_zeta` on the tokens. A subnet is three budgets, the fraction of each
mask family kept (one global threshold per family, as the official `calculate_search_threshold`), or the soft
masks themselves folded into the weights (`soft`: deploy straight after the search, nothing pruned).
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from ..errors import InvalidSubnetConfig, brief
from . import PRESETS, SPACES, CanonicalConfig, Preset, check_config_type, space_from_fields

FAMILY = "vitslim"
BUDGETS = ("budget_attn", "budget_mlp", "budget_patch")


def check_budget(value: Any, where: str) -> float:
    """A budget as a float; InvalidSubnetConfig otherwise. A number written as a string is refused by name: YAML
    (1.1, PyYAML) reads an exponent without a decimal point, `5e-1`, as the string '5e-1'."""
    number = _number(value) if isinstance(value, str) else None
    if number is not None:
        yaml = re.fullmatch(r"\s*[-+]?[0-9]+[eE][-+]?[0-9]+\s*", value) is not None
        raise InvalidSubnetConfig(f"{where} = {brief(value)} is a string, not a number" + (
            " (YAML reads an exponent without a decimal point, like 5e-1, as text)" if yaml else "")
            + f": write {number:g}{' or ' + _dotted(value) if yaml else ''}, unquoted")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 < value <= 1:
        raise InvalidSubnetConfig(f"{where} = {brief(value)} is not a budget: the kept fraction, in (0, 1]")
    return float(value)


def _dotted(text: str) -> str:
    """5e-1 -> 5.0e-1: the form YAML 1.1 reads as a float."""
    mantissa, _, exponent = text.strip().lower().partition("e")
    return f"{mantissa}.0e{exponent}"


def _number(text: str) -> float | None:
    try:
        return float(text) if len(text) <= 40 else None
    except ValueError:
        return None


@dataclass(frozen=True)
class SlimConfig(CanonicalConfig):
    """Budgets (kept fractions) of the attention channels, the MLP hidden units and the tokens; `soft`: fold the
    learned soft masks instead of thresholding them (the budgets are then ignored and must be 1)."""

    budget_attn: float = 1.0
    budget_mlp: float = 1.0
    budget_patch: float = 1.0
    soft: bool = False
    family: ClassVar[str] = FAMILY

    def __post_init__(self) -> None:
        for name in BUDGETS:
            object.__setattr__(self, name, check_budget(getattr(self, name), name))
        if not isinstance(self.soft, bool):
            raise InvalidSubnetConfig(f"soft = {brief(self.soft)} must be true or false")
        if self.soft and any(getattr(self, b) != 1.0 for b in BUDGETS):
            raise InvalidSubnetConfig("soft masks are folded as they are: leave the budgets at 1 (or drop soft)")

    def to_dict(self) -> dict[str, Any]:
        return {"family": FAMILY, **asdict(self)}

    @classmethod
    def from_dict(cls, obj: Any) -> SlimConfig:
        """Our canonical form, or the official search/retrain arguments (`budget_attn`, ... as in `args`)."""
        if not isinstance(obj, dict):
            raise InvalidSubnetConfig(f"a ViT-Slim config must be a mapping, got {type(obj).__name__}")
        known = {f.name for f in fields(cls)} | {"family"}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise InvalidSubnetConfig(f"config has unknown keys {brief(unknown)}; a {FAMILY} config has "
                                      f"{', '.join(BUDGETS)} and soft")
        if obj.get("family", FAMILY) != FAMILY:
            raise InvalidSubnetConfig(f"config is for family {brief(obj.get('family'))}, not {FAMILY!r}")
        missing = [b for b in BUDGETS if b not in obj]
        if missing and obj.get("soft", False) is False:  # a budget left out is not silently 1 (keep everything)
            given = [b for b in BUDGETS if b in obj]
            gives = f"gives {', '.join(given)} but not {', '.join(missing)}" if given else "gives no budget"
            raise InvalidSubnetConfig(f"config {gives}: a {FAMILY} config gives all three budgets, "
                                      f"{', '.join(BUDGETS)} (1 keeps everything), or soft: true")
        return cls(**{k: v for k, v in obj.items() if k != "family"})


@dataclass(frozen=True)
class SlimSpace:
    """The base DeiT the masks live in, and the budgets a search may sample (a grid of `step` in
    [min_budget, 1]); any budget in (0, 1] validates."""

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    mlp_hidden: int
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    mask: str = "channel"  # attn.zeta (1,1,H,1,d) "channel", (1,1,H,1,1) "head", (1,1,1,1,d) "uniform"
    min_budget: float = 0.3
    step: float = 0.1
    norm_eps: float = 1e-6
    family: ClassVar[str] = FAMILY

    def __post_init__(self) -> None:
        problems = [f"{n} = {brief(getattr(self, n))}" for n in ("embed_dim", "depth", "num_heads", "mlp_hidden",
                                                                   "img_size", "patch_size", "in_chans", "num_classes")
                    if not isinstance(getattr(self, n), int) or getattr(self, n) < 1]
        if not problems and self.embed_dim % self.num_heads:
            problems.append(f"embed_dim {self.embed_dim} is not a multiple of num_heads {self.num_heads}")
        if self.mask not in ("channel", "head", "uniform"):
            problems.append(f"mask = {brief(self.mask)} (channel, head or uniform)")
        if not 0 < self.min_budget <= 1 or not 0 < self.step <= 1:
            problems.append("min_budget and step must lie in (0, 1]")
        if problems:
            raise InvalidSubnetConfig(f"space {self.name!r} is not a ViT-Slim space: {'; '.join(problems)}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def num_tokens(self) -> int:
        return (self.img_size // self.patch_size) ** 2 + 1

    def grid(self) -> list[float]:
        n = int(round((1 - self.min_budget) / self.step))
        return [round(1 - i * self.step, 6) for i in range(n + 1)][::-1]

    def sample(self, rng: random.Random | None, kind: str = "random") -> SlimConfig:
        grid = self.grid()
        if kind in ("min", "max"):
            b = grid[0] if kind == "min" else 1.0
            return SlimConfig(b, b, b)
        if kind != "random":
            raise InvalidSubnetConfig(f"kind = {brief(kind)}: sample takes random, min or max")
        return SlimConfig(*(rng.choice(grid) for _ in BUDGETS))

    def validate(self, cfg: Any) -> SlimConfig:
        check_config_type(cfg, FAMILY, f"space {self.name!r}")
        return cfg  # every budget in (0, 1] is a point of the space; SlimConfig checked that

    def to_dict(self) -> dict[str, Any]:
        return {"family": FAMILY, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], name: str | None = None) -> SlimSpace:
        return space_from_fields(cls, d, name, "vitslim")


# DeiT (Touvron et al.) sizes, the bases ViT-Slim searches in; and a tiny DeiT-like base for tests and the CPU demo.
for _name, _embed, _heads in (("deit-tiny", 192, 3), ("deit-small", 384, 6), ("deit-base", 768, 12)):
    SPACES.register(f"vitslim-{_name}", SlimSpace(f"vitslim-{_name}", _embed, 12, _heads, 4 * _embed))
SPACES.register("vitslim-tiny", SlimSpace("vitslim-tiny", 64, 4, 4, 256, img_size=32, patch_size=8, num_classes=10))
# The budgets of the official README example (attention 0.7, MLP 0.7, tokens 0.7) and of retrain.py's defaults.
PRESETS.register("vitslim-0.7", Preset(SlimConfig(0.7, 0.7, 0.7), "vitslim-deit-small"))
PRESETS.register("vitslim-0.5", Preset(SlimConfig(0.5, 0.5, 0.5), "vitslim-deit-small"))
