"""Search spaces, published presets and config loading, for every registered family.

Each family's space module registers its spaces in `SPACES` and its published subnets in `PRESETS` (a `Preset`
names the space it belongs to); the registries load the built-in families on first use.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import InvalidSubnetConfig
from ..registry import Registry


def _load_families() -> None:
    from deploy_nas.family import load_builtin_families

    load_builtin_families()


@dataclass(frozen=True)
class Preset:
    """A published subnet and the registered space it was searched in."""

    config: Any
    space: str


SPACES: Registry[Any] = Registry("search space", InvalidSubnetConfig, loader=_load_families)
PRESETS: Registry[Preset] = Registry("preset", InvalidSubnetConfig, loader=_load_families)


def read_structured_file(path: str | Path) -> Any:
    """JSON or YAML (safe_load) from a file, with a typed error for anything unreadable."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidSubnetConfig(f"cannot read config file {path}: {err}") from err
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise InvalidSubnetConfig(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                                  f"{str(err).splitlines()[0]}") from err


def _family_name(obj: Any, family: str | None, what: str) -> str:
    """The family a config/space dict belongs to: its own "family" key, checked against `family` when given."""
    own = obj.get("family") if isinstance(obj, dict) else None
    if own is not None and family is not None and own != family:
        raise InvalidSubnetConfig(f"{what} is for family {str(own)[:40]!r}, not {family!r}; pass --family {own} "
                                  f"or a {family} {what}")
    name = own or family
    if name is None:
        raise InvalidSubnetConfig(f"the {what} does not say its family; add \"family\" to it or pass --family")
    return name


def load_config(value: Any, family: str | None = None) -> Any:
    """A config from a preset name, a JSON/YAML file or a dict (each family reads its canonical and official forms),
    or a config object. `family` is checked when the value names its own."""
    from deploy_nas.family import FAMILIES

    if hasattr(value, "family") and hasattr(value, "to_dict"):
        _family_name({"family": value.family}, family, "config")
        return value
    if isinstance(value, (str, Path)):
        if isinstance(value, str) and value in PRESETS:
            return load_config(PRESETS.get(value).config, family)
        if not Path(value).is_file():
            raise InvalidSubnetConfig(f"config {str(value)[:200]!r} is neither a preset ({', '.join(PRESETS.names())}) "
                                      "nor an existing JSON/YAML file")
        value = read_structured_file(value)
    if not isinstance(value, dict):
        raise InvalidSubnetConfig(f"a subnet config must be a mapping, got {type(value).__name__}")
    return FAMILIES.get(_family_name(value, family, "config")).config_from_dict(value)


def load_space(value: Any, family: str | None = None) -> Any:
    """A space by registered name, or from a JSON/YAML file (our form, or a family's official form)."""
    from deploy_nas.family import FAMILIES

    if hasattr(value, "family") and hasattr(value, "sample"):
        return value
    if isinstance(value, str) and value in SPACES:
        space = SPACES.get(value)
        _family_name({"family": space.family}, family, "space")
        return space
    if not Path(value).is_file():
        raise InvalidSubnetConfig(f"space {str(value)[:200]!r} is neither a registered space "
                                  f"({', '.join(SPACES.names())}) nor an existing file")
    obj = read_structured_file(value)
    if not isinstance(obj, dict):
        raise InvalidSubnetConfig(f"{value} does not hold a search space")
    return FAMILIES.get(_family_name(obj, family, "space")).space_from_dict(obj, name=Path(value).stem)


__all__ = ["PRESETS", "Preset", "SPACES", "load_config", "load_space", "read_structured_file"]
