"""DenseSpec: the envelope of spec.json, and ARCHS, the registry of dense architectures.

spec.json (format 2) is an envelope that every arch shares, with the arch's own body inside:

    {"arch": "vit", "img_size": 224, "in_chans": 3, "num_classes": 1000, "body": {...}, "source": {...},
     "format_version": 2}

`ARCHS` maps `arch` to the nn.Module class that rebuilds the model; the class names its body dataclass
(`body_type`, with `to_dict`/`from_dict`). Format 1 (written before the arch registry: one flat ViT spec) is still
read, by the `vit` arch's converter.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deploy_nas.errors import DenseModelError, brief, check_sizes
from deploy_nas.registry import Registry

FORMAT_VERSION = 2


def _load_archs() -> None:
    import deploy_nas.dense  # noqa: F401  (registers the built-in archs)
    from deploy_nas.family import load_builtin_families

    load_builtin_families()  # families may bring archs of their own


ARCHS: Registry[type] = Registry("dense arch", DenseModelError, loader=_load_archs)
# Readers of older spec.json formats: {format_version: function(dict) -> DenseSpec}.
LEGACY_READERS: dict[int, Callable[[dict[str, Any]], DenseSpec]] = {}


@dataclass(frozen=True)
class DenseSpec:
    """What every dense model shares (input, classes, where it came from) plus its arch's own `body`."""

    arch: str
    img_size: int
    in_chans: int
    num_classes: int
    body: Any  # the arch's body dataclass (ARCHS.get(arch).body_type)
    source: dict[str, Any] = field(default_factory=dict, compare=False)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        check_sizes("spec.json", DenseModelError, {}, integers=True, img_size=self.img_size, in_chans=self.in_chans,
                    num_classes=self.num_classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.in_chans, self.img_size, self.img_size

    @property
    def class_names(self) -> list[str] | None:
        """The class name of each output index, when the supernet was trained on image folders (`source`'s
        `trained_on`, as `materialize` records it); None otherwise, or when the record is not a list of names."""
        record = self.source.get("trained_on")
        names = record.get("classes") if isinstance(record, dict) and record.get("task") == "image folders" else None
        ok = isinstance(names, list) and all(isinstance(n, str) for n in names) and len(names) <= self.num_classes
        return list(names) if ok else None

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, "img_size": self.img_size, "in_chans": self.in_chans,
                "num_classes": self.num_classes, "body": self.body.to_dict(), "source": self.source,
                "format_version": FORMAT_VERSION}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Any) -> DenseSpec:
        if not isinstance(d, dict):
            raise DenseModelError("spec.json does not hold an object; re-extract the model")
        version = d.get("format_version")
        if version in LEGACY_READERS:
            return LEGACY_READERS[version](d)
        if version != FORMAT_VERSION:
            raise DenseModelError(f"spec.json has format {brief(version)}; this deploy_nas reads formats "
                                  f"{sorted([*LEGACY_READERS, FORMAT_VERSION])}. Upgrade deploy_nas or re-extract")
        module = ARCHS.get(str(d.get("arch")))
        try:
            return cls(arch=d["arch"], img_size=d["img_size"], in_chans=d["in_chans"],
                       num_classes=d["num_classes"], body=module.body_type.from_dict(d["body"]),
                       source=dict(d.get("source") or {}))
        except (TypeError, KeyError, ValueError, AttributeError) as err:
            raise DenseModelError(f"spec.json is not a valid {d.get('arch')} spec ({type(err).__name__}: "
                                  f"{str(err)[:200]}); re-extract the model") from err

    @classmethod
    def from_json(cls, text: str) -> DenseSpec:
        try:
            return cls.from_dict(json.loads(text))
        except (json.JSONDecodeError, RecursionError) as err:
            raise DenseModelError(f"spec.json is not valid JSON ({str(err)[:200]}); re-extract the model") from err
