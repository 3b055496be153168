"""The AutoFormer supernet (Cream `Vision_TransformerSuper`), with the official state-dict key layout.

`forward(x, cfg)` reproduces the official model in eval mode for the sampled config; `subnet_state(cfg)` returns the
dense spec and the sliced weights that `deploy_nas.materialize` turns into a standalone model.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from deploy_nas.dense.spec import DenseSpec
from deploy_nas.dense.vit import ViTBlockSpec, ViTSpec
from deploy_nas.errors import CheckpointError, InvalidSubnetConfig, brief, check_fields, check_params
from deploy_nas.family import FAMILIES, FixedConfig, SubnetState
from deploy_nas.folding import ScaleFold
from deploy_nas.kernels import relpos
from deploy_nas.spaces import SPACES, check_config_type
from deploy_nas.spaces.autoformer import FAMILY, AutoFormerConfig, AutoFormerSpace
from deploy_nas.supernets.checkpoint import (
    check_state_dict,
    extract_state_dict,
    majority,
    read_checkpoint,
    stored_args,
)
from deploy_nas.supernets.elastic import (
    ElasticAttention,
    ElasticBlock,
    ElasticLayerNorm,
    ElasticLinear,
    ElasticPatchEmbed,
)


@dataclass(frozen=True)
class AutoFormerArch:
    """Super sizes and the flags that cannot be read from weights (`change_qkv`, `gp`, `pre_norm`)."""

    embed_dim: int
    depth: int
    mlp_hidden: int
    num_classes: int = 1000
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    head_dim: int = 64  # Q = heads * head_dim with change_qkv; the official code hard-codes 64
    table_dim: int = 64  # width of the relative-position tables (E_sup / H_sup)
    max_relative_position: int = 14
    qkv_bias: bool = True
    abs_pos: bool = True
    relative_position: bool = True
    change_qkv: bool = True
    gp: bool = True
    pre_norm: bool = True

    def __post_init__(self) -> None:
        owner = "AutoFormer supernet arch"
        check_fields(owner, CheckpointError, self, zero_ok=("max_relative_position",))
        if self.patch_size > self.img_size:
            raise CheckpointError(f"{owner}: patch_size {self.patch_size} > img_size {self.img_size}")
        # before any layer is built: a space file's mlp_ratio 1e6 made a supernet that filled the machine's memory
        check_params(owner, CheckpointError, self.params_bound(), f"embed_dim {self.embed_dim}, depth {self.depth}, "
                     f"MLP hidden {self.mlp_hidden}", "AutoFormer")

    def params_bound(self) -> int:
        """An upper bound of the supernet's parameter count, from the sizes alone (nothing allocated)."""
        E, h, tables = self.embed_dim, self.mlp_hidden, 4 * (2 * self.max_relative_position + 2) * self.table_dim
        block = 4 * E * E + 2 * E * h + 2 * h + 10 * E + tables  # q/k/v, proj, MLP, norms, biases, relative tables
        return self.depth * block + E * (self.in_chans * self.patch_size ** 2 + self.num_patches + self.num_classes
                                         + 4) + self.num_classes

    @classmethod
    def from_space(cls, space: AutoFormerSpace, **flags: Any) -> AutoFormerArch:
        return cls(embed_dim=space.super_embed_dim, depth=space.super_depth,
                   mlp_hidden=int(space.super_embed_dim * space.super_mlp_ratio), num_classes=space.num_classes,
                   img_size=space.img_size, patch_size=space.patch_size, in_chans=space.in_chans,
                   head_dim=space.head_dim, table_dim=space.super_embed_dim // space.super_num_heads,
                   max_relative_position=space.max_relative_position, **flags)

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AutoFormerArch:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class AutoFormerSupernet(nn.Module):
    family = FAMILY

    def __init__(self, arch: AutoFormerArch, reference_relpos: bool = False):
        super().__init__()
        self.arch = arch
        a = arch
        self.patch_embed_super = ElasticPatchEmbed(a.img_size, a.patch_size, a.in_chans, a.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, a.embed_dim))
        if a.abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, a.num_patches + 1, a.embed_dim))
        self.blocks = nn.ModuleList(
            ElasticBlock(a.embed_dim, a.mlp_hidden, ElasticAttention(
                a.embed_dim, a.head_dim, a.qkv_bias, a.change_qkv, a.relative_position, a.max_relative_position,
                a.table_dim, reference_relpos), a.pre_norm)
            for _ in range(a.depth))
        if a.pre_norm:
            self.norm = ElasticLayerNorm(a.embed_dim)
        self.head = ElasticLinear(a.embed_dim, a.num_classes)
        grid = a.img_size // a.patch_size
        iv, ih = relpos.relative_position_index(grid, a.max_relative_position)
        self.register_buffer("rel_index_v", iv, persistent=False)
        self.register_buffer("rel_index_h", ih, persistent=False)
        self.register_buffer("rel_offset", relpos.offset_index(grid, a.max_relative_position), persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Official init: truncated normal (std .02) for linears, tables, cls and pos; LN weight 1, biases 0."""
        for name, p in self.named_parameters():
            if name.endswith("bias") and p.dim() == 1:
                p.zero_()
            elif "layer_norm" in name or name.startswith("norm."):
                p.fill_(1.0)
            else:
                nn.init.trunc_normal_(p, std=0.02, generator=generator)

    # --- config handling --------------------------------------------------------------------------------------
    def check_config(self, cfg: Any) -> AutoFormerConfig:
        """Raise InvalidSubnetConfig unless `cfg` is an AutoFormer config that fits inside this supernet."""
        check_config_type(cfg, FAMILY, f"the {FAMILY} supernet")
        a = self.arch
        if not 1 <= cfg.depth <= a.depth:
            raise InvalidSubnetConfig(f"depth = {cfg.depth} does not fit the supernet (allowed: 1..{a.depth})")
        if not 1 <= cfg.embed_dim <= a.embed_dim:
            raise InvalidSubnetConfig(f"embed_dim = {cfg.embed_dim} does not fit the supernet (max {a.embed_dim})")
        for i, (heads, hidden) in enumerate(zip(cfg.num_heads, cfg.hidden_dims())):
            if heads < 1:  # before dims(), which divides by it
                raise InvalidSubnetConfig(f"num_heads[{i}] = {heads} does not fit the supernet (at least 1 head)")
            q_dim, hd, _ = self.blocks[i].attn.dims(cfg.embed_dim, heads)
            if q_dim > a.embed_dim or q_dim % heads or (a.relative_position and hd > a.table_dim):
                raise InvalidSubnetConfig(f"num_heads[{i}] = {heads} does not fit the supernet (Q = {q_dim} must be "
                                          f"<= {a.embed_dim} and split evenly into heads of <= {a.table_dim})")
            if not 1 <= hidden <= a.mlp_hidden:
                raise InvalidSubnetConfig(f"mlp_ratio[{i}] = {cfg.mlp_ratio[i]} gives MLP width {hidden}, "
                                          f"outside 1..{a.mlp_hidden}")
        return cfg

    # --- forward ----------------------------------------------------------------------------------------------
    def forward(self, x: Tensor, cfg: AutoFormerConfig) -> Tensor:
        cfg = self.check_config(cfg)
        E = cfg.embed_dim
        x = self.patch_embed_super(x, E)  # (B, N-1, E)
        x = torch.cat([self.cls_token[..., :E].expand(x.shape[0], -1, -1), x], dim=1)
        if self.arch.abs_pos:
            x = x + self.pos_embed[..., :E]
        index = (self.rel_index_v, self.rel_index_h, self.rel_offset) if self.arch.relative_position else None
        for block, heads, hidden in zip(self.blocks, cfg.num_heads, cfg.hidden_dims()):
            x = block(x, heads, hidden, index)  # blocks past cfg.depth are identities: not run
        if self.arch.pre_norm:
            x = self.norm(x)
        x = x[:, 1:].mean(dim=1) if self.arch.gp else x[:, 0]  # gp: mean over patch tokens (cls excluded)
        return self.head(x, self.arch.num_classes)

    # --- materialization --------------------------------------------------------------------------------------
    def dense_spec(self, cfg: AutoFormerConfig) -> DenseSpec:
        cfg = self.check_config(cfg)
        a = self.arch
        blocks = []
        for i, (heads, hidden) in enumerate(zip(cfg.num_heads, cfg.hidden_dims())):
            _, hd, scale = self.blocks[i].attn.dims(cfg.embed_dim, heads)
            blocks.append(ViTBlockSpec(num_heads=heads, head_dim=hd, attn_scale=scale, mlp_hidden=hidden,
                                       qkv_bias=a.qkv_bias, relative_position=a.relative_position))
        body = ViTSpec(patch_size=a.patch_size, embed_dim=cfg.embed_dim, blocks=tuple(blocks), pos_embed=a.abs_pos,
                       pool="mean" if a.gp else "cls", pre_norm=a.pre_norm, norm_eps=1e-5, activation="gelu_erf",
                       max_relative_position=a.max_relative_position)
        return DenseSpec("vit", a.img_size, a.in_chans, a.num_classes, body,
                         source={"family": FAMILY, "config": cfg.to_dict(), "config_id": cfg.id,
                                 "supernet": a.to_dict()})

    @torch.no_grad()
    def subnet_state(self, cfg: AutoFormerConfig, calib: Any = None) -> SubnetState:
        """The dense spec and a state dict in the dense `vit` key layout (fresh contiguous copies), with each block's
        attention scale folded into the q rows of its qkv layer (weights and bias), so that the dense spec's
        `attn_scale` is 1.0 and no op scales q at run time. AutoFormer scales both q k^T and the relative keys term
        q . r, which are linear in q: the fold is exact up to fp32 rounding (a power of two, as 64 ** -0.5, is
        exact). Under the compact lowering the scale would otherwise be one more op per layer on the augmented q,
        which runtimes do not fuse into their attention kernels."""
        unfolded = self.dense_spec(cfg)
        blocks = tuple(dataclasses.replace(b, attn_scale=1.0) for b in unfolded.body.blocks)
        spec = dataclasses.replace(unfolded, body=dataclasses.replace(unfolded.body, blocks=blocks))
        folds = tuple(ScaleFold(f"blocks.{i}.attn.qkv", torch.tensor([b.attn_scale, 1.0, 1.0]).repeat_interleave(
            b.num_heads * b.head_dim)) for i, b in enumerate(unfolded.body.blocks))  # q rows; k, v rows as they are
        E = cfg.embed_dim
        sd: dict[str, Tensor] = {}
        sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"] = self.patch_embed_super.sliced(E)
        sd["cls_token"] = self.cls_token[..., :E]
        if self.arch.abs_pos:
            sd["pos_embed"] = self.pos_embed[..., :E]
        for i, bs in enumerate(spec.body.blocks):
            sb, p = self.blocks[i], f"blocks.{i}."
            q_dim = bs.num_heads * bs.head_dim
            sd[p + "norm1.weight"], sd[p + "norm1.bias"] = sb.attn_layer_norm.sliced(E)
            sd[p + "attn.qkv.weight"], qkv_bias = sb.attn.sliced_qkv(E, q_dim)
            if qkv_bias is not None:
                sd[p + "attn.qkv.bias"] = qkv_bias
            sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"] = sb.attn.proj.sliced(q_dim, E)
            if bs.relative_position:
                for term in ("k", "v"):
                    table_v, table_h = getattr(sb.attn, f"rel_pos_embed_{term}").sliced(bs.head_dim)
                    sd[p + f"attn.rel_pos_{term}.table_v"], sd[p + f"attn.rel_pos_{term}.table_h"] = table_v, table_h
            sd[p + "norm2.weight"], sd[p + "norm2.bias"] = sb.ffn_layer_norm.sliced(E)
            sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"] = sb.fc1.sliced(E, bs.mlp_hidden)
            sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"] = sb.fc2.sliced(bs.mlp_hidden, E)
        if self.arch.pre_norm:
            sd["norm.weight"], sd["norm.bias"] = self.norm.sliced(E)
        sd["head.weight"], sd["head.bias"] = self.head.sliced(E, self.arch.num_classes)
        return SubnetState(spec, {k: v.detach().clone().contiguous() for k, v in sd.items()}, folds)

    # --- the rest of the supernet protocol ----------------------------------------------------------------------
    def param_count(self, cfg: AutoFormerConfig) -> int:
        return self.official_param_count(cfg)

    def no_weight_decay(self) -> set[str]:
        """The relative-position tables (and, as usual, biases, norms, cls and pos) train without weight decay."""
        return {n for n, p in self.named_parameters() if p.dim() <= 1 or "embeddings_table" in n
                or n in ("cls_token", "pos_embed")}

    def fixed(self, cfg: AutoFormerConfig, calib: Any = None) -> nn.Module:
        return FixedConfig(self, self.check_config(cfg)).eval()

    def meta(self) -> dict[str, Any]:
        return {"family": FAMILY, "arch": self.arch.to_dict()}

    def official_param_count(self, cfg: AutoFormerConfig) -> int:
        """`get_sampled_params_numel` of the official code, by its own formula (sampled modules + E * (2 + patches)).

        Like the official code it counts a position embedding even when the supernet has none (abs_pos off)."""
        spec = self.dense_spec(cfg)
        E, total = cfg.embed_dim, 0
        total += E * self.arch.in_chans * self.arch.patch_size ** 2 + E
        for bs in spec.body.blocks:
            q_dim = bs.num_heads * bs.head_dim
            total += 3 * q_dim * E + (3 * q_dim if bs.qkv_bias else 0) + q_dim * E + E + 4 * E
            total += 2 * E * bs.mlp_hidden + bs.mlp_hidden + E
            if bs.relative_position:
                total += 4 * (2 * self.arch.max_relative_position + 2) * bs.head_dim
        total += (2 * E if self.arch.pre_norm else 0) + E * self.arch.num_classes + self.arch.num_classes
        return total + E * (2 + self.arch.num_patches)


# --- the official checkpoint format -------------------------------------------------------------------------
def arch_from_state_dict(sd: dict[str, Tensor], change_qkv: bool = True, gp: bool = True,
                         pre_norm: bool = True, head_dim: int | None = None) -> AutoFormerArch:
    """Infer super sizes and R from tensor shapes (each size by the majority of the tensors that carry it, so a
    misshapen tensor is reported as such instead of resizing the model); the flags weights cannot tell are given."""
    needed = ["patch_embed_super.proj.weight", "cls_token", "head.weight", "blocks.0.fc1.weight"]
    missing = [k for k in needed if k not in sd]
    if missing:
        raise CheckpointError(f"not an AutoFormer supernet state dict: missing {', '.join(missing)} "
                              f"(found {len(sd)} keys, e.g. {', '.join(brief(k, 50) for k in list(sd)[:3])})")
    dims = {k: tuple(v.shape) for k, v in sd.items()}
    conv = dims["patch_embed_super.proj.weight"]
    if len(conv) != 4 or conv[2] != conv[3]:
        raise CheckpointError(f"patch_embed_super.proj.weight has shape {conv}; expected (E, C, P, P)")
    blocks = sorted({int(k.split(".")[1]) for k in sd if k.startswith("blocks.") and k.split(".")[1].isdigit()})
    if blocks != list(range(len(blocks))):
        raise CheckpointError(f"blocks are numbered {blocks[:8]}...; expected 0..{len(blocks) - 1}")
    E = majority([conv[0]] + [s[-1] for k, s in dims.items() if s and (k == "cls_token" or k.endswith(
        ("layer_norm.weight", "norm.weight")))], "E")
    mlp = majority([dims[k][0] for k in dims if k.endswith(".fc1.weight") and dims[k]], "the MLP width")
    tables = [dims[k] for k in dims if "embeddings_table" in k and len(dims[k]) == 2]
    relative = bool(tables)
    table_rows, table_dim = majority(tables, "the relative-position tables") if relative else (30, 64)
    if table_rows % 2:
        raise CheckpointError(f"relative-position table has {table_rows} rows; expected an even 2R+2")
    pos = dims.get("pos_embed")
    if pos is not None:
        grid = math.isqrt(max(pos[1] - 1, 0)) if len(pos) == 3 else 0
        if len(pos) != 3 or grid * grid != pos[1] - 1:
            raise CheckpointError(f"pos_embed has shape {pos}; expected (1, 1 + a square number of patches, E)")
    else:
        grid = 224 // conv[-1]  # without abs pos the input size is not in the weights; the official default is 224
    if len(dims["head.weight"]) != 2:
        raise CheckpointError(f"head.weight has shape {dims['head.weight']}; expected (classes, E)")
    return AutoFormerArch(
        embed_dim=E, depth=len(blocks), mlp_hidden=mlp, num_classes=dims["head.weight"][0],
        img_size=grid * conv[-1], patch_size=conv[-1], in_chans=conv[1],
        head_dim=head_dim if head_dim is not None else table_dim if relative else 64, table_dim=table_dim,
        max_relative_position=table_rows // 2 - 1, qkv_bias="blocks.0.attn.qkv.bias" in sd, abs_pos=pos is not None,
        relative_position=relative, change_qkv=change_qkv, gp=gp, pre_norm=pre_norm)


def space_for_arch(arch: AutoFormerArch) -> AutoFormerSpace | None:
    """The registered space whose super sizes match a supernet (the official T/S/B checkpoints), if any."""
    for name in SPACES:
        s = SPACES.get(name)
        if s.family == FAMILY and (s.super_embed_dim, s.super_depth, int(s.super_embed_dim * s.super_mlp_ratio),
                                   s.img_size, s.patch_size, s.num_classes) == (
                arch.embed_dim, arch.depth, arch.mlp_hidden, arch.img_size, arch.patch_size, arch.num_classes):
            return s
    return None


# --- the family ---------------------------------------------------------------------------------------------
ARGS_FLAGS = ("change_qkv", "gp")  # the flags the official training's `args` record (its post_norm builds nothing)
MAX_HEAD_DIM = 4096


@dataclass(frozen=True)
class AutoFormerImportOptions:
    """What the official weights cannot tell. `change_qkv`, `gp`: None (not given) takes what the checkpoint's
    `args` record, else on, as in the official runs; `pre_norm` (official: on, whatever args.post_norm says); the
    head dim is 64 unless the tables say otherwise."""

    change_qkv: bool | None = None
    gp: bool | None = None
    pre_norm: bool = True
    head_dim: int | None = None

    def __post_init__(self) -> None:
        kinds = {**dict.fromkeys(ARGS_FLAGS, (bool, type(None))), "pre_norm": bool}
        bad = [f"{name}={brief(getattr(self, name))}: expected true or false" for name, kind in kinds.items()
               if not isinstance(getattr(self, name), kind)]
        head_dim = self.head_dim
        if head_dim is not None and (isinstance(head_dim, bool) or not isinstance(head_dim, int)
                                     or not 1 <= head_dim <= MAX_HEAD_DIM):
            bad.append(f"head_dim={brief(head_dim)}: expected 1..{MAX_HEAD_DIM} (or none: the tables' width)")
        if bad:
            raise InvalidSubnetConfig(f"import option {'; '.join(bad)}")


def import_flags(options: AutoFormerImportOptions, obj: Any, source: str) -> dict[str, bool]:
    """The flags the weights cannot tell: `change_qkv` and `gp` as given, else as the checkpoint's `args` record
    them, else on (the official runs); a given value that contradicts `args` is refused, as the weights were trained
    the way `args` says. `pre_norm` as given."""
    args = stored_args(obj)
    flags = {"pre_norm": options.pre_norm}
    for name in ARGS_FLAGS:
        given, recorded = getattr(options, name), args.get(name)
        if recorded is not None and not isinstance(recorded, bool):  # not the official store_true flag
            if given is None:
                raise CheckpointError(f"{source}: its args record {name} = {brief(recorded)}, not true or false; "
                                      f"give --import-option {name}=true|false as it was trained")
            recorded = None
        if given is not None and recorded is not None and given != recorded:
            raise CheckpointError(f"import option {name}={str(given).lower()} contradicts {source}'s args, which "
                                  f"record {name}={str(recorded).lower()} (how it was trained); drop the option")
        flags[name] = next(v for v in (given, recorded, True) if v is not None)
    return flags


class AutoFormerFamily:
    name = FAMILY
    config_type = AutoFormerConfig
    space_type = AutoFormerSpace
    import_options = AutoFormerImportOptions
    train_rule = "sandwich"
    tiny_space = "autoformer-tiny"
    default_space = "autoformer-demo"  # the space of the embedded default supernet

    def config_from_dict(self, obj: Any) -> AutoFormerConfig:
        return AutoFormerConfig.from_dict(obj)

    def space_from_dict(self, obj: Any, name: str | None = None) -> AutoFormerSpace:
        return AutoFormerSpace.from_dict(obj, name=name)

    def claims(self, state_dict: dict[str, Tensor]) -> bool:
        """Whether a state dict has the official AutoFormer layout (for --checkpoint without --family)."""
        return "patch_embed_super.proj.weight" in state_dict

    def from_checkpoint(self, obj: Any, options: AutoFormerImportOptions, source: str = "checkpoint"
                        ) -> tuple[AutoFormerSupernet, AutoFormerSpace | None]:
        flags = import_flags(options, obj, source)
        sd = extract_state_dict(obj, source)
        arch = arch_from_state_dict(sd, head_dim=options.head_dim, **flags)
        model = AutoFormerSupernet(arch)
        check_state_dict(model, sd, FAMILY, "check the file is an official AutoFormer supernet and the import "
                                            "options (change_qkv, pre_norm) match how it was trained")
        model.load_state_dict(sd, strict=True)
        return model.eval(), space_for_arch(arch)

    def load_official(self, path: Any, options: AutoFormerImportOptions) -> tuple[AutoFormerSupernet, Any]:
        """An official checkpoint (.pth/.pth.tar with {'model': ...}, or safetensors)."""
        return self.from_checkpoint(read_checkpoint(path), options, str(path))

    def build_supernet(self, space: AutoFormerSpace, seed: int | None = 0) -> AutoFormerSupernet:
        model = AutoFormerSupernet(AutoFormerArch.from_space(space))
        model.reset_parameters(torch.Generator().manual_seed(seed or 0))
        return model.eval()

    def supernet_from_meta(self, meta: dict[str, Any]) -> AutoFormerSupernet:
        return AutoFormerSupernet(AutoFormerArch.from_dict(meta["arch"]))

    def cost_features(self, space: AutoFormerSpace, cfg: AutoFormerConfig) -> dict[str, float]:
        """Per-image MACs (in millions) of the GEMMs and attention maps, and the per-layer counts."""
        n = (space.img_size // space.patch_size) ** 2 + 1
        e, d = cfg.embed_dim, cfg.depth
        qkv = [h * space.head_dim for h in cfg.num_heads]
        return {"const": 1.0, "depth": float(d), "embed_x_depth": float(e * d),
                "attn_macs": sum(n * e * 4 * q for q in qkv) / 1e6,  # qkv + proj
                "mlp_macs": sum(2 * n * e * int(e * r) for r in cfg.mlp_ratio) / 1e6,
                "attn_map": sum(2 * n * n * q for q in qkv) / 1e6}  # q k^T and attn v

    def tolerances(self) -> dict:
        return {}


FAMILIES.register(FAMILY, AutoFormerFamily())
