"""The dense `vit` arch: a standalone ViT with a cls token, an explicit attention scale per block and, optionally,
AutoFormer's 2D relative-position terms (lowered through `deploy_nas.kernels.relpos`, never as (N, N, D) tensors).

q is scaled before q @ k^T (TensorRT's fused attention needs the scale on Q or K before the first batched matmul;
NVIDIA names stability and speed as the reasons); with relative positions the scale multiplies the augmented q
(q and its relative logits: AutoFormer scales the keys term by the same factor). AutoFormer's materialization folds
the scale into the q rows of qkv instead (`attn_scale` 1.0): no op scales q, and the first batched matmul reads
the projection's output directly.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from deploy_nas.console import Table
from deploy_nas.dense.layers import Mlp, PatchEmbed, count_parameters, merge_heads, pool_tokens, scaled, split_heads
from deploy_nas.dense.spec import ARCHS, LEGACY_READERS, DenseSpec
from deploy_nas.errors import DenseModelError, brief, check_fields, check_sizes
from deploy_nas.kernels import relpos

ARCH = "vit"
LOWERINGS = ("compact", "augmented", "separable", "gather")


@dataclass(frozen=True)
class ViTBlockSpec:
    """One block. The fields after `relative_position` describe pruned ViTs (ViT-Slim): ragged heads, whole
    sub-blocks pruned to their constant output bias, and per-block token sets."""

    num_heads: int  # 0: the attention is pruned away and the block adds its constant output bias (attn.bias)
    head_dim: int  # the width of every head (padded layout: the widest kept head, zero-padded)
    # always explicit: pruning heads or head dims must not change it; 1.0 where materialization folded it into the q
    # rows of qkv (AutoFormer), and then no op scales q
    attn_scale: float
    mlp_hidden: int  # 0: the MLP is pruned away and the block adds its constant output bias (mlp.bias)
    qkv_bias: bool = True
    relative_position: bool = False
    head_widths: tuple[int, ...] | None = None  # the kept channels of each head (ragged heads)
    # grouped layout: heads of equal width side by side, (heads, width) per group in qkv order; None: padded layout
    head_groups: tuple[tuple[int, int], ...] | None = None
    tokens: tuple[int, ...] | None = None  # the block's tokens: positions among the previous block's tokens
    masked_tokens: int = 0  # tokens masked before this block: one constant key/value carrying log(their count)
    token_scale: bool = False  # a learned scale per token on both normalized inputs (soft token masks)

    def __post_init__(self) -> None:
        check_fields("spec.json block", DenseModelError, self,  # 0 heads, width or hidden units: pruned away
                     zero_ok=("num_heads", "head_dim", "mlp_hidden", "masked_tokens"))
        if self.head_widths is not None and (len(self.head_widths) != self.num_heads or
                                             not all(1 <= w <= self.head_dim for w in self.head_widths)):
            raise DenseModelError(f"spec.json block: head_widths = {brief(self.head_widths)} must give each of the "
                                  f"{self.num_heads} heads a width in 1..head_dim {self.head_dim}")
        if self.head_groups is not None and sum(h for h, _ in self.head_groups) != self.num_heads:
            raise DenseModelError(f"spec.json block: head_groups = {brief(self.head_groups)} must hold the "
                                  f"{self.num_heads} heads")


@dataclass(frozen=True)
class ViTSpec:
    """The body of a `vit` spec."""

    patch_size: int
    embed_dim: int
    blocks: tuple[ViTBlockSpec, ...]
    pos_embed: bool = True
    pool: str = "cls"  # "cls" | "mean" (over patch tokens only; the cls token still attends)
    pre_norm: bool = True
    norm_eps: float = 1e-5
    activation: str = "gelu_erf"  # "gelu_erf" | "gelu_tanh"
    max_relative_position: int | None = None
    # how the relative-position terms lower (kernels/relpos.py; all exact): "compact" (one QK and one AV matmul
    # with a small MatMul and a constant-index gather on each side), "augmented" (the same two matmuls with the
    # separable terms around them, the form of early 2026-12), "separable" (per-row tables, batched MatMuls,
    # broadcast adds) or "gather" (GatherElements and ScatterElements over (N, N) indices: the lowering used
    # before 2026-12). The older forms stay to measure against.
    relpos_lowering: str = "compact"

    def __post_init__(self) -> None:
        check_fields("spec.json body", DenseModelError, self)
        if self.max_relative_position is not None:
            check_sizes("spec.json body", DenseModelError, {"max_relative_position": 0}, integers=True,
                        max_relative_position=self.max_relative_position)
        for name, allowed in (("pool", ("cls", "mean")), ("activation", ("gelu_erf", "gelu_tanh")),
                              ("relpos_lowering", LOWERINGS)):
            if getattr(self, name) not in allowed:
                raise DenseModelError(f"spec.json body: {name} = {brief(getattr(self, name))} (one of "
                                      f"{', '.join(allowed)})")

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViTSpec:
        known = {f.name for f in fields(cls)}
        body = {k: v for k, v in d.items() if k in known}
        body["blocks"] = tuple(_block_from_dict(b) for b in d["blocks"])
        return cls(**body)


def _block_from_dict(b: dict[str, Any]) -> ViTBlockSpec:
    b = dict(b)
    groups = b.get("head_groups")
    if groups is not None and not (isinstance(groups, list) and all(isinstance(g, list) and len(g) == 2
                                                                     for g in groups)):
        raise DenseModelError(f"spec.json block: head_groups = {brief(groups)} must be [heads, width] pairs")
    lists = {k: b[k] for k in ("head_widths", "tokens") if b.get(k) is not None}
    flat = {"head_groups": [v for g in groups for v in g]} if groups else {}
    check_sizes("spec.json block", DenseModelError, {"tokens": 0}, integers=True, **lists, **flat)
    b.update({k: tuple(v) for k, v in lists.items()})
    if groups is not None:
        b["head_groups"] = tuple(tuple(g) for g in groups)
    return ViTBlockSpec(**b)


def token_counts(spec: DenseSpec) -> list[int]:
    """The token count entering the first block and leaving each block; raises DenseModelError for a block whose
    `tokens` are not increasing positions among the previous block's, or a block with relative positions that does
    not see the whole grid (its index constants are sized by the grid)."""
    grid = spec.img_size // spec.body.patch_size
    counts = [grid * grid + 1]
    for i, s in enumerate(spec.body.blocks):
        n = counts[-1]
        if s.tokens is not None:
            t = list(s.tokens)
            if not t or t != sorted(set(t)) or t[-1] >= n:
                raise DenseModelError(f"spec.json block {i}: tokens = {brief(s.tokens)} must be increasing positions "
                                      f"in 0..{n - 1} (the previous block's tokens)")
            n = len(t)
        if s.relative_position and n != grid * grid + 1:
            raise DenseModelError(f"spec.json block {i}: relative positions need all {grid * grid + 1} tokens, "
                                  f"not {n}")
        masked = grid * grid + 1 - n if s.num_heads else 0  # what the tokens dropped so far leave masked (ViT-Slim)
        if s.masked_tokens != masked:
            raise DenseModelError(f"spec.json block {i}: masked_tokens = {brief(s.masked_tokens)}, but its tokens "
                                  f"leave {masked} of {grid * grid + 1} masked"
                                  f"{'' if s.num_heads else ' (its attention is pruned away)'}")
        counts.append(n)
    return counts


def _format1(d: dict[str, Any]) -> DenseSpec:
    """spec.json format 1: one flat ViT spec (the only arch there was)."""
    if d.get("arch") != ARCH:
        raise DenseModelError(f"spec.json format 1 with arch {str(d.get('arch'))[:20]!r}; format 1 only had 'vit'")
    try:
        return DenseSpec(ARCH, d["img_size"], d["in_chans"], d["num_classes"], ViTSpec.from_dict(d),
                         source=dict(d.get("source") or {}))
    except (TypeError, KeyError, ValueError) as err:
        raise DenseModelError(f"spec.json (format 1) is not a valid vit spec ({type(err).__name__}: "
                              f"{str(err)[:200]}); re-extract the model") from err


LEGACY_READERS[1] = _format1


class RelIndex(NamedTuple):
    """Index constants of the relative-position lowerings, shared by the blocks (None where the lowering needs
    none): the (N, N) indices of the gather form, the (G, G) offsets and key features of the separable and
    augmented forms, the constants of the compact form."""

    iv: Tensor | None
    ih: Tensor | None
    offsets: Tensor
    features: Tensor
    compact: relpos.CompactIndex | None


class RelativePosition(nn.Module):
    """The two (2R+2, head_dim) tables of one relative-position term (shared by the heads)."""

    def __init__(self, rows: int, head_dim: int):
        super().__init__()
        self.table_v = nn.Parameter(torch.zeros(rows, head_dim))
        self.table_h = nn.Parameter(torch.zeros(rows, head_dim))


class Attention(nn.Module):
    """Multi-head attention with q scaled first; optionally AutoFormer's relative-position terms, heads of several
    widths (grouped layout), and one constant bias-only key/value standing for `masked_tokens` masked tokens."""

    def __init__(self, dim: int, spec: ViTBlockSpec, rel_rows: int | None, lowering: str = "separable",
                 tokens: int = 0):
        super().__init__()
        if lowering not in LOWERINGS:
            raise ValueError(f"unknown relative-position lowering {lowering!r}; choose one of {LOWERINGS}")
        self.lowering = lowering
        self.num_heads, self.head_dim, self.scale = spec.num_heads, spec.head_dim, spec.attn_scale
        self.groups = spec.head_groups or ((spec.num_heads, spec.head_dim),)
        inner = sum(h * w for h, w in self.groups)
        self.qkv = nn.Linear(dim, 3 * inner, bias=spec.qkv_bias)
        self.proj = nn.Linear(inner, dim)
        self.relative_position = spec.relative_position
        if self.relative_position:
            self.rel_pos_k = RelativePosition(rel_rows, spec.head_dim)
            self.rel_pos_v = RelativePosition(rel_rows, spec.head_dim)
        self.masked = spec.masked_tokens
        if self.masked:  # the masked tokens' common key, once, with the log of their count: exact softmax weights
            offset = torch.zeros(tokens + 1)
            offset[-1] = math.log(self.masked)
            self.register_buffer("masked_offset", offset, persistent=False)  # added to (B, H, N, N + 1) logits

    def forward(self, x: Tensor, index: RelIndex) -> Tensor:
        qkv = self.qkv(x)
        if len(self.groups) > 1 or self.masked:
            return self.proj(torch.cat([self._group(qkv, g, x.shape[0]) for g in range(len(self.groups))], dim=-1))
        q, k, v = split_heads(qkv, 3, self.num_heads, self.head_dim)  # each (B, H, N, d)
        if self.relative_position and self.lowering == "compact":
            out = relpos.compact_attention(q, k, v, self.scale, (self.rel_pos_k.table_v, self.rel_pos_k.table_h),
                                           (self.rel_pos_v.table_v, self.rel_pos_v.table_h), index.compact)
            return self.proj(merge_heads(out))
        q = scaled(q, self.scale)
        if self.relative_position and self.lowering == "augmented":
            out = relpos.attention(q, k, v, (self.rel_pos_k.table_v, self.rel_pos_k.table_h),
                                   (self.rel_pos_v.table_v, self.rel_pos_v.table_h), index.offsets, index.features)
            return self.proj(merge_heads(out))
        attn = q @ k.transpose(-2, -1)
        if self.relative_position:
            attn = attn + self._keys(q, index)
        attn = attn.softmax(dim=-1)
        out = attn @ v
        if self.relative_position:
            out = out + self._values(attn, index)
        return self.proj(merge_heads(out))

    def _group(self, qkv: Tensor, g: int, batch: int) -> Tensor:
        """Attention of head group g: its slice of the qkv output; (B, N, heads * width)."""
        start = 3 * sum(h * w for h, w in self.groups[:g])
        heads, width = self.groups[g]
        q, k, v = split_heads(qkv[..., start:start + 3 * heads * width], 3, heads, width)
        q = scaled(q, self.scale)
        if not self.masked:
            return merge_heads((q @ k.transpose(-2, -1)).softmax(dim=-1) @ v)
        bias = self.qkv.bias[start:start + 3 * heads * width].reshape(3, heads, 1, width)
        k = torch.cat([k, bias[1].expand(batch, heads, 1, width)], dim=2)  # + the masked tokens' key
        v = torch.cat([v, bias[2].expand(batch, heads, 1, width)], dim=2)
        logits = q @ k.transpose(-2, -1) + self.masked_offset  # (B, heads, N, N + 1)
        return merge_heads(logits.softmax(dim=-1) @ v)

    def _keys(self, q: Tensor, index: RelIndex) -> Tensor:
        tables = (self.rel_pos_k.table_v, self.rel_pos_k.table_h)
        if self.lowering == "gather":
            return relpos.key_logits_gather(q, *tables, index.iv, index.ih)
        return relpos.key_logits(q, *tables, index.offsets)

    def _values(self, attn: Tensor, index: RelIndex) -> Tensor:
        tables = (self.rel_pos_v.table_v, self.rel_pos_v.table_h)
        if self.lowering == "gather":
            return relpos.value_term_scatter(attn, *tables, index.iv, index.ih)
        return relpos.value_term(attn, *tables, index.offsets)


class ConstantBias(nn.Module):
    """A sub-block whose every channel was pruned: it still adds its output bias (`bias`) to the residual."""

    def __init__(self, dim: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor, *index: Any) -> Tensor:
        return self.bias


class Block(nn.Module):
    def __init__(self, dim: int, spec: ViTBlockSpec, body: ViTSpec, rel_rows: int | None, tokens: int):
        super().__init__()
        self.pre_norm = body.pre_norm
        self.norm1 = nn.LayerNorm(dim, eps=body.norm_eps)
        self.norm2 = nn.LayerNorm(dim, eps=body.norm_eps)
        self.attn = Attention(dim, spec, rel_rows, body.relpos_lowering, tokens) if spec.num_heads else \
            ConstantBias(dim)
        self.mlp = Mlp(dim, spec.mlp_hidden, body.activation) if spec.mlp_hidden else ConstantBias(dim)
        if spec.tokens is not None:  # a constant gather: this block's tokens among the previous block's
            self.register_buffer("tokens", torch.tensor(spec.tokens, dtype=torch.long), persistent=False)
        else:
            self.tokens = None
        self.token_scale = nn.Parameter(torch.ones(tokens, 1)) if spec.token_scale else None

    def forward(self, x: Tensor, index: RelIndex) -> Tensor:
        if self.tokens is not None:
            x = x[:, self.tokens]  # (B, N_prev, E) -> (B, N, E)
        if not self.pre_norm:
            x = self.norm1(x + self.attn(x, index))
            return self.norm2(x + self.mlp(x))
        x = x + self.attn(self._scaled(self.norm1(x)), index)
        return x + self.mlp(self._scaled(self.norm2(x)))

    def _scaled(self, h: Tensor) -> Tensor:
        return h if self.token_scale is None else h * self.token_scale


class VisionTransformer(nn.Module):
    """A standalone ViT. Input (B, C, H, W) float32, output (B, num_classes) logits."""

    body_type = ViTSpec

    def __init__(self, spec: DenseSpec):
        super().__init__()
        self.spec = spec
        b: ViTSpec = spec.body
        E = b.embed_dim
        self.patch_embed = PatchEmbed(b.patch_size, spec.in_chans, E)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, E))
        grid = spec.img_size // b.patch_size
        if b.pos_embed:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, E))
        rows = 2 * b.max_relative_position + 2 if any(s.relative_position for s in b.blocks) else None
        tokens = token_counts(spec)
        self.blocks = nn.ModuleList(Block(E, s, b, rows, n) for s, n in zip(b.blocks, tokens[1:]))
        self.norm = nn.LayerNorm(E, eps=b.norm_eps) if b.pre_norm else nn.Identity()
        self.head = nn.Linear(E, spec.num_classes)
        # Index constants shared by every block (not weights: rebuilt from the spec): those of the compact form,
        # the (G, G) offsets of the separable form, or the (N, N) indices of the gather form.
        R = b.max_relative_position or 0
        iv, ih = relpos.relative_position_index(grid, R) if b.relpos_lowering == "gather" else (None, None)
        self.register_buffer("rel_index_v", iv, persistent=False)
        self.register_buffer("rel_index_h", ih, persistent=False)
        self.register_buffer("rel_offset", relpos.offset_index(grid, R), persistent=False)
        self.register_buffer("rel_features", relpos.indicator_features(grid), persistent=False)
        self.compact = rows is not None and b.relpos_lowering == "compact"
        if self.compact:
            for name, value in relpos.compact_index(grid, R)._asdict().items():
                self.register_buffer(f"rel_compact_{name}", value, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, N, E)
        if self.spec.body.pos_embed:
            x = x + self.pos_embed
        compact = relpos.CompactIndex(*(getattr(self, f"rel_compact_{n}") for n in relpos.CompactIndex._fields)) \
            if self.compact else None
        index = RelIndex(self.rel_index_v, self.rel_index_h, self.rel_offset, self.rel_features, compact)
        for block in self.blocks:
            x = block(x, index)
        return self.head(pool_tokens(self.norm(x), self.spec.body.pool))

    def architecture_table(self, macs_by_module: dict[str, int]) -> Table:
        b: ViTSpec = self.spec.body
        table = Table(f"{self.spec.source.get('family', ARCH)} {self.spec.source.get('config_id', '')}  "
                      f"{self.spec.img_size}px/{b.patch_size}  embed {b.embed_dim}  depth {b.depth}  pool {b.pool}",
                      ("block", "tokens", "heads", "head widths", "Q", "scale", "MLP", "rel-pos", "params", "MMAC"))
        n = (self.spec.img_size // b.patch_size) ** 2 + 1
        for i, (s, blk) in enumerate(zip(b.blocks, self.blocks)):
            n = len(s.tokens) if s.tokens is not None else n
            widths = s.head_widths or (s.head_dim,) * s.num_heads
            table.add_row(i, n, s.num_heads, _widths(widths, s), sum(widths), f"{s.attn_scale:.4g}", s.mlp_hidden,
                          "yes" if s.relative_position else "no", f"{count_parameters(blk):,}",
                          f"{macs_by_module.get(f'blocks.{i}', 0) / 1e6:.1f}")
        return table


def _widths(widths: tuple[int, ...], s: ViTBlockSpec) -> str:
    """Kept widths of the heads; "(padded to d)" when the padded layout carries them at a larger width."""
    text = ",".join(map(str, widths)) if widths else "-"
    pad = s.head_groups is None and s.head_widths is not None and any(w != s.head_dim for w in widths)
    return f"{text} (padded to {s.head_dim})" if pad else text


ARCHS.register(ARCH, VisionTransformer)
