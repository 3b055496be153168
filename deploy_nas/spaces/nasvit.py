"""NASViT search spaces and subnet configs (facebookresearch/NASViT, `misc/config.py::supernet_config`).

A subnet is the official `sample_active_subnet` dict: one input resolution, and per stage one value of each
dimension: `width[9]` (first_conv, mb1..mb7, last_conv), `depth[7]`, `kernel_size[7]` and `expand_ratio[7]`
(mb1..mb7). Stages mb4..mb7 start with one MBConv and continue with `depth - 1` transformer blocks; their width,
kernel and expand ratio act on that MBConv, whose output width the transformer blocks inherit.

A space also carries the layout facts the official code fixes per stage (stride, squeeze-excite, which stages hold
transformer blocks, the head's expansion, the relative-position window), so that the tiny test space can shrink
the strides while the official space keeps the official values. The supernet is built from the space alone.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

from ..errors import InvalidSubnetConfig, brief, integral
from . import SPACES, CanonicalConfig, CheckedSpace, check_config_type, space_from_fields

FAMILY = "nasvit"
WIDTH_STAGES = ("first_conv", "mb1", "mb2", "mb3", "mb4", "mb5", "mb6", "mb7", "last_conv")
MB_STAGES = WIDTH_STAGES[1:-1]
GENES = ("width", "depth", "kernel_size", "expand_ratio")
HEAD_DIM = 8  # the official attention fixes 8 channels per head (heads = C / 8)
RESCALE_DEPTHS, RESCALE_SLOTS = 10, 8  # the (10, 8, C) switchable-scaling tables: [stage depth, L % 8, :C]
LIMITS = {"width": 1 << 14, "depth": 64, "kernel_size": 15, "expand_ratio": 16, "resolution": 2048}
# keys of official dicts besides the config: sample_active_subnet(compute_flops=True) adds "flops"
OFFICIAL_EXTRAS = ("flops",)
SampleKind = Literal["random", "min", "max"]


def make_divisible(v: float, divisor: int = 8, min_value: int = 1) -> int:
    """The official rounding of channel counts (MobileNet's): nearest multiple of `divisor`, at least `min_value`,
    never more than 10% below `v`."""
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _int(value: Any, where: str) -> int:
    value = integral(value)  # 16.0 or a numpy integer as 16
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSubnetConfig(f"{where} = {brief(value)} is not an integer")
    return value


def _ints(obj: Any, name: str, length: int) -> tuple[int, ...]:
    values = obj.get(name)
    if not isinstance(values, (list, tuple)) or len(values) != length:
        raise InvalidSubnetConfig(f"{name} = {brief(values)} must be a list of {length} integers "
                                  f"({'; '.join(WIDTH_STAGES if name == 'width' else MB_STAGES)})")
    return tuple(_int(v, f"{name}[{i}]") for i, v in enumerate(values))


@dataclass(frozen=True)
class NASViTConfig(CanonicalConfig):
    """One NASViT subnet, as the official `sample_active_subnet` dict."""

    resolution: int
    width: tuple[int, ...]
    depth: tuple[int, ...]
    kernel_size: tuple[int, ...]
    expand_ratio: tuple[int, ...]
    family: ClassVar[str] = FAMILY

    def __post_init__(self) -> None:
        for name, n in (("width", 9), ("depth", 7), ("kernel_size", 7), ("expand_ratio", 7)):
            object.__setattr__(self, name, _ints({name: list(getattr(self, name))}, name, n))
        object.__setattr__(self, "resolution", _int(self.resolution, "resolution"))

    def to_official(self) -> dict[str, Any]:
        """The dict `set_active_subnet(**cfg)` / `sample_active_subnet` use."""
        return {"resolution": self.resolution, **{g: list(getattr(self, g)) for g in GENES}}

    def to_dict(self) -> dict[str, Any]:
        return {"family": FAMILY, **self.to_official()}

    @classmethod
    def from_dict(cls, obj: Any) -> NASViTConfig:
        """Our canonical form or the official dict (the same keys without "family"; an official "flops" entry is
        ignored)."""
        if not isinstance(obj, dict):
            raise InvalidSubnetConfig(f"a subnet config must be a mapping, got {type(obj).__name__}")
        if obj.get("family", FAMILY) != FAMILY:
            raise InvalidSubnetConfig(f"config is for family {brief(obj.get('family'))}, not {FAMILY!r}; pass "
                                      f"--family or a {FAMILY} config")
        known = {"family", "resolution", *GENES, *OFFICIAL_EXTRAS}
        unknown = sorted(str(k) for k in set(obj) - known)
        missing = [k for k in ("resolution", *GENES) if k not in obj]
        if unknown or missing:
            raise InvalidSubnetConfig(f"config {'has unknown keys ' + brief(unknown) if unknown else ''}"
                                      f"{'; ' if unknown and missing else ''}"
                                      f"{'lacks ' + ', '.join(missing) if missing else ''}; a {FAMILY} config "
                                      "has resolution, width[9], depth[7], kernel_size[7] and expand_ratio[7]")
        return cls(resolution=obj["resolution"], width=_ints(obj, "width", 9), depth=_ints(obj, "depth", 7),
                   kernel_size=_ints(obj, "kernel_size", 7), expand_ratio=_ints(obj, "expand_ratio", 7))


def _choices(values: Any, where: str, limit: int) -> tuple[int, ...]:
    if not isinstance(values, (list, tuple)) or not values:
        raise InvalidSubnetConfig(f"{where} = {brief(values)} must be a non-empty list of choices")
    out = tuple(sorted({_int(v, where) for v in values}))
    if not 1 <= out[0] <= out[-1] <= limit:
        raise InvalidSubnetConfig(f"{where} = {brief(values)}: choices must lie in 1..{limit}")
    return out


def _per_stage(values: Any, name: str, stages: tuple[str, ...]) -> tuple[tuple[int, ...], ...]:
    if not isinstance(values, (list, tuple)) or len(values) != len(stages):
        raise InvalidSubnetConfig(f"{name} needs one list of choices per stage ({', '.join(stages)}), got "
                                  f"{brief(values)}")
    return tuple(_choices(v, f"{name}[{i}] ({s})", LIMITS[name]) for i, (v, s) in enumerate(zip(values, stages)))


@dataclass(frozen=True)
class NASViTSpace(CheckedSpace):
    """The choices per stage plus the layout facts of the official `supernet_config`.

    `stride`: first_conv and mb1..mb7; `se`, `transformer`: mb1..mb7; `head_expand`: the v3 head's expansion of
    the mb7 width; `window`: the side of the relative-position window (18: the largest token grid, mb4 at 288 px);
    `img_size`: the input the supernet (and calibration data) gets, resized inside to each subnet's resolution."""

    name: str
    resolution: tuple[int, ...]
    width: tuple[tuple[int, ...], ...]
    depth: tuple[tuple[int, ...], ...]
    kernel_size: tuple[tuple[int, ...], ...]
    expand_ratio: tuple[tuple[int, ...], ...]
    stride: tuple[int, ...] = (2, 1, 2, 2, 2, 2, 1, 2)
    se: tuple[bool, ...] = (False, False, True, False, True, True, True)
    transformer: tuple[bool, ...] = (False, False, False, True, True, True, True)
    head_expand: int = 6
    window: int = 18
    img_size: int = 224
    in_chans: int = 3
    num_classes: int = 1000
    family: ClassVar[str] = FAMILY

    def __post_init__(self) -> None:
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        put("resolution", _choices(self.resolution, "resolution", LIMITS["resolution"]))
        put("width", _per_stage(self.width, "width", WIDTH_STAGES))
        for gene in GENES[1:]:
            put(gene, _per_stage(getattr(self, gene), gene, MB_STAGES))
        put("stride", self._flags("stride", self.stride, 8, int))
        put("se", self._flags("se", self.se, 7, bool))
        put("transformer", self._flags("transformer", self.transformer, 7, bool))
        for name in ("head_expand", "window", "img_size", "in_chans", "num_classes"):
            put(name, _int(getattr(self, name), name))
        problems = self._problems()
        if problems:
            raise InvalidSubnetConfig(f"space {self.name!r} is not a NASViT space: {'; '.join(problems[:4])}")

    @staticmethod
    def _flags(name: str, values: Any, n: int, kind: type) -> tuple:
        if not isinstance(values, (list, tuple)) or len(values) != n \
                or not all(isinstance(v, kind) and not (kind is int and isinstance(v, bool)) for v in values):
            raise InvalidSubnetConfig(f"{name} = {brief(values)} must be {n} {kind.__name__} values")
        return tuple(values)

    # --- the layout the choices imply -------------------------------------------------------------------------
    def _problems(self) -> list[str]:
        out = [f"stride {s} of {n} is not 1 or 2" for s, n in zip(self.stride, WIDTH_STAGES[:-1]) if s not in (1, 2)]
        out += [f"{n} kernel sizes {k} are not all odd" for n, k in zip(MB_STAGES, self.kernel_size)
                if any(v % 2 == 0 for v in k)]
        for i in (i for i, t in enumerate(self.transformer) if t):
            if any(w % HEAD_DIM for w in self.width[i + 1]):
                out.append(f"{MB_STAGES[i]} widths {self.width[i + 1]} are not multiples of the head dim 8")
            if max(self.depth[i]) >= RESCALE_DEPTHS:
                out.append(f"{MB_STAGES[i]} depth {max(self.depth[i])} >= {RESCALE_DEPTHS} (the rescale tables)")
        grid = max((self.grid(max(self.resolution), i) for i, t in enumerate(self.transformer) if t), default=1)
        if grid > self.window:
            out.append(f"window {self.window} is smaller than the largest token grid {grid}")
        if not 1 <= self.head_expand <= 16 or not 1 <= self.img_size <= LIMITS["resolution"] \
                or not 1 <= self.in_chans <= 16 or not 1 <= self.num_classes <= 100_000:
            out.append("head_expand, img_size, in_chans or num_classes out of range")
        return out + self._width_problems()

    def _width_problems(self) -> list[str]:
        """Every sampled middle / squeeze-excite width must fit inside the supernet's (the official code slices
        prefixes of tensors allocated for the largest choices): per MBConv, from the widths it can take as input
        (the previous stage's for the first block of a stage, its own after)."""
        out = []
        for i, name in enumerate(MB_STAGES):
            for inputs in (self.width[i], self.width[i + 1]):
                widest = round(max(inputs) * max(self.expand_ratio[i]))
                mids = {self.middle(c, t, i) for c in inputs for t in self.expand_ratio[i]}
                if max(mids) > widest or (self.se[i] and max(make_divisible(m // 4) for m in mids)
                                          > make_divisible(widest // 4)):
                    out.append(f"{name}: a middle or squeeze-excite width exceeds the supernet's (inputs {inputs}, "
                               f"expand ratios {self.expand_ratio[i]})")
        return out

    def middle(self, c_in: int, t: int, stage: int) -> int:
        """The MBConv middle width: the input itself without an expansion conv, else make_divisible(c_in * t, 8)."""
        return c_in if max(self.expand_ratio[stage]) == 1 else make_divisible(round(c_in * t), 8)

    def grid(self, resolution: int, stage: int) -> int:
        """The side of the feature map stage `stage` (0 = mb1) outputs at `resolution` (3x3 convs, padding 1)."""
        side = resolution
        for s in self.stride[:stage + 2]:
            side = (side - 1) // s + 1
        return side

    # --- validation, sampling, evolution ------------------------------------------------------------------------
    def validate(self, cfg: Any) -> NASViTConfig:
        """`cfg` if every value is an allowed choice; else InvalidSubnetConfig naming the field, value and set."""
        check_config_type(cfg, FAMILY, f"space {self.name!r}")
        self._check_choice("resolution", cfg.resolution, self.resolution)
        for gene in GENES:
            stages = WIDTH_STAGES if gene == "width" else MB_STAGES
            for i, (value, allowed) in enumerate(zip(getattr(cfg, gene), getattr(self, gene))):
                self._check_choice(f"{gene}[{i}] ({stages[i]})", value, allowed)
        return cfg

    def sample(self, rng: random.Random | None, kind: SampleKind = "random") -> NASViTConfig:
        """min / max / uniform per entry, in the official draw order (resolution, then width, depth, kernel_size,
        expand_ratio stage by stage)."""
        if kind == "random":
            rng = rng or random.Random()
            resolution = rng.choice(self.resolution)
            return NASViTConfig(resolution, **{g: tuple(rng.choice(c) for c in getattr(self, g)) for g in GENES})
        if kind not in ("min", "max"):
            raise InvalidSubnetConfig(f"kind = {brief(kind)}: sample takes random, min or max")
        pick = min if kind == "min" else max
        return NASViTConfig(pick(self.resolution), **{g: tuple(pick(c) for c in getattr(self, g)) for g in GENES})

    def mutate(self, cfg: NASViTConfig, rng: random.Random, m_prob: float = 0.1, s_prob: float = 0.1
               ) -> NASViTConfig:
        """The official `mutate_and_reset`: each entry, with probability `m_prob` (the resolution with `s_prob`),
        becomes a different choice of its stage. With m_prob == s_prob == p this is mutate_and_reset(prob=p)."""
        other = lambda v, choices: v if len(choices) == 1 else rng.choice([c for c in choices if c != v])  # noqa
        resolution = other(cfg.resolution, self.resolution) if rng.random() < s_prob else cfg.resolution
        genes = {g: tuple(other(v, c) if rng.random() < m_prob else v for v, c in zip(getattr(cfg, g),
                                                                                        getattr(self, g)))
                 for g in GENES}
        return NASViTConfig(resolution=resolution, **genes)

    def can_cross(self, a: NASViTConfig, b: NASViTConfig) -> bool:
        """Any two NASViT configs cross: every config has the same genes."""
        return a.family == b.family == FAMILY

    def crossover(self, a: NASViTConfig, b: NASViTConfig, rng: random.Random) -> NASViTConfig:
        """The official `crossover_and_reset(p=0.5)`: each entry (the resolution too) from either parent."""
        pick = lambda x, y: x if rng.random() < 0.5 else y  # noqa: E731
        resolution = pick(a.resolution, b.resolution)
        genes = {g: tuple(pick(x, y) for x, y in zip(getattr(a, g), getattr(b, g))) for g in GENES}
        return NASViTConfig(resolution=resolution, **genes)

    # --- formats ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d = {k: [list(v) if isinstance(v, tuple) else v for v in val] if isinstance(val, tuple) else val
             for k, val in d.items()}
        return {"family": FAMILY, **d}

    @classmethod
    def from_dict(cls, d: Any, name: str | None = None) -> NASViTSpace:
        """Our JSON form, or the official `supernet_config` section (first_conv, mb1..mb7, last_conv with c, d, k, t,
        s, se; resolutions)."""
        if isinstance(d, dict) and "mb1" in d:
            return cls.from_official(d, name=name or "official")
        return space_from_fields(cls, d, name, "nasvit")

    @classmethod
    def from_official(cls, cfg: dict[str, Any], name: str = "official", **sizes: Any) -> NASViTSpace:
        """A space from the official `supernet_config` (misc/config.py) as a mapping."""
        try:
            stages = [cfg[s] for s in MB_STAGES]
            return cls(name=name, resolution=tuple(cfg["resolutions"]),
                       width=tuple(cfg[s]["c"] for s in WIDTH_STAGES), depth=tuple(s["d"] for s in stages),
                       kernel_size=tuple(s["k"] for s in stages), expand_ratio=tuple(s["t"] for s in stages),
                       stride=(cfg["first_conv"]["s"], *(s["s"] for s in stages)),
                       se=tuple(bool(s["se"]) for s in stages), **sizes)
        except (KeyError, TypeError) as err:
            raise InvalidSubnetConfig(f"not a NASViT supernet_config (needs resolutions, first_conv.c/s, mb1..mb7 "
                                      f"with c, d, k, t, s, se, and last_conv.c): missing {brief(str(err))}") from None


# The official space: misc/config.py::supernet_config (use_v3_head, swish everywhere). The supernet takes the 224 px
# evaluation crop and resizes it to each subnet's resolution inside, as the official models do.
SPACES.register("nasvit", NASViTSpace(
    "nasvit", resolution=(192, 224, 256, 288),
    width=((16, 24), (16, 24), (24, 32), (32, 40), (64, 72), (112, 120, 128), (160, 168, 176, 184),
           (208, 216, 224), (1792, 1984)),
    depth=((1, 2), (3, 4, 5), (3, 4, 5, 6), (3, 4, 5, 6), (3, 4, 5, 6, 7, 8, 9), (3, 4, 5, 6, 7, 8), (3, 4, 5, 6)),
    kernel_size=((3, 5), (3, 5), (3,), (3,), (3,), (3,), (3,)),
    expand_ratio=((1,), (4, 5, 6), (4, 5, 6), (4, 5, 6), (4, 5, 6), (6,), (6,))))

# A tiny space for tests, CPU training and the benchmarks: the official layout (MBConv stages, transformer stages
# led by one MBConv, SE where the official space has it, the v3 head) at small widths and depths, 32-48 px, 10
# classes. Strides 2,1,2,1,2,1,1,2 (total 16) keep token grids of 4-6 (36, 25 or 16 tokens) in mb4..mb6 and 2-3 in
# mb7; 40 px gives odd maps (5 -> 3) for the padded average-pool shortcut.
SPACES.register("nasvit-tiny", NASViTSpace(
    "nasvit-tiny", resolution=(32, 40, 48),
    width=((8, 16), (8, 16), (16, 24), (24, 32), (32, 40), (40, 48), (48, 56), (56, 64), (64, 96)),
    depth=((1, 2), (1, 2), (1, 2), (2, 3), (2, 3), (2, 3), (2, 3)),
    kernel_size=((3, 5), (3, 5), (3,), (3,), (3,), (3,), (3,)),
    expand_ratio=((1,), (2, 3), (2, 3), (2, 3), (2, 3), (3,), (3,)),
    stride=(2, 1, 2, 1, 2, 1, 1, 2), window=6, img_size=48, num_classes=10))
