"""DenseSpec: everything needed to rebuild a materialized ViT with no supernet code (saved as spec.json)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from deploy_nas.errors import DenseModelError

FORMAT_VERSION = 1


@dataclass(frozen=True)
class BlockSpec:
    num_heads: int
    head_dim: int
    attn_scale: float  # always explicit: pruning heads or head dims must not change it
    mlp_hidden: int
    qkv_bias: bool = True
    relative_position: bool = False


@dataclass(frozen=True)
class DenseSpec:
    img_size: int
    patch_size: int
    in_chans: int
    num_classes: int
    embed_dim: int
    blocks: tuple[BlockSpec, ...]
    pos_embed: bool = True
    pool: Literal["mean", "cls"] = "cls"  # mean = over patch tokens only (cls still attends)
    pre_norm: bool = True
    norm_eps: float = 1e-5
    activation: Literal["gelu_erf", "gelu_tanh"] = "gelu_erf"
    max_relative_position: int | None = None
    source: dict[str, Any] = field(default_factory=dict, compare=False)
    arch: str = "vit"
    format_version: int = FORMAT_VERSION

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def num_tokens(self) -> int:
        return (self.img_size // self.patch_size) ** 2 + 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DenseSpec":
        try:
            d = json.loads(text)
            if d.get("format_version") != FORMAT_VERSION or d.get("arch") != "vit":
                raise DenseModelError(f"spec.json has format {d.get('format_version')!r}/{d.get('arch')!r}; this "
                                      f"deploy_nas reads format {FORMAT_VERSION} 'vit'. Re-extract the model")
            d["blocks"] = tuple(BlockSpec(**b) for b in d["blocks"])
            return cls(**d)
        except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as err:
            raise DenseModelError(f"spec.json is not a valid dense spec ({err}); re-extract the model") from err
