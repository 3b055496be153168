"""The family protocol: the one place where the core learns which supernet families exist.

A family is a registered object (`FAMILIES`) that ties together its config and space types, its presets, the
importer of its official checkpoints (with typed import options), how to build a supernet from a space, its
training rule and the cost features of its latency predictor. Everything generic (materialize, search, training,
the workflows and the CLI) is typed against the protocols below and never names a family.

Adding a family: `spaces/<family>.py` (config + space, registered in SPACES/PRESETS), `supernets/<family>.py`
(supernet, importer, and the Family object registered here), `dense/<arch>.py` (registered in ARCHS), and one line
in `BUILTIN_FAMILIES`.
"""
from __future__ import annotations

import dataclasses
import importlib
import random
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from torch import Tensor, nn

from deploy_nas.errors import InvalidSubnetConfig
from deploy_nas.registry import Registry

SampleKind = Literal["random", "min", "max"]
# Modules that register the built-in families (imported on the first registry lookup).
BUILTIN_FAMILIES = ("deploy_nas.supernets.autoformer", "deploy_nas.supernets.vitslim", "deploy_nas.supernets.nasvit",
                    "deploy_nas.supernets.s3", "deploy_nas.supernets.psvit")


def load_builtin_families() -> None:
    for module in BUILTIN_FAMILIES:
        importlib.import_module(module)


FAMILIES: Registry[Family] = Registry("family", InvalidSubnetConfig, loader=load_builtin_families)


# ------------------------------------------------------------------------------------------------- protocols


@runtime_checkable
class SubnetConfig(Protocol):
    """One architecture of a family: a frozen dataclass with canonical JSON; `id` hashes that JSON."""

    family: ClassVar[str]

    @property
    def id(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...

    def to_json(self) -> str: ...


@runtime_checkable
class SearchSpace(Protocol):
    """The choices of a family. `img_size`/`in_chans`/`num_classes` describe the input the data must have."""

    name: str
    family: ClassVar[str]
    img_size: int
    in_chans: int
    num_classes: int

    def sample(self, rng: random.Random | None, kind: SampleKind = "random") -> SubnetConfig: ...

    def validate(self, cfg: Any) -> SubnetConfig:
        """`cfg` if every value is an allowed choice; else InvalidSubnetConfig naming field, value, allowed set."""

    def to_dict(self) -> dict[str, Any]: ...


@runtime_checkable
class EvolvableSpace(SearchSpace, Protocol):
    """A space the evolution search can breed in."""

    def mutate(self, cfg: Any, rng: random.Random, m_prob: float, s_prob: float) -> SubnetConfig: ...

    def can_cross(self, a: Any, b: Any) -> bool: ...

    def crossover(self, a: Any, b: Any, rng: random.Random) -> SubnetConfig: ...


@runtime_checkable
class Supernet(Protocol):
    """A weight-sharing model (an nn.Module) that runs any config of its space, passed explicitly."""

    family: ClassVar[str]

    def __call__(self, x: Tensor, cfg: Any) -> Tensor: ...

    def check_config(self, cfg: Any) -> SubnetConfig:
        """`cfg` if it fits inside this supernet; else InvalidSubnetConfig."""

    def subnet_state(self, cfg: Any, calib: Any = None) -> SubnetState:
        """The dense spec, the sliced weights (fresh tensors) and the folds `materialize` applies to them."""

    def param_count(self, cfg: Any) -> int:
        """Parameters of the subnet, counted the way the family's official code counts them."""

    def no_weight_decay(self) -> set[str]:
        """Names of parameters trained without weight decay."""

    def fixed(self, cfg: Any, calib: Any = None) -> nn.Module:
        """An eval module x -> logits running `cfg` (BN recalibrated on a copy for families with BN)."""

    def meta(self) -> dict[str, Any]:
        """What `supernet.json` records to rebuild this supernet: {"family": ..., "arch": {...}}."""


@dataclasses.dataclass(frozen=True)
class Calibration:
    """What `subnet_state(cfg, calib)` / `fixed(cfg, calib)` get for families whose subnets need BatchNorm
    statistics of their own before BN is folded (NASViT). mode "recalibrate": forward `images` (float32 NCHW, in
    `batch_size` batches) through the subnet first; "stored": fold the statistics the checkpoint holds. A family
    without BatchNorm ignores it."""

    mode: Literal["recalibrate", "stored"] = "recalibrate"
    images: Any = None  # np.ndarray (N, C, H, W) or None
    batch_size: int = 64

    def batches(self) -> list[Any]:
        if self.images is None:
            return []
        return [self.images[i:i + self.batch_size] for i in range(0, len(self.images), self.batch_size)]


# the training images a BatchNorm family's subnet is recalibrated on before it is scored (search, training's
# evaluation): ranks subnets as the official 4,096 do (docs/nasvit.md)
SCORE_BN_IMAGES = 1024


@dataclasses.dataclass(frozen=True)
class SubnetState:
    """What `Supernet.subnet_state` returns: `materialize` applies `folds` (pure functions of the state dict, in
    `deploy_nas.folding`) and builds `spec` through the ARCHS registry."""

    spec: Any  # DenseSpec
    state: dict[str, Tensor]
    folds: tuple[Any, ...] = ()


@runtime_checkable
class Family(Protocol):
    name: str
    config_type: type
    space_type: type
    import_options: type  # a frozen dataclass: what the weights cannot tell
    train_rule: str  # a key of deploy_nas.train.TRAIN_RULES
    tiny_space: str  # a registered space small enough for the tests and the CPU demo
    default_space: str  # the space `train` uses when none is given

    def config_from_dict(self, obj: Any) -> SubnetConfig: ...

    def space_from_dict(self, obj: Any) -> SearchSpace: ...

    def load_official(self, path: str | Path, options: Any) -> tuple[Supernet, SearchSpace | None]: ...

    def build_supernet(self, space: Any, seed: int | None = 0) -> Supernet: ...

    def supernet_from_meta(self, meta: Mapping[str, Any]) -> Supernet: ...

    def cost_features(self, space: Any, cfg: Any) -> dict[str, float]:
        """Per-image costs that drive latency (GEMM MACs, attention-map sizes, layer counts)."""

    def tolerances(self) -> Mapping[tuple[str, str], Any]:
        """Parity tolerance overrides on top of the (backend, precision) table; empty when none."""

    # Optional attributes: `train_defaults` (a dict of TrainConfig fields: the family's training recipe, under the
    # options a user gives), `exactness_atol` (the bound materialization is tested to, when not 1e-5; say why),
    # `claims(state_dict) -> bool` (recognise an official checkpoint given without --family), `commands()` (click
    # commands the family adds to `deploy-nas`, e.g. ViT-Slim's `slim search|prune`), `batchnorm` (True: its subnets
    # take a Calibration, `--bn`/`--calib-data`; a family without it refuses those options), `config_warning(supernet,
    # config) -> str | None` (a warning `extract`/`run` print about a valid config that does not do what it seems to,
    # e.g. ViT-Slim budgets that removed nothing of masks never searched).


def get_family(name: str) -> Family:
    return FAMILIES.get(name)


def family_of(obj: Any) -> Family:
    """The family of a config, space or supernet (anything with a `family` name)."""
    name = getattr(obj, "family", None)
    if not isinstance(name, str):
        raise InvalidSubnetConfig(f"{type(obj).__name__} belongs to no family")
    return FAMILIES.get(name)


# --------------------------------------------------------------------------------------- fixed-config view


class FixedConfig(nn.Module):
    """`supernet` running one config: x -> logits (the eval view of a family without BatchNorm)."""

    def __init__(self, supernet: nn.Module, cfg: Any):
        super().__init__()
        self.supernet, self.cfg = supernet, cfg

    def forward(self, x: Tensor) -> Tensor:
        return self.supernet(x, self.cfg)


# ---------------------------------------------------------------------------------------- import options


def parse_import_options(cls: type, pairs: Sequence[str] = (), **given: Any) -> Any:
    """An instance of the frozen dataclass `cls` from "key=value" strings and keyword values (None = not given).

    Values are converted to the field's type (bool: true/false/1/0/yes/no/on/off; int; float; str; Optional[X]).
    An unknown key, a bad value, or a key given twice with different values (two pairs, or a pair and a keyword)
    raises InvalidSubnetConfig naming the key and the choices."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    for pair in pairs:
        key, sep, text = str(pair).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise InvalidSubnetConfig(f"import option {str(pair)[:60]!r}: expected key=value with key one of "
                                      f"{', '.join(fields) or '(this family has none)'}")
        value = _convert(text.strip(), hints[key], key)
        if key in values and values[key] != value:
            raise InvalidSubnetConfig(f"import option {key} given twice, as {values[key]!r} and as {value!r} "
                                      f"(a --{key.replace('_', '-')} flag counts too); give it once")
        values[key] = value
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise InvalidSubnetConfig(f"import options {unknown} do not apply to this family; it takes "
                                  f"{', '.join(fields) or 'none'}")
    return cls(**values)


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _convert(text: str, hint: Any, key: str) -> Any:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        if text.lower() in ("none", "null", ""):
            return None
        hint = next(a for a in args if a is not type(None))
    try:
        if hint is bool:
            if text.lower() not in _TRUE | _FALSE:
                raise ValueError("expected true or false")
            return text.lower() in _TRUE
        return hint(text)
    except (TypeError, ValueError) as err:
        raise InvalidSubnetConfig(f"import option {key}={text[:40]!r}: not a valid "
                                  f"{getattr(hint, '__name__', hint)} ({err})") from None


__all__ = ["BUILTIN_FAMILIES", "SCORE_BN_IMAGES", "Calibration", "EvolvableSpace", "FAMILIES", "Family", "FixedConfig",
           "SampleKind", "SearchSpace", "SubnetConfig", "SubnetState", "Supernet", "family_of", "get_family",
           "parse_import_options"]
