"""S3 (Searching the Search Space of Vision Transformer, Chen et al., NeurIPS 2021) configs and spaces.

An S3 network is a hierarchical window-attention transformer (Swin-like, 4 stages in the paper; any number here):
per stage a depth and an embed (residual) width, per block an MLP ratio, a head count, a Q-K-V width (which may be
smaller or larger than the embed width; head dim = Q / heads) and a window size. A window at least as large as the
stage's map means global attention (the official code clips it to the map and does not shift).

A space gives the choices of every dimension per stage; the per-block dimensions (MLP ratio, heads, Q-K-V, window)
draw each block's value from their stage's choices, as AutoFormer draws its per-layer ratios and heads.

Official form: the Cream AutoFormerV2 YAML files (`DEPTHS`, `EMBED_DIM`, and per stage per block `NUM_HEADS`,
`WINDOW_SIZE`, `MLP_RATIO`). Only the first `depth` entries of a per-block list count (S3-T.yaml lists 8 for a depth
of 6); a scalar stands for every block of its stage. The official models hard-code a head dim of 32, so Q = 32 x
heads, which their forward pass needs to equal the width.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar, Literal

from ..errors import InvalidSubnetConfig, brief, integral
from . import PRESETS, SPACES, CanonicalConfig, CheckedSpace, Preset, check_config_type, space_from_fields

FAMILY = "s3"
OFFICIAL_HEAD_DIM = 32
BLOCK_DIMS = ("mlp_ratio", "num_heads", "qkv_dim", "window_size")
DIMENSIONS = ("depth", "embed_dim", *BLOCK_DIMS)
OFFICIAL_KEYS = ("DEPTHS", "EMBED_DIM", "NUM_HEADS", "WINDOW_SIZE", "MLP_RATIO")
MAX_DEPTH = 1024  # per stage: larger is refused before anything is sized by it
MAX_WIDTH = 1 << 16
SampleKind = Literal["random", "min", "max"]


def _int(value: Any, where: str, low: int = 1, high: int = MAX_WIDTH) -> int:
    value = integral(value)  # 16.0 or a numpy integer as 16
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidSubnetConfig(f"{where} = {brief(value)} is not an integer in {low}..{high}")
    return value


def _ratio(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 < value <= 64:
        raise InvalidSubnetConfig(f"{where} = {brief(value)} is not an MLP ratio (a number in (0, 64], e.g. 4.0)")
    return float(value)


def _seq(value: Any, where: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise InvalidSubnetConfig(f"{where} = {brief(value)} must be a list")
    return list(value)


def _where(name: str, s: int, b: int | None = None) -> str:
    return f"{name}[{s}]" + (f"[{b}] (stage {s + 1}, block {b + 1})" if b is not None else f" (stage {s + 1})")


CONVERT = {"mlp_ratio": _ratio, "num_heads": _int, "qkv_dim": _int, "window_size": _int}


# ------------------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class S3Config(CanonicalConfig):
    """One S3 network: per stage a depth and a width, per stage per block the `BLOCK_DIMS`."""

    depths: tuple[int, ...]
    embed_dim: tuple[int, ...]
    mlp_ratio: tuple[tuple[float, ...], ...]
    num_heads: tuple[tuple[int, ...], ...]
    qkv_dim: tuple[tuple[int, ...], ...]
    window_size: tuple[tuple[int, ...], ...]
    family: ClassVar[str] = FAMILY

    def __post_init__(self) -> None:
        depths = tuple(_int(d, _where("depths", s), 1, MAX_DEPTH) for s, d in enumerate(_seq(self.depths, "depths")))
        if not depths:
            raise InvalidSubnetConfig("depths is empty: an S3 network has at least one stage")
        object.__setattr__(self, "depths", depths)
        embed = _seq(self.embed_dim, "embed_dim")
        if len(embed) != len(depths):
            raise InvalidSubnetConfig(f"embed_dim has {len(embed)} stages but depths has {len(depths)}")
        object.__setattr__(self, "embed_dim", tuple(_int(e, _where("embed_dim", s)) for s, e in enumerate(embed)))
        for name, conv in CONVERT.items():
            object.__setattr__(self, name, self._per_block(name, getattr(self, name), conv))
        for s, (heads, qkv) in enumerate(zip(self.num_heads, self.qkv_dim)):
            for b, (h, q) in enumerate(zip(heads, qkv)):
                if q % h:
                    raise InvalidSubnetConfig(f"{_where('qkv_dim', s, b)} = {q} is not a multiple of its {h} heads "
                                              "(head dim = Q-K-V width / heads)")

    def _per_block(self, name: str, value: Any, conv: Any) -> tuple:
        stages = _seq(value, name)
        if len(stages) != len(self.depths):
            raise InvalidSubnetConfig(f"{name} has {len(stages)} stages but depths has {len(self.depths)}")
        out = []
        for s, (blocks, depth) in enumerate(zip(stages, self.depths)):
            blocks = _seq(blocks, _where(name, s))
            if len(blocks) != depth:
                raise InvalidSubnetConfig(f"{_where(name, s)} has {len(blocks)} entries but the stage has "
                                          f"{depth} blocks; give one per block")
            out.append(tuple(conv(v, _where(name, s, b)) for b, v in enumerate(blocks)))
        return tuple(out)

    @property
    def stages(self) -> int:
        return len(self.depths)

    def hidden_dims(self, stage: int) -> tuple[int, ...]:
        """MLP widths of a stage's blocks: int(width x ratio), truncated as the official code."""
        return tuple(int(self.embed_dim[stage] * r) for r in self.mlp_ratio[stage])

    def to_dict(self) -> dict[str, Any]:
        d = {"family": FAMILY, "depths": list(self.depths), "embed_dim": list(self.embed_dim)}
        return d | {name: [list(v) for v in getattr(self, name)] for name in BLOCK_DIMS}

    def to_official(self) -> dict[str, Any]:
        """The official YAML form (Q-K-V is implied there: 32 x heads)."""
        return {"DEPTHS": list(self.depths), "EMBED_DIM": list(self.embed_dim),
                "NUM_HEADS": [list(v) for v in self.num_heads], "WINDOW_SIZE": [list(v) for v in self.window_size],
                "MLP_RATIO": [list(v) for v in self.mlp_ratio]}

    @classmethod
    def from_dict(cls, obj: Any) -> S3Config:
        """Our canonical form, or an official AutoFormerV2 YAML (`DEPTHS`, `EMBED_DIM`, `NUM_HEADS`, ...)."""
        if not isinstance(obj, dict):
            raise InvalidSubnetConfig(f"a subnet config must be a mapping, got {type(obj).__name__}")
        if any(k in obj for k in OFFICIAL_KEYS):
            return cls.from_official(obj)
        if obj.get("family", FAMILY) != FAMILY:
            raise InvalidSubnetConfig(f"config is for family {brief(obj.get('family'))}, not {FAMILY!r}; pass "
                                      f"--family or an {FAMILY} config")
        keys = ("depths", "embed_dim", *BLOCK_DIMS)
        missing = [k for k in keys if k not in obj]
        unknown = sorted(set(obj) - {"family", *keys})
        if missing or unknown:
            raise InvalidSubnetConfig(f"an {FAMILY} config has {', '.join(keys)} (or the official YAML keys "
                                      f"{', '.join(OFFICIAL_KEYS)}); missing {missing or 'none'}, unknown "
                                      f"{brief(unknown) if unknown else 'none'}")
        return cls(**{k: obj[k] for k in keys})

    @classmethod
    def from_official(cls, obj: dict[str, Any]) -> S3Config:
        missing = [k for k in OFFICIAL_KEYS if k not in obj]
        unknown = sorted(set(obj) - set(OFFICIAL_KEYS))
        if missing or unknown:
            raise InvalidSubnetConfig(f"an official S3 YAML has {', '.join(OFFICIAL_KEYS)}; missing "
                                      f"{missing or 'none'}, unknown {brief(unknown) if unknown else 'none'}")
        depths = [_int(d, _where("DEPTHS", s), 1, MAX_DEPTH) for s, d in enumerate(_seq(obj["DEPTHS"], "DEPTHS"))]
        embed = [_int(e, _where("EMBED_DIM", s)) for s, e in enumerate(_seq(obj["EMBED_DIM"], "EMBED_DIM"))]
        lists = {key: _official_lists(obj[key], key, depths) for key in ("NUM_HEADS", "WINDOW_SIZE", "MLP_RATIO")}
        # integers under the names the file gives them, before the head counts become widths (h * 32)
        lists["NUM_HEADS"] = [[_int(h, _where("NUM_HEADS", s, b)) for b, h in enumerate(heads)]
                              for s, heads in enumerate(lists["NUM_HEADS"])]
        for s, (width, heads) in enumerate(zip(embed, lists["NUM_HEADS"])):
            for b, h in enumerate(heads):
                if h * OFFICIAL_HEAD_DIM != width:
                    raise InvalidSubnetConfig(
                        f"{_where('NUM_HEADS', s, b)} = {h}: {h} heads x {OFFICIAL_HEAD_DIM} = "
                        f"{h * OFFICIAL_HEAD_DIM} != EMBED_DIM {width}; the official model's head dim is "
                        f"{OFFICIAL_HEAD_DIM}, so heads must be {width // OFFICIAL_HEAD_DIM or 1} for that width")
        qkv = [[h * OFFICIAL_HEAD_DIM for h in heads] for heads in lists["NUM_HEADS"]]
        return cls(depths=tuple(depths), embed_dim=tuple(embed), mlp_ratio=lists["MLP_RATIO"],
                   num_heads=lists["NUM_HEADS"], qkv_dim=qkv, window_size=lists["WINDOW_SIZE"])


def _official_lists(value: Any, key: str, depths: list[int]) -> list[list[Any]]:
    """Per stage the first `depth` entries of a per-block list (a scalar stands for every block)."""
    stages = _seq(value, key)
    if len(stages) != len(depths):
        raise InvalidSubnetConfig(f"{key} has {len(stages)} stages but DEPTHS has {len(depths)}")
    out = []
    for s, (entries, depth) in enumerate(zip(stages, depths)):
        if not isinstance(entries, (list, tuple)):
            entries = [entries] * depth
        if len(entries) < depth:
            raise InvalidSubnetConfig(f"{_where(key, s)} has {len(entries)} entries but DEPTHS gives stage {s + 1} "
                                      f"{depth} blocks; give at least one entry per block")
        out.append(list(entries[:depth]))
    return out


# ------------------------------------------------------------------------------------------------------- space


@dataclass(frozen=True)
class S3StageChoices:
    """The choices of one stage (sorted, distinct)."""

    depth: tuple[int, ...]
    embed_dim: tuple[int, ...]
    mlp_ratio: tuple[float, ...]
    num_heads: tuple[int, ...]
    qkv_dim: tuple[int, ...]
    window_size: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in DIMENSIONS:
            values = getattr(self, name)
            if not isinstance(values, (list, tuple)) or not values:
                raise InvalidSubnetConfig(f"dimension {name} has no choices ({brief(values)}); give at least one")
            conv = _ratio if name == "mlp_ratio" else (lambda v, w: _int(v, w, 1, MAX_DEPTH)) if name == "depth" \
                else _int
            object.__setattr__(self, name, tuple(sorted({conv(v, name) for v in values})))

    def to_dict(self) -> dict[str, list]:
        return {name: list(getattr(self, name)) for name in DIMENSIONS}


@dataclass(frozen=True)
class S3StageSuper:
    """The supernet's sizes of one stage: every choice of the stage fits inside them."""

    depth: int
    embed_dim: int
    mlp_hidden: int
    num_heads: int
    qkv_dim: int
    window_size: int  # the largest window a block uses (sizes its relative-position table)

    def __post_init__(self) -> None:
        for f in fields(self):
            _int(getattr(self, f.name), f"super_stages {f.name}", 1, MAX_DEPTH if f.name == "depth" else MAX_WIDTH)


@dataclass(frozen=True)
class S3Space(CheckedSpace):
    """Per stage choices; `super_stages` are the supernet's sizes (None: the largest choices)."""

    name: str
    stages: tuple[S3StageChoices, ...]
    img_size: int = 224
    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 1000
    super_stages: tuple[S3StageSuper, ...] | None = None
    family: ClassVar[str] = FAMILY
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        stages = tuple(s if isinstance(s, S3StageChoices) else S3StageChoices(**_stage_dict(s, i))
                       for i, s in enumerate(_seq(self.stages, "stages")))
        if not stages:
            raise InvalidSubnetConfig(f"space {self.name!r} has no stages")
        object.__setattr__(self, "stages", stages)
        if self.super_stages is not None:
            supers = tuple(s if isinstance(s, S3StageSuper) else S3StageSuper(**s) for s in self.super_stages)
            object.__setattr__(self, "super_stages", supers)
        for name in ("img_size", "patch_size", "in_chans", "num_classes"):
            _int(getattr(self, name), name)
        self._check()

    # --- structure ------------------------------------------------------------------------------------------
    @property
    def resolutions(self) -> tuple[int, ...]:
        r = self.img_size // self.patch_size
        return tuple(r // 2 ** i for i in range(len(self.stages)))

    def supers(self) -> tuple[S3StageSuper, ...]:
        return self.super_stages or tuple(derived_super(c, r) for c, r in zip(self.stages, self.resolutions))

    def _check(self) -> None:
        problems = []
        if self.img_size % self.patch_size:
            problems.append(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        res = self.img_size // self.patch_size
        for i, c in enumerate(self.stages):
            if i < len(self.stages) - 1 and (res % 2 or res < 2):
                problems.append(f"stage {i + 1} works on a {res}x{res} map, which patch merging cannot halve")
            bad = [w for w in c.window_size if w < res and res % w]
            if bad:
                problems.append(f"window {bad[0]} does not divide stage {i + 1}'s {res}x{res} map (use a divisor of "
                                f"{res}, or >= {res} for global attention)")
            odd = [(h, q) for h in c.num_heads for q in c.qkv_dim if q % h]
            if odd:
                problems.append(f"stage {i + 1}: Q-K-V width {odd[0][1]} is not a multiple of {odd[0][0]} heads "
                                "(every pair of choices must split evenly)")
            res //= 2
        if self.super_stages is not None:
            problems += self._check_supers()
        if problems:
            raise InvalidSubnetConfig(f"space {self.name!r}: {'; '.join(problems)}")

    def _check_supers(self) -> list[str]:
        if len(self.super_stages) != len(self.stages):
            return [f"super_stages has {len(self.super_stages)} stages, the choices {len(self.stages)}"]
        out = []
        for i, (sup, need) in enumerate(zip(self.super_stages, (derived_super(c, r) for c, r in zip(
                self.stages, self.resolutions)))):
            small = [k for k, v in asdict(need).items() if v > getattr(sup, k)]
            if small:
                out.append(f"stage {i + 1}'s choices need {small[0]} {getattr(need, small[0])} > the supernet's "
                           f"{getattr(sup, small[0])}")
        return out

    # --- validation -------------------------------------------------------------------------------------------
    def validate(self, cfg: Any) -> S3Config:
        """`cfg` if every value is a choice of its stage (a window >= the stage's map counts as global attention,
        like any choice >= the map; an MLP ratio counts as a choice giving the same MLP width at the config's stage
        width, int(width x ratio) as the official code truncates it: the same network; a checkpoint's point space
        holds a ratio read back from its MLP width, not always the one its YAML writes, e.g. 3.29 and 3.3 both give
        105 units on width 32); else InvalidSubnetConfig naming the field, the value and the allowed set."""
        check_config_type(cfg, FAMILY, f"space {self.name!r}")
        if cfg.stages != len(self.stages):
            raise InvalidSubnetConfig(f"config has {cfg.stages} stages, space {self.name!r} has {len(self.stages)}")
        for s, (c, res) in enumerate(zip(self.stages, self.resolutions)):
            self._check_choice(_where("depths", s), cfg.depths[s], c.depth)
            self._check_choice(_where("embed_dim", s), cfg.embed_dim[s], c.embed_dim)
            for name in BLOCK_DIMS:
                allowed = getattr(c, name)
                for b, v in enumerate(getattr(cfg, name)[s]):
                    if name == "window_size" and v < res and res % v:
                        raise InvalidSubnetConfig(f"{_where(name, s, b)} = {v} does not divide stage {s + 1}'s "
                                                  f"{res}x{res} map; use a divisor of {res}, or >= {res} for "
                                                  "global attention")
                    if name == "window_size" and v >= res and max(allowed) >= res:
                        continue
                    if name == "mlp_ratio" and v not in allowed and int(cfg.embed_dim[s] * v) in {
                            int(cfg.embed_dim[s] * a) for a in allowed}:
                        continue  # the same MLP width: the same network
                    self._check_choice(_where(name, s, b), v, allowed)
        return cfg

    # --- sampling and evolution operators ---------------------------------------------------------------------
    def sample(self, rng: random.Random | None, kind: SampleKind = "random") -> S3Config:
        if kind in ("min", "max"):
            pick = min if kind == "min" else max
            depths = [pick(c.depth) for c in self.stages]
            return self._build(depths, [pick(c.embed_dim) for c in self.stages],
                               lambda s, name, b: pick(getattr(self.stages[s], name)))
        if kind != "random":
            raise InvalidSubnetConfig(f"kind = {brief(kind)}: sample takes random, min or max")
        rng = rng or random.Random()
        depths, embed = [], []
        for c in self.stages:  # per stage: depth, width, then every block's genes
            depths.append(rng.choice(c.depth))
            embed.append(rng.choice(c.embed_dim))
        return self._build(depths, embed, lambda s, name, b: rng.choice(getattr(self.stages[s], name)))

    def _build(self, depths: list[int], embed: list[int], gene: Any) -> S3Config:
        blocks = {name: [[gene(s, name, b) for b in range(d)] for s, d in enumerate(depths)] for name in BLOCK_DIMS}
        return S3Config(depths=tuple(depths), embed_dim=tuple(embed), **blocks)

    def mutate(self, cfg: S3Config, rng: random.Random, m_prob: float = 0.2, s_prob: float = 0.4) -> S3Config:
        """AutoFormer's mutation per stage: depth (grow with random genes or truncate) and width with probability
        `s_prob`, then every block gene with probability `m_prob`."""
        depths, embed, genes = list(cfg.depths), list(cfg.embed_dim), {n: [list(v) for v in getattr(cfg, n)]
                                                                         for n in BLOCK_DIMS}
        for s, c in enumerate(self.stages):
            if rng.random() < s_prob:
                depths[s] = rng.choice(c.depth)
                for name in BLOCK_DIMS:
                    row = genes[name][s]
                    row += [rng.choice(getattr(c, name)) for _ in range(depths[s] - len(row))]
                    del row[depths[s]:]
            if rng.random() < s_prob:
                embed[s] = rng.choice(c.embed_dim)
            for name in BLOCK_DIMS:
                genes[name][s] = [rng.choice(getattr(c, name)) if rng.random() < m_prob else v
                                  for v in genes[name][s]]
        return S3Config(depths=tuple(depths), embed_dim=tuple(embed), **genes)

    def can_cross(self, a: S3Config, b: S3Config) -> bool:
        """Parents cross when every stage has the same depth (equal-length genes, as AutoFormer's search)."""
        return a.depths == b.depths

    def crossover(self, a: S3Config, b: S3Config, rng: random.Random) -> S3Config:
        if not self.can_cross(a, b):
            raise InvalidSubnetConfig(f"crossover needs parents of equal depths, got {a.depths} and {b.depths}")
        pick = lambda x, y: x if rng.random() < 0.5 else y  # noqa: E731
        genes = {n: [[pick(x, y) for x, y in zip(ra, rb)] for ra, rb in zip(getattr(a, n), getattr(b, n))]
                 for n in BLOCK_DIMS}
        return S3Config(depths=a.depths, embed_dim=tuple(pick(x, y) for x, y in zip(a.embed_dim, b.embed_dim)),
                        **genes)

    # --- dimensions (space evolution) -------------------------------------------------------------------------
    def dimensions(self) -> list[tuple[int, str]]:
        """(stage, dimension) pairs, stage-major."""
        return [(s, name) for s in range(len(self.stages)) for name in DIMENSIONS]

    def choices(self, dim: tuple[int, str]) -> tuple:
        return getattr(self.stages[dim[0]], dim[1])

    def with_choices(self, dim: tuple[int, str], values: Any, name: str | None = None) -> S3Space:
        """This space with one dimension's choices replaced (a sub-space when `values` are among them)."""
        stages = list(self.stages)
        stages[dim[0]] = replace(stages[dim[0]], **{dim[1]: tuple(values)})
        return replace(self, name=name or self.name, stages=tuple(stages))

    def with_value(self, cfg: S3Config, dim: tuple[int, str], value: Any, rng: random.Random) -> S3Config:
        """`cfg` with one dimension set to `value` (every block of the stage for a per-block dimension; a new depth
        keeps the first blocks, new blocks draw their genes from the space)."""
        s, name = dim
        d = cfg.to_dict()
        if name == "embed_dim":
            d["embed_dim"][s] = value
        elif name == "depth":
            d["depths"][s] = value
            for gene in BLOCK_DIMS:
                row = d[gene][s]
                row += [rng.choice(getattr(self.stages[s], gene)) for _ in range(value - len(row))]
                del row[value:]
        else:
            d[name][s] = [value] * cfg.depths[s]
        return S3Config.from_dict(d)

    # --- forms ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"family": FAMILY, "name": self.name, "img_size": self.img_size, "patch_size": self.patch_size,
                "in_chans": self.in_chans, "num_classes": self.num_classes,
                "stages": [c.to_dict() for c in self.stages],
                "super_stages": [asdict(s) for s in self.super_stages] if self.super_stages is not None else None}

    @classmethod
    def from_dict(cls, d: Any, name: str | None = None) -> S3Space:
        """Our JSON form; an official S3 YAML gives the one-point space of that network (at 224 px, 1000 classes)."""
        if isinstance(d, dict) and any(k in d for k in OFFICIAL_KEYS):
            return point_space(S3Config.from_official(d), name or "official")
        return space_from_fields(cls, d, name, "space")


def _stage_dict(s: Any, i: int) -> dict[str, Any]:
    if not isinstance(s, dict):
        raise InvalidSubnetConfig(f"stages[{i}] = {brief(s)} must map each dimension to its choices")
    unknown, missing = sorted(set(s) - set(DIMENSIONS)), [k for k in DIMENSIONS if k not in s]
    if unknown or missing:
        raise InvalidSubnetConfig(f"stages[{i}] (stage {i + 1}) needs {', '.join(DIMENSIONS)}; missing "
                                  f"{missing or 'none'}, unknown {brief(unknown) if unknown else 'none'}")
    return s


def derived_super(c: S3StageChoices, resolution: int) -> S3StageSuper:
    """The smallest supernet stage holding every choice of `c` on a resolution x resolution map."""
    return S3StageSuper(depth=max(c.depth), embed_dim=max(c.embed_dim),
                        mlp_hidden=int(max(c.embed_dim) * max(c.mlp_ratio)), num_heads=max(c.num_heads),
                        qkv_dim=max(c.qkv_dim), window_size=max(min(w, resolution) for w in c.window_size))


def point_space(cfg: S3Config, name: str, img_size: int = 224, patch_size: int = 4, in_chans: int = 3,
                num_classes: int = 1000) -> S3Space:
    """The space of one network: per stage, the values its blocks use."""
    stages = tuple(S3StageChoices(depth=(cfg.depths[s],), embed_dim=(cfg.embed_dim[s],),
                                  **{n: tuple(getattr(cfg, n)[s]) for n in BLOCK_DIMS}) for s in range(cfg.stages))
    return S3Space(name, stages, img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                   num_classes=num_classes)


# --------------------------------------------------------------------------------------------- registrations


def _official(depths: tuple[int, ...], windows: tuple[int, ...]) -> S3Config:
    """An official S3 network: widths 96-192-384-768, head dim 32, MLP ratio 4 everywhere."""
    widths = (96, 192, 384, 768)
    heads = tuple(w // OFFICIAL_HEAD_DIM for w in widths)
    return S3Config(depths=depths, embed_dim=widths, mlp_ratio=tuple((4.0,) * d for d in depths),
                    num_heads=tuple((h,) * d for h, d in zip(heads, depths)),
                    qkv_dim=tuple((w,) * d for w, d in zip(widths, depths)),
                    window_size=tuple((w,) * d for w, d in zip(windows, depths)))


# AutoFormerV2/configs/S3-{T,S,B}.yaml
OFFICIAL = {"S3-T": _official((2, 2, 6, 2), (7, 7, 14, 7)), "S3-S": _official((2, 2, 18, 2), (14, 14, 14, 14)),
            "S3-B": _official((2, 2, 30, 2), (7, 7, 14, 7))}
for _name, _cfg in OFFICIAL.items():
    SPACES.register(_name, point_space(_cfg, _name))
    PRESETS.register(_name.lower(), Preset(_cfg, _name))


def _stage(depth, embed, ratio, heads, qkv, window) -> S3StageChoices:
    return S3StageChoices(depth, embed, ratio, heads, qkv, window)


# A tiny registered space (32 px digits, 4x4 patches: maps of 8, 4, 2 and 1 tokens a side): real code, small
# enough for the tests, `train --space s3-tiny` and the space-evolution demo on two cores.
SPACES.register("s3-tiny", S3Space("s3-tiny", (
    _stage((1, 2), (16, 24), (1.0, 2.0, 3.0), (1, 2), (8, 16, 24), (2, 4, 8)),
    _stage((1, 2), (24, 32, 48), (1.0, 2.0, 3.0), (1, 2), (16, 24, 32), (2, 4)),
    _stage((1, 2, 3), (32, 48, 64), (1.0, 2.0, 3.0), (2, 4), (16, 32, 48), (2,)),
    _stage((1,), (48, 64), (1.0, 2.0, 3.0), (2, 4), (32, 48), (1,))),
    img_size=32, patch_size=4, num_classes=10))

__all__ = ["BLOCK_DIMS", "DIMENSIONS", "FAMILY", "OFFICIAL", "OFFICIAL_HEAD_DIM", "S3Config", "S3Space",
           "S3StageChoices", "S3StageSuper", "derived_super", "point_space"]
