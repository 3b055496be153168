"""PSViT (Chen et al., arXiv 2108.03428): search spaces and subnet configs.

A PSViT network has stages separated by token-pooling layers that lower the token count and raise the width; each
stage is a row of cells, and each cell takes one of three paths: `layer` (one transformer layer), `shared` (two
layers, the second reusing the first one's attention map) or `identity`. A config gives, per stage, the width, the
token count and the cell choices:

    {"family": "psvit", "widths": [32, 40, 64], "tokens": [64, 16, 4],
     "cells": [["layer", "shared"], ["identity", "layer"], ["shared", "shared"]]}

`tokens` counts patch tokens (PSViT-1D keeps one CLS token besides them); stage 0 holds every patch. The same
config can be written as a layer string (`"layers": "A AR | - A | AR AR"`): per stage (`|` between stages) `A` is a
layer computing its own attention map, `R` a layer reusing the map of the `A` just before it (the pair is one
`shared` cell), `-` an identity cell. The string form can say what the nested form cannot: an `R` opening a stage
would pair with the last layer of the stage before, a shared pair crossing a stage boundary, which is refused.

PSViT has no public code; what the article leaves open is decided here and in docs/psvit.md:
* a space lists per stage the widths and token counts it allows and the cells per stage (the article: 3 stages of
  6 cells); `increasing` (the article's rule) makes widths rise and token counts fall strictly from stage to stage;
* token counts between stages must be reachable by the pooling: 1D max-pooling with kernel = stride = n_in / n_out
  (an integer), 2D a 3x3 convolution with padding 1 and an integer stride s (grid g -> ceil(g / s));
* `min` is one `layer` cell (the first of the last stage) at the smallest widths and token counts, since an
  all-identity network has no layer left; `max` is every cell `shared` (the most layers) at the largest sizes;
* random sampling is uniform per stage size and per cell, redrawn while every cell is identity.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

from ..errors import InvalidSubnetConfig, brief, integral
from . import SPACES, CanonicalConfig, CheckedSpace, check_config_type, space_from_fields

FAMILY = "psvit"
LAYER, SHARED, IDENTITY = "layer", "shared", "identity"
CHOICES = (LAYER, SHARED, IDENTITY)
LAYERS_PER_CHOICE = {LAYER: 1, SHARED: 2, IDENTITY: 0}
POOLINGS = ("1d", "2d")
MAX_STAGES, MAX_CELLS = 16, 256  # far beyond any space: a larger document is refused before anything is sized by it
SampleKind = Literal["random", "min", "max"]


def _int(value: Any, where: str) -> int:
    value = integral(value)  # 16.0 or a numpy integer as 16
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1 << 20:
        raise InvalidSubnetConfig(f"{where} = {brief(value)} is not a positive integer")
    return value


def _list(value: Any, where: str, limit: int) -> list:
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= limit:
        raise InvalidSubnetConfig(f"{where} = {brief(value)} must be a list of 1 to {limit} entries, one per "
                                  f"{'stage' if limit == MAX_STAGES else 'cell'}")
    return list(value)


def _stage_choices(stages: Any, name: str) -> tuple[tuple[int, ...], ...]:
    """Per stage the sorted distinct choices, integers as given (16.9 is refused, not cut to 16)."""
    return tuple(tuple(sorted({_int(v, f"{name}[{s}][{i}]") for i, v in enumerate(stage)}))
                 for s, stage in enumerate(stages))


def pool_stride(pooling: str, n_in: int, n_out: int) -> int | None:
    """The stride of the pooling that takes `n_in` patch tokens to `n_out`, or None when none does.

    1D: max-pooling with kernel = stride = n_in / n_out (an integer). 2D: both counts are square grids and a 3x3
    convolution with padding 1 and stride s gives ceil(g_in / s) = g_out; the smallest such s."""
    if pooling == "1d":
        return n_in // n_out if n_out <= n_in and n_in % n_out == 0 else None
    g_in, g_out = math.isqrt(n_in), math.isqrt(n_out)
    if g_in * g_in != n_in or g_out * g_out != n_out:
        return None
    return next((s for s in range(1, g_in + 1) if -(-g_in // s) == g_out), None)


@dataclass(frozen=True)
class PSViTConfig(CanonicalConfig):
    """One PSViT subnet: per stage its width, its patch-token count and its cell choices."""

    widths: tuple[int, ...]
    tokens: tuple[int, ...]
    cells: tuple[tuple[str, ...], ...]
    family: ClassVar[str] = FAMILY

    def __post_init__(self) -> None:
        widths = _list(self.widths, "widths", MAX_STAGES)
        tokens = _list(self.tokens, "tokens", MAX_STAGES)
        cells = _list(self.cells, "cells", MAX_STAGES)
        if not len(widths) == len(tokens) == len(cells):
            raise InvalidSubnetConfig(f"widths, tokens and cells give {len(widths)}, {len(tokens)} and {len(cells)} "
                                      "stages; give one entry per stage in each")
        object.__setattr__(self, "widths", tuple(_int(w, f"widths[{s}]") for s, w in enumerate(widths)))
        object.__setattr__(self, "tokens", tuple(_int(n, f"tokens[{s}]") for s, n in enumerate(tokens)))
        object.__setattr__(self, "cells", tuple(_stage_cells(c, s) for s, c in enumerate(cells)))
        if self.num_layers == 0:
            raise InvalidSubnetConfig(f"every cell is {IDENTITY!r}: no layer is left; choose {LAYER!r} or {SHARED!r} "
                                      "for at least one cell")

    @property
    def num_stages(self) -> int:
        return len(self.cells)

    @property
    def num_layers(self) -> int:
        return sum(LAYERS_PER_CHOICE[c] for stage in self.cells for c in stage)

    def layer_string(self) -> str:
        """The layer string form: `A` own attention map, `AR` a shared pair, `-` identity, `|` between stages."""
        code = {LAYER: "A", SHARED: "AR", IDENTITY: "-"}
        return " | ".join(" ".join(code[c] for c in stage) for stage in self.cells)

    def to_dict(self) -> dict[str, Any]:
        return {"family": FAMILY, "widths": list(self.widths), "tokens": list(self.tokens),
                "cells": [list(stage) for stage in self.cells]}

    @classmethod
    def from_dict(cls, obj: Any) -> PSViTConfig:
        """Our canonical form (`cells` per stage) or the layer string form (`layers`)."""
        if not isinstance(obj, dict):
            raise InvalidSubnetConfig(f"a subnet config must be a mapping, got {type(obj).__name__}")
        if obj.get("family", FAMILY) != FAMILY:
            raise InvalidSubnetConfig(f"config is for family {brief(obj.get('family'))}, not {FAMILY!r}; pass "
                                      f"--family or a {FAMILY} config")
        unknown = sorted(str(k) for k in set(obj) - {"family", "widths", "tokens", "cells", "layers"})
        if unknown:
            raise InvalidSubnetConfig(f"config has unknown keys {brief(unknown)}; a {FAMILY} config has widths, "
                                      "tokens and cells (or layers, the layer string)")
        if ("cells" in obj) == ("layers" in obj):
            raise InvalidSubnetConfig("give the cell choices once: cells (a list per stage) or layers (a string "
                                      "like \"A AR | - A | AR AR\")")
        missing = [k for k in ("widths", "tokens") if k not in obj]
        if missing:
            raise InvalidSubnetConfig(f"config lacks {', '.join(missing)}: give one width and one token count "
                                      "per stage")
        cells = obj["cells"] if "cells" in obj else parse_layers(obj["layers"])
        return cls(widths=obj["widths"], tokens=obj["tokens"], cells=cells)


def _stage_cells(value: Any, stage: int) -> tuple[str, ...]:
    cells = _list(value, f"cells[{stage}]", MAX_CELLS)
    for c, choice in enumerate(cells):
        if choice not in CHOICES:
            raise InvalidSubnetConfig(f"cells[{stage}][{c}] = {brief(choice)} is not a cell choice; choose one of "
                                      f"{', '.join(CHOICES)}")
    return tuple(cells)


def parse_layers(text: Any) -> list[list[str]]:
    """Cells per stage from the layer string (see the module doc); refuses an `R` with no `A` right before it in
    its own stage."""
    if not isinstance(text, str) or len(text) > MAX_STAGES * MAX_CELLS * 3:
        raise InvalidSubnetConfig(f"layers = {brief(text)} must be a string like \"A AR | - A | AR AR\"")
    stages: list[list[str]] = []
    for s, part in enumerate(text.split("|")):
        cells: list[str] = []
        for char in part.replace(" ", ""):
            if char == "A":
                cells.append(LAYER)
            elif char == "-":
                cells.append(IDENTITY)
            elif char == "R" and cells and cells[-1] == LAYER:
                cells[-1] = SHARED
            elif char == "R":
                raise InvalidSubnetConfig(_orphan_reuse(s, cells))
            else:
                raise InvalidSubnetConfig(f"layers: {brief(char)} in stage {s} is not A (own attention map), R "
                                          "(reuses the map of the A before it), - (identity) or | (next stage)")
        stages.append(cells)
    return stages


def _orphan_reuse(stage: int, cells: list[str]) -> str:
    if not cells and stage > 0:
        return (f"layers: stage {stage} opens with R, a layer reusing the attention map of the last layer of stage "
                f"{stage - 1}: a shared pair cannot cross a stage boundary (the token pooling between them changes "
                "the tokens the map is over); start the stage with A")
    return (f"layers: R at cell {len(cells)} of stage {stage} has no A right before it to share a map with; an R "
            "always follows its A (\"AR\" is one shared cell)")


@dataclass(frozen=True)
class PSViTSpace(CheckedSpace):
    """The choices of a PSViT space: per stage the widths and patch-token counts, the cells per stage and the cell
    choices, plus the input, the pooling form (1d: CLS token + Conv1d + MaxPool1d; 2d: no CLS, strided Conv2d)
    and the fixed sizes (head dim, MLP ratio)."""

    name: str
    pooling: str
    widths: tuple[tuple[int, ...], ...]
    tokens: tuple[tuple[int, ...], ...]
    cells: tuple[int, ...]
    choices: tuple[str, ...] = CHOICES
    head_dim: int = 64
    mlp_ratio: float = 4.0
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    increasing: bool = True  # the article's rule: widths rise and token counts fall from stage to stage
    family: ClassVar[str] = FAMILY

    def __post_init__(self) -> None:
        try:
            for name in ("widths", "tokens"):
                object.__setattr__(self, name, _stage_choices(getattr(self, name), name))
            object.__setattr__(self, "cells", tuple(_int(c, f"cells[{s}]") for s, c in enumerate(self.cells)))
            unknown = [c for c in self.choices if c not in CHOICES]
            if unknown or isinstance(self.choices, str):
                raise ValueError(f"choices {brief(self.choices)} must be a list of {', '.join(CHOICES)}")
            object.__setattr__(self, "choices", tuple(c for c in CHOICES if c in self.choices))
            if isinstance(self.mlp_ratio, bool) or not isinstance(self.mlp_ratio, (int, float)):
                raise ValueError(f"mlp_ratio {brief(self.mlp_ratio)} is not a number")
            object.__setattr__(self, "mlp_ratio", float(self.mlp_ratio))
        except (TypeError, ValueError) as err:
            raise InvalidSubnetConfig(f"space {self.name!r}: widths and tokens must be lists of integer lists, "
                                      f"cells a list of integers, choices cell choices ({err})") from None
        problems = self._problems()
        if problems:
            raise InvalidSubnetConfig(f"space {self.name!r} is not a {FAMILY} space: {'; '.join(problems)}")

    def _problems(self) -> list[str]:
        stages = len(self.cells)
        problems = [f"{n} = {brief(getattr(self, n))} is not a positive integer" for n in (
            "head_dim", "img_size", "patch_size", "in_chans", "num_classes")
            if not isinstance(getattr(self, n), int) or getattr(self, n) < 1]
        if problems:
            return problems
        if self.pooling not in POOLINGS:
            problems.append(f"pooling = {brief(self.pooling)} (choose 1d or 2d)")
        if not 1 <= stages <= MAX_STAGES or len(self.widths) != stages or len(self.tokens) != stages:
            problems.append(f"widths, tokens and cells must list the same 1 to {MAX_STAGES} stages")
        elif not all(self.widths) or not all(self.tokens) or not all(1 <= c <= MAX_CELLS for c in self.cells):
            problems.append("every stage needs a width, a token count and 1 to 256 cells")
        if not set(self.choices) - {IDENTITY}:
            problems.append(f"choices = {brief(self.choices)} leaves no choice with a layer")
        if not 0 < self.mlp_ratio < math.inf or self.img_size % self.patch_size:
            problems.append(f"mlp_ratio {self.mlp_ratio} must be finite and > 0 and img_size a multiple of patch_size")
        if not isinstance(self.increasing, bool):  # "no" would read as true
            problems.append(f"increasing = {brief(self.increasing)} must be true or false")
        return problems or self._size_problems()

    def _size_problems(self) -> list[str]:
        problems = [f"width {w} of stage {s} is not a multiple of head_dim {self.head_dim}"
                    for s, ws in enumerate(self.widths) for w in ws if w < 1 or w % self.head_dim]
        if self.tokens[0] != (self.num_patches,):
            problems.append(f"stage 0 holds every patch: tokens[0] must be [{self.num_patches}] "
                            f"(({self.img_size} / {self.patch_size})^2), not {list(self.tokens[0])}")
        for s in range(1, len(self.cells)):
            for n_in in self.tokens[s - 1]:
                bad = [n for n in self.tokens[s] if pool_stride(self.pooling, n_in, n) is None]
                if bad:
                    problems.append(f"{self.pooling} pooling cannot take {n_in} tokens to {bad} (stage {s})")
            if self.increasing and max(self.widths[s - 1]) >= min(self.widths[s]):
                problems.append(f"increasing: every width of stage {s} must exceed every width of stage {s - 1}")
            if self.increasing and min(self.tokens[s - 1]) <= max(self.tokens[s]):
                problems.append(f"increasing: every token count of stage {s} must be below those of stage {s - 1}")
        return problems

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def num_stages(self) -> int:
        return len(self.cells)

    # --- validation -----------------------------------------------------------------------------------------------
    def validate(self, cfg: Any) -> PSViTConfig:
        """`cfg` if it is a config of this space; else InvalidSubnetConfig naming the first bad field (structure
        first, then the increasing rule, then the allowed sizes)."""
        check_config_type(cfg, FAMILY, f"space {self.name!r}")
        if cfg.num_stages != self.num_stages:
            raise InvalidSubnetConfig(f"config has {cfg.num_stages} stages, space {self.name!r} has "
                                      f"{self.num_stages}; give one width, token count and cell list per stage")
        for s, (cells, n) in enumerate(zip(cfg.cells, self.cells)):
            if len(cells) != n:
                raise InvalidSubnetConfig(f"cells[{s}] has {len(cells)} cells, stage {s} of space {self.name!r} has "
                                          f"{n}; give one choice per cell")
            for c, choice in enumerate(cells):
                self._check_choice(f"cells[{s}][{c}]", choice, self.choices)
        if self.increasing:
            self._check_increasing(cfg)
        for s in range(self.num_stages):
            self._check_choice(f"widths[{s}]", cfg.widths[s], self.widths[s])
            self._check_choice(f"tokens[{s}]", cfg.tokens[s], self.tokens[s])
        return cfg

    def _check_increasing(self, cfg: PSViTConfig) -> None:
        for s in range(1, self.num_stages):
            if cfg.widths[s] <= cfg.widths[s - 1]:
                raise InvalidSubnetConfig(f"widths {list(cfg.widths)}: stage {s} ({cfg.widths[s]}) is not wider than "
                                          f"stage {s - 1} ({cfg.widths[s - 1]}); space {self.name!r} needs widths "
                                          "that increase from stage to stage")
            if cfg.tokens[s] >= cfg.tokens[s - 1]:
                raise InvalidSubnetConfig(f"tokens {list(cfg.tokens)}: stage {s} ({cfg.tokens[s]}) does not have "
                                          f"fewer tokens than stage {s - 1} ({cfg.tokens[s - 1]}); space "
                                          f"{self.name!r} needs token counts that fall from stage to stage")

    # --- sampling and evolution -----------------------------------------------------------------------------------
    def sample(self, rng: random.Random | None, kind: SampleKind = "random") -> PSViTConfig:
        if kind == "min":
            return self._smallest()
        if kind == "max":
            most = SHARED if SHARED in self.choices else LAYER
            return PSViTConfig(tuple(max(w) for w in self.widths), tuple(max(n) for n in self.tokens),
                               tuple((most,) * n for n in self.cells))
        if kind != "random":
            raise InvalidSubnetConfig(f"kind = {brief(kind)}: sample takes random, min or max")
        widths, tokens = [], []
        for s in range(self.num_stages):
            widths.append(rng.choice(self.widths[s]))
            tokens.append(rng.choice(self.tokens[s]))
        return PSViTConfig(tuple(widths), tuple(tokens), self._random_cells(rng))

    def _smallest(self) -> PSViTConfig:
        cheapest = next(c for c in (IDENTITY, LAYER, SHARED) if c in self.choices)
        cells = [[cheapest] * n for n in self.cells]
        if cheapest == IDENTITY:  # no layer left: one layer, where the tokens are fewest (the last stage)
            cells[-1][0] = next(c for c in (LAYER, SHARED) if c in self.choices)
        return PSViTConfig(tuple(min(w) for w in self.widths), tuple(min(n) for n in self.tokens),
                           tuple(tuple(c) for c in cells))

    def _random_cells(self, rng: random.Random) -> tuple[tuple[str, ...], ...]:
        """Uniform per cell, redrawn while every cell is identity (uniform over the networks with a layer)."""
        while True:
            cells = tuple(tuple(rng.choice(self.choices) for _ in range(n)) for n in self.cells)
            if any(c != IDENTITY for stage in cells for c in stage):
                return cells

    def mutate(self, cfg: PSViTConfig, rng: random.Random, m_prob: float = 0.2, s_prob: float = 0.4) -> PSViTConfig:
        """Per stage a new width and token count with probability `s_prob`, per cell a new choice with `m_prob`
        (redrawn while every cell would be identity)."""
        widths = tuple(rng.choice(self.widths[s]) if rng.random() < s_prob else w for s, w in enumerate(cfg.widths))
        tokens = tuple(rng.choice(self.tokens[s]) if rng.random() < s_prob else n for s, n in enumerate(cfg.tokens))
        while True:
            cells = tuple(tuple(rng.choice(self.choices) if rng.random() < m_prob else c for c in stage)
                          for stage in cfg.cells)
            if any(c != IDENTITY for stage in cells for c in stage):
                return PSViTConfig(widths, tokens, cells)

    def can_cross(self, a: PSViTConfig, b: PSViTConfig) -> bool:
        """Parents with the same stages and cells per stage (every two configs of one space)."""
        return [len(s) for s in a.cells] == [len(s) for s in b.cells]

    def crossover(self, a: PSViTConfig, b: PSViTConfig, rng: random.Random) -> PSViTConfig:
        """Uniform per gene: each stage's width and token count, and each cell, from one parent or the other (a
        child with no layer left is drawn again)."""
        if not self.can_cross(a, b):
            raise InvalidSubnetConfig(f"crossover needs parents with the same cells per stage, got "
                                      f"{[len(s) for s in a.cells]} and {[len(s) for s in b.cells]}")
        pick = lambda x, y: x if rng.random() < 0.5 else y  # noqa: E731
        widths = tuple(pick(x, y) for x, y in zip(a.widths, b.widths))
        tokens = tuple(pick(x, y) for x, y in zip(a.tokens, b.tokens))
        while True:
            cells = tuple(tuple(pick(x, y) for x, y in zip(p, q)) for p, q in zip(a.cells, b.cells))
            if any(c != IDENTITY for stage in cells for c in stage):
                return PSViTConfig(widths, tokens, cells)

    # --- serialization --------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {**d, "widths": [list(w) for w in self.widths], "tokens": [list(n) for n in self.tokens],
                "cells": list(self.cells), "choices": list(self.choices), "family": FAMILY}

    @classmethod
    def from_dict(cls, d: Any, name: str | None = None) -> PSViTSpace:
        return space_from_fields(cls, d, name, "psvit")


# Tiny spaces (timm-style test models: real code, small enough for the tests and the CPU demo): 32 px, 4 px patches
# (64 tokens), 10 classes, three stages of two cells, head dim 8, MLP ratio 2. The 1D one searches the token counts
# too (max-pooling strides 2 or 4, then 2 to 8); the 2D one pools with stride 2 (grid 8 -> 4 -> 2).
TINY = dict(cells=(2, 2, 2), head_dim=8, mlp_ratio=2.0, img_size=32, patch_size=4, num_classes=10)
SPACES.register("psvit-tiny-1d", PSViTSpace("psvit-tiny-1d", "1d", widths=((16, 24), (32, 40), (48, 64)),
                                            tokens=((64,), (32, 16), (8, 4)), **TINY))
SPACES.register("psvit-tiny-2d", PSViTSpace("psvit-tiny-2d", "2d", widths=((16, 24), (32, 40), (48, 64)),
                                            tokens=((64,), (16,), (4,)), **TINY))
# DeiT-tiny-like ImageNet spaces (224 px, 16 px patches, head dim 64, MLP ratio 4, 3 stages of 6 cells as in the
# article), stage 0 as wide as DeiT-tiny (192). Widths grow so that a layer costs about the same in every stage
# (tokens halve in 1D: width x ~1.4; quarter in 2D: width x 2), the article's "computation evenly distributed".
SPACES.register("psvit-1d", PSViTSpace("psvit-1d", "1d", widths=((192,), (256, 320), (384, 448)),
                                       tokens=((196,), (98,), (49,)), cells=(6, 6, 6)))
SPACES.register("psvit-2d", PSViTSpace("psvit-2d", "2d", widths=((192,), (320, 384), (640, 768)),
                                       tokens=((196,), (49,), (16,)), cells=(6, 6, 6)))

__all__ = ["CHOICES", "FAMILY", "IDENTITY", "LAYER", "POOLINGS", "PSViTConfig", "PSViTSpace", "SHARED",
           "parse_layers", "pool_stride"]
