"""Search spaces, published presets and config loading for every family."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Union

import yaml

from ..errors import InvalidSubnetConfig
from ..registry import Registry
from .autoformer import AutoFormerConfig, AutoFormerSpace

SubnetConfig = AutoFormerConfig  # the only family so far; later families add their config types here
SearchSpace = AutoFormerSpace

SPACES: Registry[AutoFormerSpace] = Registry("search space", InvalidSubnetConfig)
PRESETS: Registry[AutoFormerConfig] = Registry("preset", InvalidSubnetConfig)
CONFIG_TYPES: dict[str, type] = {"autoformer": AutoFormerConfig}

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
# A tiny registered space (timm-style test model): real code, small enough for fast tests and the demo.
SPACES.register("autoformer-tiny", AutoFormerSpace(
    "autoformer-tiny", embed_dim=(48, 64), num_heads=(2, 3, 4), mlp_ratio=(2.0, 3.0, 4.0), depth=(2, 3, 4),
    super_embed_dim=64, super_num_heads=4, super_depth=4, head_dim=16, img_size=32, patch_size=8,
    num_classes=10, max_relative_position=2))

# Published searched subnets (experiments/subnet/AutoFormer-{T,S,B}.yaml, RETRAIN sections).
PRESETS.register("autoformer-t", AutoFormerConfig(
    13, 192, (3.5, 3.5, 3.0, 3.5, 3.0, 3.0, 4.0, 4.0, 3.5, 4.0, 3.5, 4.0, 3.5), (3,) * 10 + (4, 3, 3)))
PRESETS.register("autoformer-s", AutoFormerConfig(
    13, 384, (3.0, 3.5, 3.0, 3.5, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 3.5, 4.0), (6, 6, 5, 7, 5, 5, 5, 6, 6, 7, 7, 6, 7)))
PRESETS.register("autoformer-b", AutoFormerConfig(
    14, 576, (3.5, 3.5, 4.0, 3.5, 4.0, 3.5, 3.5, 3.0, 4.0, 4.0, 3.0, 4.0, 3.0, 3.5),
    (9, 9, 9, 9, 9, 10, 9, 9, 10, 9, 10, 9, 9, 10)))
PRESET_SPACE = {"autoformer-t": "autoformer-T", "autoformer-s": "autoformer-S", "autoformer-b": "autoformer-B"}


def read_structured_file(path: Union[str, Path]) -> Any:
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


def load_config(value: Union[str, Path, dict, AutoFormerConfig], family: str = "autoformer") -> AutoFormerConfig:
    """A config from a preset name, a JSON/YAML file (canonical, official dict, or official RETRAIN YAML) or a dict."""
    if family not in CONFIG_TYPES:
        raise InvalidSubnetConfig(f"unknown family {family!r}; choose one of: {', '.join(CONFIG_TYPES)}")
    if isinstance(value, CONFIG_TYPES[family]):
        return value
    if hasattr(value, "family"):
        raise InvalidSubnetConfig(f"config is for family {value.family!r}, expected {family!r}")
    if isinstance(value, (str, Path)):
        if isinstance(value, str) and value in PRESETS:
            return PRESETS.get(value)
        if not Path(value).exists():
            raise InvalidSubnetConfig(f"config {str(value)!r} is neither a preset ({', '.join(PRESETS.names())}) "
                                      "nor an existing JSON/YAML file")
        value = read_structured_file(value)
    return CONFIG_TYPES[family].from_dict(value)


def load_space(value: Union[str, Path, AutoFormerSpace]) -> AutoFormerSpace:
    """A space by registered name, from our JSON form, or from an official supernet YAML file."""
    if isinstance(value, AutoFormerSpace):
        return value
    if isinstance(value, str) and value in SPACES:
        return SPACES.get(value)
    if not Path(value).exists():
        raise InvalidSubnetConfig(f"space {str(value)!r} is neither a registered space "
                                  f"({', '.join(SPACES.names())}) nor an existing file")
    obj = read_structured_file(value)
    if isinstance(obj, dict) and "SUPERNET" in obj:
        return AutoFormerSpace.from_official_yaml(obj, name=Path(value).stem)
    if not isinstance(obj, dict):
        raise InvalidSubnetConfig(f"{value} does not hold a search space")
    try:
        return AutoFormerSpace.from_dict(obj)
    except TypeError as err:
        raise InvalidSubnetConfig(f"{value} is not a search space file: {err}") from err


__all__ = ["AutoFormerConfig", "AutoFormerSpace", "SubnetConfig", "SearchSpace", "SPACES", "PRESETS",
           "PRESET_SPACE", "load_config", "load_space", "read_structured_file"]
