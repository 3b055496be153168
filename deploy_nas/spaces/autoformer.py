"""AutoFormer search spaces and subnet configs (Cream `Vision_TransformerSuper`).

A subnet is one embed dim shared by all blocks, a depth (the first `depth` blocks of the supernet) and per-block
MLP ratios and head counts. Head dim is fixed by the supernet (64 in the official spaces), so Q = 64 * heads.
"""
from __future__ import annotations

import numbers
import random
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar, Literal

from ..errors import MAX_SIZE, InvalidSubnetConfig, brief, check_sizes, integral
from . import PRESETS, SPACES, CanonicalConfig, CheckedSpace, Preset, check_config_type, space_from_fields

FAMILY = "autoformer"


# Config values are bounded (0..MAX_SIZE) where they are read, so no size computed from them (int(E * ratio), Q =
# heads * head_dim) meets NaN, inf or an overflow; the space and the supernet check the real ranges.
def _ratio(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= MAX_SIZE:  # NaN fails too
        raise InvalidSubnetConfig(f"{where} = {brief(value)} is not a number in 0..{MAX_SIZE}; give MLP ratios as "
                                  "finite numbers like 3.5")
    return float(value)


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InvalidSubnetConfig(f"{where} = {brief(value)} is not an integer")
    if not 0 <= value <= MAX_SIZE:
        raise InvalidSubnetConfig(f"{where} = {brief(value)} is not an integer in 0..{MAX_SIZE}")
    return int(value)


@dataclass(frozen=True)
class AutoFormerConfig(CanonicalConfig):
    """One AutoFormer subnet. `mlp_ratio` and `num_heads` hold one entry per kept block."""

    depth: int
    embed_dim: int
    mlp_ratio: tuple[float, ...]
    num_heads: tuple[int, ...]
    family: ClassVar[str] = FAMILY

    def __post_init__(self) -> None:
        # Types and bounds here (see _ratio): the ranges are the space's and the supernet's to check.
        object.__setattr__(self, "depth", _int(self.depth, "depth"))
        object.__setattr__(self, "embed_dim", _int(self.embed_dim, "embed_dim"))
        object.__setattr__(self, "mlp_ratio", _list(vars(self), "mlp_ratio", _ratio))
        object.__setattr__(self, "num_heads", _list(vars(self), "num_heads", _int))
        for name in ("mlp_ratio", "num_heads"):
            if len(getattr(self, name)) != self.depth:
                raise InvalidSubnetConfig(
                    f"{name} has {len(getattr(self, name))} entries but depth is {self.depth}; give one per block")

    def hidden_dims(self) -> tuple[int, ...]:
        # The official code sizes fc1 as int(E * ratio) (truncation, not rounding).
        return tuple(int(self.embed_dim * r) for r in self.mlp_ratio)

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "depth": self.depth, "embed_dim": self.embed_dim,
                "mlp_ratio": list(self.mlp_ratio), "num_heads": list(self.num_heads)}

    def to_official(self) -> dict[str, Any]:
        """The dict `Vision_TransformerSuper.set_sample_config` takes."""
        return {"layer_num": self.depth, "embed_dim": [self.embed_dim] * self.depth,
                "mlp_ratio": list(self.mlp_ratio), "num_heads": list(self.num_heads)}

    @classmethod
    def from_dict(cls, obj: Any) -> AutoFormerConfig:
        """Read our canonical form, the official `set_sample_config` dict, or an official YAML (`RETRAIN`)."""
        if not isinstance(obj, dict):
            raise InvalidSubnetConfig(f"a subnet config must be a mapping, got {type(obj).__name__}")
        if "RETRAIN" in obj:
            return cls._from_yaml_section(obj["RETRAIN"])
        family = obj.get("family", FAMILY)
        if family != FAMILY:
            raise InvalidSubnetConfig(
                f"config is for family {brief(family)}, not {FAMILY!r}; pass --family or an {FAMILY} config")
        official = "layer_num" in obj  # the official `set_sample_config` dict
        keys = ("layer_num" if official else "depth", "embed_dim", "mlp_ratio", "num_heads")
        missing = [k for k in keys if k not in obj]
        unknown = sorted(set(obj) - {"family", *keys}, key=str)
        if missing:  # a misspelled key is both: name the one given with the one needed
            given = f" and has unknown keys {brief(unknown)}" if unknown else ""
            raise InvalidSubnetConfig(f"config lacks {', '.join(missing)}{given}; an {FAMILY} config needs "
                                      "depth, embed_dim, mlp_ratio and num_heads (or the official layer_num form)")
        if unknown:
            raise InvalidSubnetConfig(f"config has unknown keys {brief(unknown)}; remove them")
        if official:
            return cls._from_official(obj)
        return cls(depth=_depth(obj["depth"], "depth"), embed_dim=_int(obj["embed_dim"], "embed_dim"),
                   mlp_ratio=_list(obj, "mlp_ratio", _ratio), num_heads=_list(obj, "num_heads", _int))

    @classmethod
    def _from_official(cls, obj: dict[str, Any]) -> AutoFormerConfig:
        depth = _depth(obj["layer_num"], "layer_num")  # bounded before any list is built from it
        embed = obj.get("embed_dim")
        embeds = [_int(e, "embed_dim") for e in (embed if isinstance(embed, list) else [embed])]
        if isinstance(embed, list) and len(embeds) < depth or len(set(embeds[:depth])) != 1:
            raise InvalidSubnetConfig(f"embed_dim = {brief(embed)}: AutoFormer needs one embed dim repeated for "
                                      f"all {depth} layers")
        lists = {}
        for name, conv in (("mlp_ratio", _ratio), ("num_heads", _int)):
            values = _list(obj, name, conv)
            if len(values) < depth:
                raise InvalidSubnetConfig(f"{name} has {len(values)} entries but layer_num is {depth}")
            lists[name] = values[:depth]  # NNI pads these lists to the max depth; entries past layer_num are unused
        return cls(depth=depth, embed_dim=embeds[0], **lists)

    @classmethod
    def _from_yaml_section(cls, sec: Any) -> AutoFormerConfig:
        if not isinstance(sec, dict) or any(k not in sec for k in ("DEPTH", "EMBED_DIM", "MLP_RATIO", "NUM_HEADS")):
            raise InvalidSubnetConfig("RETRAIN section must have DEPTH, EMBED_DIM, MLP_RATIO and NUM_HEADS")
        return cls._from_official({"layer_num": sec["DEPTH"], "embed_dim": sec["EMBED_DIM"],
                                   "mlp_ratio": sec["MLP_RATIO"], "num_heads": sec["NUM_HEADS"]})


MAX_DEPTH = 1024  # deeper than any supernet: a larger depth is refused before anything is sized by it


def _depth(value: Any, where: str) -> int:
    depth = _int(value, where)
    if not 1 <= depth <= MAX_DEPTH:
        raise InvalidSubnetConfig(f"{where} = {brief(value)} is not a depth (1..{MAX_DEPTH})")
    return depth


def _list(obj: dict[str, Any], name: str, conv) -> tuple:
    values = obj.get(name)
    if not isinstance(values, (list, tuple)):
        raise InvalidSubnetConfig(f"{name} = {brief(values)} must be a list with one entry per block")
    return tuple(conv(v, f"{name}[{i}]") for i, v in enumerate(values))


SampleKind = Literal["random", "min", "max"]
# an official supernet YAML's keys -> (our field of its SEARCH_SPACE list, of its SUPERNET number)
OFFICIAL_YAML = {"EMBED_DIM": ("embed_dim", "super_embed_dim"), "NUM_HEADS": ("num_heads", "super_num_heads"),
                 "MLP_RATIO": ("mlp_ratio", "super_mlp_ratio"), "DEPTH": ("depth", "super_depth")}


@dataclass(frozen=True)
class AutoFormerSpace(CheckedSpace):
    """The choices per dimension, plus the super (maximum) sizes the supernet is built with."""

    name: str
    embed_dim: tuple[int, ...]
    num_heads: tuple[int, ...]
    mlp_ratio: tuple[float, ...]
    depth: tuple[int, ...]
    super_embed_dim: int
    super_num_heads: int
    super_depth: int
    super_mlp_ratio: float = 4.0
    head_dim: int = 64
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    max_relative_position: int = 14
    family: ClassVar[str] = FAMILY
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        owner, sizes = f"space {self.name!r}", {f.name: f.type for f in fields(self) if f.name not in ("name", "extra")}
        ints = {n: integral(getattr(self, n)) for n, kind in sizes.items() if "int" in str(kind)}  # int, tuple[int]
        check_sizes(owner, InvalidSubnetConfig, {"max_relative_position": 0}, integers=True, **ints)
        for name, value in ints.items():  # 192.0 or a numpy integer, as ints
            object.__setattr__(self, name, value)
        check_sizes(owner, InvalidSubnetConfig, {}, **{n: getattr(self, n) for n in sizes if n not in ints})
        if self.patch_size > self.img_size:
            raise InvalidSubnetConfig(f"space {self.name!r}: patch_size {self.patch_size} > img_size {self.img_size}")
        for value in self.depth:  # before a supernet or a sampled config is sized by them
            _depth(value, f"space {self.name!r}: depth")
        _depth(self.super_depth, f"space {self.name!r}: super_depth")
        for dim in ("embed_dim", "num_heads", "depth"):
            object.__setattr__(self, dim, tuple(sorted(getattr(self, dim))))
        object.__setattr__(self, "mlp_ratio", tuple(sorted(float(v) for v in self.mlp_ratio)))
        problems = []
        if max(self.embed_dim) > self.super_embed_dim:
            problems.append(f"embed_dim {max(self.embed_dim)} > super {self.super_embed_dim}")
        if max(self.num_heads) * self.head_dim > self.super_embed_dim:
            problems.append(f"{max(self.num_heads)} heads x {self.head_dim} > super embed {self.super_embed_dim}")
        if max(self.depth) > self.super_depth:
            problems.append(f"depth {max(self.depth)} > super depth {self.super_depth}")
        if int(max(self.embed_dim) * max(self.mlp_ratio)) > int(self.super_embed_dim * self.super_mlp_ratio):
            problems.append("largest MLP hidden width exceeds the supernet's")
        if problems:
            raise InvalidSubnetConfig(f"space {self.name!r} does not fit its supernet: {'; '.join(problems)}")

    # --- validation -------------------------------------------------------------------------------------------
    def validate(self, cfg: Any) -> AutoFormerConfig:
        """Return `cfg` as an AutoFormerConfig if every value is an allowed choice; raise naming the first bad one."""
        check_config_type(cfg, FAMILY, f"space {self.name!r}")
        self._check_choice("depth", cfg.depth, self.depth)
        self._check_choice("embed_dim", cfg.embed_dim, self.embed_dim)
        for i, (r, h) in enumerate(zip(cfg.mlp_ratio, cfg.num_heads)):
            self._check_choice(f"mlp_ratio[{i}]", r, self.mlp_ratio)
            self._check_choice(f"num_heads[{i}]", h, self.num_heads)
        return cfg

    # --- sampling and evolution operators ---------------------------------------------------------------------
    def sample(self, rng: random.Random, kind: SampleKind = "random") -> AutoFormerConfig:
        if kind in ("min", "max"):
            pick = min if kind == "min" else max
            d = pick(self.depth)
            return AutoFormerConfig(d, pick(self.embed_dim), (pick(self.mlp_ratio),) * d, (pick(self.num_heads),) * d)
        if kind != "random":
            raise InvalidSubnetConfig(f"kind = {brief(kind)}: sample takes random, min or max")
        # Same draw order as the official sampler: depth, then per-layer ratio/heads, then one embed dim.
        d = rng.choice(self.depth)
        ratios = tuple(rng.choice(self.mlp_ratio) for _ in range(d))
        heads = tuple(rng.choice(self.num_heads) for _ in range(d))
        return AutoFormerConfig(d, rng.choice(self.embed_dim), ratios, heads)

    def mutate(self, cfg: AutoFormerConfig, rng: random.Random, m_prob: float = 0.2,
               s_prob: float = 0.4) -> AutoFormerConfig:
        """AutoFormer's mutation: depth first (grow with random genes or truncate), per-layer flips, then embed."""
        ratios, heads, depth = list(cfg.mlp_ratio), list(cfg.num_heads), cfg.depth
        if rng.random() < s_prob:
            depth = rng.choice(self.depth)
            while len(ratios) < depth:
                ratios.append(rng.choice(self.mlp_ratio))
                heads.append(rng.choice(self.num_heads))
            ratios, heads = ratios[:depth], heads[:depth]
        for i in range(depth):
            if rng.random() < m_prob:
                ratios[i] = rng.choice(self.mlp_ratio)
            if rng.random() < m_prob:
                heads[i] = rng.choice(self.num_heads)
        embed = rng.choice(self.embed_dim) if rng.random() < s_prob else cfg.embed_dim
        return AutoFormerConfig(depth, embed, tuple(ratios), tuple(heads))

    def can_cross(self, a: AutoFormerConfig, b: AutoFormerConfig) -> bool:
        """The official search crosses only parents of equal depth (equal-length gene tuples)."""
        return a.depth == b.depth

    def crossover(self, a: AutoFormerConfig, b: AutoFormerConfig, rng: random.Random) -> AutoFormerConfig:
        """Uniform per-gene crossover; parents must have equal depth (as in the official search)."""
        if not self.can_cross(a, b):
            raise InvalidSubnetConfig(f"crossover needs parents of equal depth, got {a.depth} and {b.depth}")
        pick = lambda x, y: x if rng.random() < 0.5 else y  # noqa: E731
        return AutoFormerConfig(a.depth, pick(a.embed_dim, b.embed_dim),
                                tuple(pick(x, y) for x, y in zip(a.mlp_ratio, b.mlp_ratio)),
                                tuple(pick(x, y) for x, y in zip(a.num_heads, b.num_heads)))

    # --- official formats -------------------------------------------------------------------------------------
    def config_from_official(self, obj: Any) -> AutoFormerConfig:
        """A config from the official dict or YAML form, validated against this space."""
        return self.validate(AutoFormerConfig.from_dict(obj))

    @classmethod
    def from_official_yaml(cls, obj: dict[str, Any], name: str, **sizes: Any) -> AutoFormerSpace:
        """A space from the `SUPERNET` (one number per key) and `SEARCH_SPACE` (a list of choices per key) sections
        of an official YAML file, each value checked under the name the file gives it."""
        values: dict[str, Any] = {}
        for section, choices in (("SUPERNET", False), ("SEARCH_SPACE", True)):
            sec = obj.get(section)
            missing = [f"{section}.{k}" for k in OFFICIAL_YAML if not isinstance(sec, dict) or k not in sec]
            if missing:
                raise InvalidSubnetConfig(f"not an AutoFormer supernet YAML (needs SUPERNET and SEARCH_SPACE with "
                                          f"EMBED_DIM, NUM_HEADS, MLP_RATIO, DEPTH): missing {', '.join(missing)}")
            wrong = [f"{k} = {brief(sec[k])}" for k in OFFICIAL_YAML if isinstance(sec[k], list) != choices]
            if wrong:
                raise InvalidSubnetConfig(f"supernet YAML {section}: {'; '.join(wrong)} must be "
                                          f"{'a list of choices, e.g. [192, 216, 240]' if choices else 'one number'}")
            check_sizes(f"supernet YAML {section}", InvalidSubnetConfig, {}, integers=True,
                        **{k: integral(sec[k]) for k in OFFICIAL_YAML if k != "MLP_RATIO"})
            check_sizes(f"supernet YAML {section}", InvalidSubnetConfig, {}, MLP_RATIO=sec["MLP_RATIO"])
            for key, (field_name, super_name) in OFFICIAL_YAML.items():
                values[field_name if choices else super_name] = tuple(sec[key]) if choices else sec[key]
        return cls(name=name, **values, **sizes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        d["family"] = FAMILY
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], name: str | None = None) -> AutoFormerSpace:
        """Our JSON form, or an official supernet YAML (`SUPERNET` + `SEARCH_SPACE` sections)."""
        if isinstance(d, dict) and "SUPERNET" in d:
            return cls.from_official_yaml(d, name=name or "official")
        return space_from_fields(cls, d, name, "space")

    def narrowed(self, factor: int, name: str | None = None, **sizes: Any) -> AutoFormerSpace:
        """The same choices with every width divided by `factor` (for fast tests of the S/B structure)."""
        return replace(self, name=name or f"{self.name}/{factor}",
                       embed_dim=tuple(e // factor for e in self.embed_dim),
                       super_embed_dim=self.super_embed_dim // factor, head_dim=self.head_dim // factor, **sizes)


# The official spaces (Cream AutoFormer experiments/supernet/supernet-{T,S,B}.yaml). Two documented widenings, so
# that the published subnets validate against the space they were searched in:
#  * T adds MLP ratio 3.0: the published AutoFormer-T uses it although supernet-T.yaml lists only 3.5/4
#    (NNI's tiny preset also allows 3.0; the supernet's fc1 of width 4E holds 3.0 as a prefix).
#  * B adds 8 heads, as listed in experiments/subnet/AutoFormer-B.yaml.
SPACES.register("autoformer-T", AutoFormerSpace(
    "autoformer-T", embed_dim=(192, 216, 240), num_heads=(3, 4), mlp_ratio=(3.0, 3.5, 4.0), depth=(12, 13, 14),
    super_embed_dim=256, super_num_heads=4, super_depth=14))
SPACES.register("autoformer-S", AutoFormerSpace(
    "autoformer-S", embed_dim=(320, 384, 448), num_heads=(5, 6, 7), mlp_ratio=(3.0, 3.5, 4.0), depth=(12, 13, 14),
    super_embed_dim=448, super_num_heads=7, super_depth=14))
SPACES.register("autoformer-B", AutoFormerSpace(
    "autoformer-B", embed_dim=(528, 576, 624), num_heads=(8, 9, 10), mlp_ratio=(3.0, 3.5, 4.0), depth=(14, 15, 16),
    super_embed_dim=640, super_num_heads=10, super_depth=16))
# A tiny registered space (timm-style test model): real code, small enough for fast tests.
SPACES.register("autoformer-tiny", AutoFormerSpace(
    "autoformer-tiny", embed_dim=(48, 64), num_heads=(2, 3, 4), mlp_ratio=(2.0, 3.0, 4.0), depth=(2, 3, 4),
    super_embed_dim=64, super_num_heads=4, super_depth=4, head_dim=16, img_size=32, patch_size=8,
    num_classes=10, max_relative_position=2))
# The space of the embedded default supernet and the demo: the embedded task at 48 px, 37 tokens. Its subnets
# span 7-49 MMAC, about 4-5x in OpenVINO latency on one core, and train in the time `make default-supernet` allows.
SPACES.register("autoformer-demo", AutoFormerSpace(
    "autoformer-demo", embed_dim=(64, 96, 128), num_heads=(2, 3, 4), mlp_ratio=(2.0, 3.0, 4.0), depth=(4, 5, 6),
    super_embed_dim=128, super_num_heads=4, super_depth=6, head_dim=32, img_size=48, patch_size=8,
    num_classes=10, max_relative_position=3))

# Published searched subnets (experiments/subnet/AutoFormer-{T,S,B}.yaml, RETRAIN sections).
PRESETS.register("autoformer-t", Preset(AutoFormerConfig(
    13, 192, (3.5, 3.5, 3.0, 3.5, 3.0, 3.0, 4.0, 4.0, 3.5, 4.0, 3.5, 4.0, 3.5), (3,) * 10 + (4, 3, 3)), "autoformer-T"))
PRESETS.register("autoformer-s", Preset(AutoFormerConfig(
    13, 384, (3.0, 3.5, 3.0, 3.5, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 3.5, 4.0),
    (6, 6, 5, 7, 5, 5, 5, 6, 6, 7, 7, 6, 7)), "autoformer-S"))
PRESETS.register("autoformer-b", Preset(AutoFormerConfig(
    14, 576, (3.5, 3.5, 4.0, 3.5, 4.0, 3.5, 3.5, 3.0, 4.0, 4.0, 3.0, 4.0, 3.0, 3.5),
    (9, 9, 9, 9, 9, 10, 9, 9, 10, 9, 10, 9, 9, 10)), "autoformer-B"))
