"""Search spaces, published presets and config loading, for every registered family.

Each family's space module registers its spaces in `SPACES` and its published subnets in `PRESETS` (a `Preset`
names the space it belongs to); the registries load the built-in families on first use.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from ..errors import MALFORMED, InvalidSubnetConfig, as_path, brief, reason
from ..registry import Registry


def _load_families() -> None:
    from deploy_nas.family import load_builtin_families

    load_builtin_families()


@dataclass(frozen=True)
class Preset:
    """A published subnet and the registered space it was searched in."""

    config: Any
    space: str


class CanonicalConfig:
    """What every family's config shares: canonical JSON (sorted keys, no spaces) and the id that hashes it."""

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no spaces; the config id hashes exactly this string."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))  # type: ignore[attr-defined]

    @property
    def id(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]


class CheckedSpace:
    """What every family's space shares: one message for a value outside the space, and `contains`."""

    name: str

    def _check_choice(self, where: str, value: Any, allowed: tuple) -> None:
        if value not in allowed:
            raise InvalidSubnetConfig(f"{where} = {brief(value)} is outside space {self.name!r} "
                                      f"(allowed: {', '.join(str(a) for a in allowed)})")

    def contains(self, cfg: Any) -> bool:
        try:
            self.validate(cfg)  # type: ignore[attr-defined]
        except InvalidSubnetConfig:
            return False
        return True


def check_config_type(cfg: Any, family: str, owner: str) -> None:
    """Raise InvalidSubnetConfig unless `cfg` is a config object of `family` (a dict or another family's config
    is named as what it is, with where a config comes from)."""
    own = getattr(cfg, "family", None)
    if own == family:
        return
    got = f"a {brief(own)} config" if isinstance(own, str) else f"a {type(cfg).__name__}"
    raise InvalidSubnetConfig(f"{owner} takes {family} configs (objects from load_config, space.sample or "
                              f"space.validate), got {got}")


def space_from_fields(cls: type, d: Any, name: str | None, default_name: str) -> Any:
    """A space dataclass `cls` from our JSON form: a mapping of its fields, with an optional "family" that must be
    its own; unknown keys are refused with the ones it takes. It is named `name` (a file's stem) unless it names
    itself."""
    family = cls.family  # type: ignore[attr-defined]
    if not isinstance(d, dict):
        raise InvalidSubnetConfig(f"the search space must be a mapping, got {type(d).__name__}")
    d = dict(d)
    own = d.pop("family", family)
    if own != family:
        raise InvalidSubnetConfig(f"the space is for family {brief(own)}, not {family!r}")
    known = {f.name for f in fields(cls)} - {"extra"}
    unknown = sorted(str(k) for k in set(d) - known)
    if unknown:
        raise InvalidSubnetConfig(f"{family} space has unknown keys {brief(unknown)}; it takes {sorted(known)}")
    d.setdefault("name", name or default_name)
    try:
        return cls(**d)
    except InvalidSubnetConfig:
        raise
    except (TypeError, ValueError) as err:
        raise InvalidSubnetConfig(f"not a valid {family} search space: {reason(err, 200)}") from None


SPACES: Registry[Any] = Registry("search space", InvalidSubnetConfig, loader=_load_families)
PRESETS: Registry[Preset] = Registry("preset", InvalidSubnetConfig, loader=_load_families)


# A config or space is a few hundred values: anything far larger is refused before it is expanded.
MAX_FILE_BYTES = 1 << 20
MAX_NODES = 100_000  # values after YAML aliases are expanded
MAX_DEPTH = 32  # nesting


def read_structured_file(path: str | Path) -> Any:
    """JSON or YAML (safe_load) from a file, bounded in size, expanded size (YAML aliases) and nesting, with a
    typed error for anything unreadable."""
    path = as_path(path, InvalidSubnetConfig, "a config or space file")
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InvalidSubnetConfig(f"{path} is {size:,} bytes; a config or space file is at most "
                                      f"{MAX_FILE_BYTES:,}")
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidSubnetConfig(f"cannot read config file {path}: {err}") from err
    kind = "JSON" if path.suffix == ".json" else "YAML"
    try:
        if kind == "JSON":
            obj = json.loads(text, object_pairs_hook=_unique_keys)
            _check_expanded(obj, _json_children)
            return obj
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_expanded(node, _yaml_children)
            for mapping in (n for n in _yaml_nodes(node) if isinstance(n, yaml.MappingNode)):
                _unique_keys([(k.value, None) for k, _ in mapping.value
                              if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge"])
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise InvalidSubnetConfig(f"{path} is not valid {kind}: {brief(str(err).splitlines()[0], 160)}") from err
    except RecursionError:
        raise InvalidSubnetConfig(f"{path} nests deeper than any config; at most {MAX_DEPTH} levels") from None


def _unique_keys(pairs: list[tuple[Any, Any]]) -> dict:
    """A mapping from key/value pairs; a key given twice is refused (the last one would silently win)."""
    seen: set = set()
    for key, _ in pairs:
        if key in seen:
            raise InvalidSubnetConfig(f"key {brief(key)} is given twice in one mapping; keep one")
        seen.add(key)
    return dict(pairs)


def _yaml_nodes(root: Any) -> list:
    """Every node of a YAML document once (aliases share nodes; _check_expanded bounds the walk first)."""
    seen, out, stack = set(), [], [root]
    while stack:
        node = stack.pop()
        if id(node) not in seen:
            seen.add(id(node))
            out.append(node)
            stack.extend(_yaml_children(node))
    return out


def _json_children(obj: Any) -> list:
    return list(obj.values()) + list(obj) if isinstance(obj, dict) else list(obj) if isinstance(obj, list) else []


def _yaml_children(node: Any) -> list:
    if isinstance(node, yaml.MappingNode):
        return [x for pair in node.value for x in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _check_expanded(root: Any, children: Any) -> None:
    """Refuse a document whose values, with every alias expanded, exceed MAX_NODES or nest beyond MAX_DEPTH (or
    that refers to itself), counting shared sub-documents once per use but computing each size once."""
    sizes: dict[int, int] = {}
    depth: dict[int, int] = {}
    stack = [(root, False)]
    active: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        kids = children(node)
        if done:
            active.discard(key)
            sizes[key] = 1 + sum(sizes[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            if sizes[key] > MAX_NODES or depth[key] > MAX_DEPTH:
                raise InvalidSubnetConfig(f"the document expands to more than {MAX_NODES:,} values or "
                                          f"{MAX_DEPTH} levels (YAML aliases count each time they are used); "
                                          "a config is far smaller: write it out plainly")
            continue
        if key in sizes:
            continue
        if key in active:
            raise InvalidSubnetConfig("the document refers to itself (a recursive YAML alias); write it out plainly")
        active.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in sizes)


def _family_name(obj: Any, family: str | None, what: str) -> str:
    """The family a config/space dict belongs to: its own "family" key, checked against `family` when given."""
    own = obj.get("family") if isinstance(obj, dict) else None
    if own is not None and family is not None and own != family:
        raise InvalidSubnetConfig(f"{what} is for family {brief(own)}, not {family!r}: give a {what} of family "
                                  f"{family!r} (commands with a --family option read this one with --family "
                                  f"{brief(own)})")
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
            raise InvalidSubnetConfig(f"config {brief(str(value), 200)} is neither a preset "
                                      f"({', '.join(PRESETS.names())}) nor an existing JSON/YAML file")
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
    if not isinstance(value, (str, os.PathLike)):
        raise InvalidSubnetConfig(f"load_space takes a space, a registered space name or a JSON/YAML file path, got "
                                  f"{type(value).__name__}")
    if not Path(value).is_file():
        raise InvalidSubnetConfig(f"space {brief(str(value), 200)} is neither a registered space "
                                  f"({', '.join(SPACES.names())}) nor an existing file")
    obj = read_structured_file(value)
    if not isinstance(obj, dict):
        raise InvalidSubnetConfig(f"{value} does not hold a search space")
    fam = FAMILIES.get(_family_name(obj, family, "space"))
    try:
        return fam.space_from_dict(obj, name=Path(value).stem)
    except InvalidSubnetConfig:
        raise
    except MALFORMED as err:
        raise InvalidSubnetConfig(f"{value} is not a valid {fam.name} space ({type(err).__name__}: "
                                  f"{reason(err, 150)})") from None


__all__ = ["PRESETS", "Preset", "SPACES", "check_config_type", "load_config", "load_space", "read_structured_file",
           "space_from_fields"]
