"""The S3 family: the supernet the paper describes (the official code has none), the official dense S3-T/S/B
checkpoints, and the Family object.

**Supernet** (AutoFormer-style weight entanglement, state-dict keys in the official `SSSTransformer` layout with the
supernet's sizes): every stage holds its largest blocks, and a subnet takes, per tensor:
* a leading prefix along every axis (widths, MLP units, heads of the qkv/proj/table columns, the first `depth`
  blocks of a stage), except
* the fused qkv, whose rows are three blocks [q | k | v] of Q_super rows each: a subnet with Q takes the first Q rows
  of each block (q, k and v channel j always share their weights);
* the relative-position table ((2W - 1)^2 rows for the stage's largest window W): a window w takes the centre
  (2w - 1)^2 rows, i.e. the same relative offsets, whatever the window;
* patch merging's LayerNorm(4C) and reduction columns: four blocks (one per sub-grid) of C_super; a width C takes the
  first C channels of each sub-grid.
These layouts (`LAYOUTS`) serve both ways: slicing a subnet out (`take`) and placing smaller tensors into a larger
supernet (`place`: importing an official dense model, growing a supernet for an evolved space).

The head dim of a block is Q / heads and its scale (Q / heads) ** -0.5 (32 ** -0.5 in the official models). Windows
follow the official rule: a window >= the stage's map is clipped to it and never shifts; odd blocks shift by w // 2.

**Official checkpoints** (`{'model': state_dict}` of `SSSTransformer`): the architecture is read from the tensor
shapes (widths, blocks, heads from the table columns, window from the table rows, MLP width, Q); the input size
from the shifted blocks' `attn_mask` (or the `img_size` import option, default 224). The buffers
`relative_position_index` and `attn_mask` are checked against what that architecture implies and then dropped:
the dense model rebuilds them. `load_official` returns an S3 supernet whose space is the single point of the
checkpoint's network (the registered S3-T/S/B space when it is one of them), so `extract` and `run` work unchanged.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deploy_nas.dense import swin
from deploy_nas.dense.spec import DenseSpec
from deploy_nas.dense.swin import SwinBlockSpec, SwinSpec, SwinStageSpec, SwinTransformer
from deploy_nas.errors import MAX_IMG_SIZE, CheckpointError, InvalidSubnetConfig, brief, check_fields
from deploy_nas.family import FAMILIES, FixedConfig, SubnetState
from deploy_nas.kernels import window as win
from deploy_nas.spaces import SPACES, check_config_type
from deploy_nas.spaces.s3 import (
    FAMILY,
    OFFICIAL,
    OFFICIAL_HEAD_DIM,
    S3Config,
    S3Space,
    S3StageSuper,
    point_space,
)
from deploy_nas.supernets.checkpoint import check_state_dict, extract_state_dict, majority, read_checkpoint

NORM_EPS = 1e-5
# the constants an official checkpoint stores per block beside its weights (checked, then rebuilt); a key of
# another place that ends so is no buffer of S3's, and is refused as an unexpected key
_BUFFER_KEY = re.compile(r"layers\.\d+\.blocks\.\d+\.(attn\.relative_position_index|attn_mask)")


def is_buffer_key(key: str) -> bool:
    return _BUFFER_KEY.fullmatch(key) is not None


@dataclass(frozen=True)
class S3Arch:
    """The supernet's sizes: input, classes and per stage the largest sizes (`S3StageSuper`)."""

    stages: tuple[S3StageSuper, ...]
    img_size: int = 224
    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 1000
    patch_norm: bool = True
    qkv_bias: bool = True

    def __post_init__(self) -> None:
        """Checked where it is read (supernet.json, a checkpoint's shapes); the stages check themselves."""
        owner = "S3 supernet arch"
        check_fields(owner, CheckpointError, self)
        if not self.stages or self.patch_size > self.img_size:
            raise CheckpointError(f"{owner}: {len(self.stages)} stages, patch_size {self.patch_size} within img_size "
                                  f"{self.img_size}: one of these does not hold")

    @classmethod
    def from_space(cls, space: S3Space, **flags: Any) -> S3Arch:
        return cls(space.supers(), space.img_size, space.patch_size, space.in_chans, space.num_classes, **flags)

    @property
    def resolutions(self) -> tuple[int, ...]:
        r = self.img_size // self.patch_size
        return tuple(r // 2 ** i for i in range(len(self.stages)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> S3Arch:
        d = dict(d)
        d["stages"] = tuple(S3StageSuper(**s) for s in d["stages"])
        return cls(**d)


# ------------------------------------------------------------------------------------------------ the layouts


def _layout(key: str) -> tuple[Any, ...]:
    """How each axis of a supernet tensor holds a smaller one: "prefix", ("blocks", n) or "centre"."""
    if key.endswith("attn.qkv.weight"):
        return (("blocks", 3), "prefix")
    if key.endswith("attn.qkv.bias"):
        return (("blocks", 3),)
    if key.endswith("relative_position_bias_table"):
        return ("centre", "prefix")
    if key.endswith(("downsample.norm.weight", "downsample.norm.bias")):
        return (("blocks", 4),)
    if key.endswith("downsample.reduction.weight"):
        return ("prefix", ("blocks", 4))
    return ()


def _positions(kind: Any, small: int, big: int) -> Tensor | None:
    """Indices along a big axis that hold a small one (None: a plain prefix)."""
    if kind == "prefix":
        return None
    if kind == "centre":  # rows of a ((2W-1)^2) table holding the offsets of a ((2w-1)^2) one
        ws, wb = (math.isqrt(small) + 1) // 2, (math.isqrt(big) + 1) // 2
        rows = torch.arange(wb - ws, wb + ws - 1)
        return (rows[:, None] * (2 * wb - 1) + rows[None, :]).reshape(-1)
    n = kind[1]
    return (torch.arange(n)[:, None] * (big // n) + torch.arange(small // n)[None, :]).reshape(-1)


def take(key: str, tensor: Tensor, shape: tuple[int, ...]) -> Tensor:
    """The sub-tensor of shape `shape` a subnet uses (differentiable: index_select / narrow)."""
    layout = _layout(key)
    for axis, n in enumerate(shape):
        kind = layout[axis] if axis < len(layout) else "prefix"
        if n == tensor.shape[axis]:
            continue
        pos = _positions(kind, n, tensor.shape[axis])
        tensor = tensor.narrow(axis, 0, n) if pos is None else tensor.index_select(axis, pos.to(tensor.device))
    return tensor


def place(key: str, small: Tensor, target: Tensor) -> Tensor:
    """A copy of `target` with `small` written where `take` would read it back (the rest of `target` kept)."""
    if small.shape == target.shape:
        return small.detach().to(target.dtype).clone()
    layout = _layout(key)
    index = []
    for axis, (n, m) in enumerate(zip(small.shape, target.shape)):
        pos = _positions(layout[axis] if axis < len(layout) else "prefix", n, m)
        index.append(torch.arange(n) if pos is None else pos)
    out = target.detach().clone()
    out[torch.meshgrid(*index, indexing="ij")] = small.detach().to(out.dtype)
    return out


# ------------------------------------------------------------------------------------------------ the supernet


def _block_modules(c: S3StageSuper, qkv_bias: bool) -> nn.Module:
    block = nn.Module()
    block.norm1 = nn.LayerNorm(c.embed_dim, eps=NORM_EPS)
    block.attn = nn.Module()
    block.attn.qkv = nn.Linear(c.embed_dim, 3 * c.qkv_dim, bias=qkv_bias)
    block.attn.proj = nn.Linear(c.qkv_dim, c.embed_dim)
    block.attn.relative_position_bias_table = nn.Parameter(torch.zeros((2 * c.window_size - 1) ** 2, c.num_heads))
    block.norm2 = nn.LayerNorm(c.embed_dim, eps=NORM_EPS)
    block.mlp = nn.Module()
    block.mlp.fc1 = nn.Linear(c.embed_dim, c.mlp_hidden)
    block.mlp.fc2 = nn.Linear(c.mlp_hidden, c.embed_dim)
    return block


def _stage_modules(c: S3StageSuper, nxt: S3StageSuper | None, qkv_bias: bool) -> nn.Module:
    stage = nn.Module()
    stage.blocks = nn.ModuleList(_block_modules(c, qkv_bias) for _ in range(c.depth))
    if nxt is not None:
        stage.downsample = nn.Module()
        stage.downsample.norm = nn.LayerNorm(4 * c.embed_dim, eps=NORM_EPS)
        stage.downsample.reduction = nn.Linear(4 * c.embed_dim, nxt.embed_dim, bias=False)
    return stage


class S3Supernet(nn.Module):
    """Runs any config of its space, passed explicitly: `supernet(x, cfg)`."""

    family = FAMILY

    def __init__(self, arch: S3Arch):
        super().__init__()
        self.arch = a = arch
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(a.in_chans, a.stages[0].embed_dim, a.patch_size, a.patch_size)
        if a.patch_norm:
            self.patch_embed.norm = nn.LayerNorm(a.stages[0].embed_dim, eps=NORM_EPS)
        nxt = list(a.stages[1:]) + [None]
        self.layers = nn.ModuleList(_stage_modules(c, n, a.qkv_bias) for c, n in zip(a.stages, nxt))
        self.norm = nn.LayerNorm(a.stages[-1].embed_dim, eps=NORM_EPS)
        self.head = nn.Linear(a.stages[-1].embed_dim, a.num_classes)
        self._constants: dict[tuple, Tensor] = {}
        self._shapes: dict[str, dict[str, tuple[int, ...]]] = {}

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """The official initialisation: truncated normal (std .02) for linear weights and the tables, zero biases,
        unit LayerNorms; the patch conv keeps PyTorch's default (Kaiming uniform), drawn from `generator`."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
            elif isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                bound = 1 / math.sqrt(module.weight[0].numel())
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)
        for name, p in self.named_parameters():
            if name.endswith("relative_position_bias_table"):
                nn.init.trunc_normal_(p, std=0.02, generator=generator)

    # --- configs ----------------------------------------------------------------------------------------------
    def check_config(self, cfg: Any) -> S3Config:
        """`cfg` if it fits inside this supernet; else InvalidSubnetConfig naming the stage, block and sizes."""
        check_config_type(cfg, FAMILY, f"the {FAMILY} supernet")
        if cfg.stages != len(self.arch.stages):
            raise InvalidSubnetConfig(f"config has {cfg.stages} stages, the supernet {len(self.arch.stages)}")
        for s, (sup, res) in enumerate(zip(self.arch.stages, self.arch.resolutions)):
            if cfg.depths[s] > sup.depth or cfg.embed_dim[s] > sup.embed_dim:
                raise InvalidSubnetConfig(f"stage {s + 1}: depth {cfg.depths[s]} and width {cfg.embed_dim[s]} must "
                                          f"fit the supernet's {sup.depth} blocks of width {sup.embed_dim}")
            for b in range(cfg.depths[s]):
                self._check_block(cfg, s, b, sup, res)
        return cfg

    def _check_block(self, cfg: S3Config, s: int, b: int, sup: S3StageSuper, res: int) -> None:
        heads, q, w = cfg.num_heads[s][b], cfg.qkv_dim[s][b], cfg.window_size[s][b]
        hidden = cfg.hidden_dims(s)[b]
        where = f"stage {s + 1} block {b + 1}"
        if w < res and res % w:
            raise InvalidSubnetConfig(f"{where}: window {w} does not divide stage {s + 1}'s {res}x{res} map; use a "
                                      f"divisor of {res}, or >= {res} for global attention")
        if heads > sup.num_heads or q > sup.qkv_dim or not 1 <= hidden <= sup.mlp_hidden \
                or min(w, res) > sup.window_size:
            raise InvalidSubnetConfig(f"{where}: {heads} heads, Q-K-V {q}, MLP {hidden}, window {min(w, res)} must "
                                      f"fit the supernet's {sup.num_heads} heads, Q-K-V {sup.qkv_dim}, MLP "
                                      f"{sup.mlp_hidden}, window {sup.window_size}")

    # --- forward ----------------------------------------------------------------------------------------------
    def forward(self, x: Tensor, cfg: S3Config) -> Tensor:
        cfg = self.check_config(cfg)
        a, c0 = self.arch, cfg.embed_dim[0]
        if x.shape[-2:] != (a.img_size, a.img_size):
            raise InvalidSubnetConfig(f"input is {tuple(x.shape[-2:])}, the supernet takes {a.img_size}x{a.img_size}")
        p = self.patch_embed
        x = F.conv2d(x, p.proj.weight[:c0], p.proj.bias[:c0], stride=a.patch_size).flatten(2).transpose(1, 2)
        if a.patch_norm:
            x = self._norm(p.norm, x)  # (B, R * R, C0)
        for s, (stage, res) in enumerate(zip(self.layers, a.resolutions)):
            for b in range(cfg.depths[s]):
                x = self._block(stage.blocks[b], x, res, cfg, s, b)
            if s + 1 < cfg.stages:
                x = self._merge(stage.downsample, x, res, cfg.embed_dim[s + 1])
        x = self._norm(self.norm, x).mean(dim=1)  # (B, C)
        return F.linear(x, self.head.weight[:, :x.shape[-1]], self.head.bias)

    @staticmethod
    def _norm(norm: nn.LayerNorm, x: Tensor) -> Tensor:
        c = x.shape[-1]
        return F.layer_norm(x, (c,), norm.weight[:c], norm.bias[:c], NORM_EPS)

    def _block(self, blk: nn.Module, x: Tensor, res: int, cfg: S3Config, s: int, b: int) -> Tensor:
        c, heads, q = x.shape[-1], cfg.num_heads[s][b], cfg.qkv_dim[s][b]
        w, shift = win.effective_window(res, cfg.window_size[s][b], b)
        h = win.cyclic_shift(self._norm(blk.norm1, x).reshape(-1, res, res, c), -shift)  # (B, R, R, C)
        qkv_w = take("attn.qkv.weight", blk.attn.qkv.weight, (3 * q, c))
        qkv_b = take("attn.qkv.bias", blk.attn.qkv.bias, (3 * q,)) if blk.attn.qkv.bias is not None else None
        table = take("relative_position_bias_table", blk.attn.relative_position_bias_table,
                     ((2 * w - 1) ** 2, heads))
        bias = table[self._constant(("index", w), lambda: win.relative_position_index(w), x.device)]  # (N, N, H)
        mask = self._constant(("mask", res, w, shift), lambda: win.attention_mask(res, w, shift), x.device) \
            if shift else None
        h = win.window_attention(win.window_partition(h, res, w), qkv_w, qkv_b, blk.attn.proj.weight[:c, :q],
                                 blk.attn.proj.bias[:c], heads, (q // heads) ** -0.5, bias.permute(2, 0, 1), mask)
        x = x + win.cyclic_shift(win.window_reverse(h, res, w), shift).reshape(-1, res * res, c)
        hidden = cfg.hidden_dims(s)[b]
        m = blk.mlp
        h = F.gelu(F.linear(self._norm(blk.norm2, x), m.fc1.weight[:hidden, :c], m.fc1.bias[:hidden]))
        return x + F.linear(h, m.fc2.weight[:c, :hidden], m.fc2.bias[:c])

    def _merge(self, down: nn.Module, x: Tensor, res: int, out_dim: int) -> Tensor:
        c = x.shape[-1]
        h = win.patch_merge(x, res)  # (B, R * R / 4, 4C)
        weight = take("downsample.norm.weight", down.norm.weight, (4 * c,))
        bias = take("downsample.norm.bias", down.norm.bias, (4 * c,))
        h = F.layer_norm(h, (4 * c,), weight, bias, NORM_EPS)
        return F.linear(h, take("downsample.reduction.weight", down.reduction.weight, (out_dim, 4 * c)))

    def _constant(self, key: tuple, make: Any, device: torch.device) -> Tensor:
        """Index and mask constants, built once per (kind, sizes, device)."""
        full = key + (str(device),)
        if full not in self._constants:
            self._constants[full] = make().to(device)
        return self._constants[full]

    # --- materialization --------------------------------------------------------------------------------------
    def dense_spec(self, cfg: S3Config) -> DenseSpec:
        cfg = self.check_config(cfg)
        a = self.arch
        stages = []
        for s, res in enumerate(a.resolutions):
            blocks = []
            for b in range(cfg.depths[s]):
                heads, q = cfg.num_heads[s][b], cfg.qkv_dim[s][b]
                w, shift = win.effective_window(res, cfg.window_size[s][b], b)
                blocks.append(SwinBlockSpec(heads, q // heads, float((q // heads) ** -0.5), w, shift,
                                            cfg.hidden_dims(s)[b], a.qkv_bias))
            out = cfg.embed_dim[s + 1] if s + 1 < cfg.stages else None
            stages.append(SwinStageSpec(cfg.embed_dim[s], res, tuple(blocks), out))
        body = SwinSpec(a.patch_size, tuple(stages), patch_norm=a.patch_norm, norm_eps=NORM_EPS)
        return DenseSpec(swin.ARCH, a.img_size, a.in_chans, a.num_classes, body,
                         source={"family": FAMILY, "config": cfg.to_dict(), "config_id": cfg.id,
                                 "supernet": a.to_dict()})

    @torch.no_grad()
    def subnet_state(self, cfg: S3Config, calib: Any = None) -> SubnetState:
        """The dense spec and the subnet's weights in the dense `swin` layout (fresh contiguous copies); no folds."""
        spec = self.dense_spec(cfg)
        own = self.state_dict()
        state = {k: take(k, own[k], shape).clone().contiguous() for k, shape in dense_shapes(spec).items()}
        return SubnetState(spec, state)

    @torch.no_grad()
    def load_subnet_state(self, spec: DenseSpec, state: dict[str, Tensor]) -> None:
        """Place a dense subnet's weights (the official layout, sizes of `spec`) into this supernet; what the
        subnet does not cover keeps its current values."""
        own = self.state_dict()
        for key, tensor in state.items():
            own[key].copy_(place(key, tensor, own[key]))

    # --- the rest of the supernet protocol ----------------------------------------------------------------------
    def param_count(self, cfg: S3Config) -> int:
        """The dense subnet's parameters, as `SSSTransformer` counts them (the tables included, the buffers not)."""
        return swin.param_count(self.dense_spec(cfg))

    def macs(self, cfg: S3Config) -> int:
        """Per-image multiply-accumulates of the subnet (convolution, linears, attention matmuls)."""
        return swin.macs(self.dense_spec(cfg))

    def no_weight_decay(self) -> set[str]:
        """Biases, norms and the relative-position tables (the official `no_weight_decay_keywords`)."""
        return {n for n, p in self.named_parameters() if p.dim() <= 1 or n.endswith("relative_position_bias_table")}

    def fixed(self, cfg: S3Config, calib: Any = None) -> nn.Module:
        return FixedConfig(self, self.check_config(cfg)).eval()

    def meta(self) -> dict[str, Any]:
        return {"family": FAMILY, "arch": self.arch.to_dict()}


def dense_shapes(spec: DenseSpec) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the dense model's weights (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        model = SwinTransformer(spec)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def grown(supernet: S3Supernet, arch: S3Arch, seed: int = 0) -> S3Supernet:
    """A supernet of `arch` (each size at least the old one's) that inherits every weight of `supernet` where the
    layouts put it; the new positions are freshly initialised. Every old config computes exactly as before."""
    old = supernet.arch
    for s, (a, b) in enumerate(zip(old.stages, arch.stages)):
        small = [k for k, v in asdict(a).items() if v > getattr(b, k)]
        if small or len(old.stages) != len(arch.stages):
            raise InvalidSubnetConfig(f"a grown supernet cannot be smaller: stage {s + 1} {small}")
    model = S3Supernet(arch)
    model.reset_parameters(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        own = model.state_dict()
        for key, tensor in supernet.state_dict().items():
            own[key].copy_(place(key, tensor.detach().cpu(), own[key]))
    return model.eval()


# --------------------------------------------------------------------------------------- official checkpoints


def _shape(sd: dict[str, Tensor], key: str, ndim: int) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"not an S3 (SSSTransformer) state dict: {brief(key, 80)} is missing")
    shape = tuple(sd[key].shape)
    if len(shape) != ndim or min(shape, default=1) < 1:
        raise CheckpointError(f"{brief(key, 80)} has shape {shape}; expected {ndim} non-empty dimensions")
    return shape


def _numbered(sd: dict[str, Tensor], prefix: str) -> int:
    """How many `prefix{i}.` groups the keys hold (numbered 0..n-1 without gaps)."""
    found = sorted({int(k[len(prefix):].split(".")[0]) for k in sd
                    if k.startswith(prefix) and k[len(prefix):].split(".")[0].isdigit()})
    if not found or found != list(range(len(found))) or len(found) > 1024:
        raise CheckpointError(f"{prefix}* entries are numbered {brief(found)}; expected 0..n-1")
    return len(found)


def _table_window(rows: int, where: str) -> int:
    side = math.isqrt(rows)
    if side * side != rows or side % 2 == 0:
        raise CheckpointError(f"{where}.attn.relative_position_bias_table has {rows} rows; expected (2w - 1)^2 "
                              "for a window w")
    return (side + 1) // 2


@dataclass(frozen=True)
class _Block:
    width: int
    heads: int
    qkv: int
    window: int
    hidden: int


def _read_block(sd: dict[str, Tensor], where: str) -> _Block:
    width = _shape(sd, f"{where}.norm1.weight", 1)[0]
    rows, heads = _shape(sd, f"{where}.attn.relative_position_bias_table", 2)
    qkv_rows = _shape(sd, f"{where}.attn.qkv.weight", 2)[0]
    hidden = _shape(sd, f"{where}.mlp.fc1.weight", 2)[0]
    if qkv_rows % 3 or qkv_rows // 3 != heads * OFFICIAL_HEAD_DIM or heads * OFFICIAL_HEAD_DIM != width:
        raise CheckpointError(f"{where}: {heads} heads x {OFFICIAL_HEAD_DIM} = {heads * OFFICIAL_HEAD_DIM}, qkv rows "
                              f"{qkv_rows} (3 x Q) and width {width} disagree; the official SSSTransformer has a "
                              f"head dim of {OFFICIAL_HEAD_DIM}, so heads x {OFFICIAL_HEAD_DIM} = Q = width")
    return _Block(width, heads, qkv_rows // 3, _table_window(rows, where), hidden)


def _ratio_for(hidden: int, width: int) -> float:
    """An MLP ratio r with int(width * r) == hidden (the official truncation): the one with the fewest decimals
    (up to 6), as a YAML would write it (105 units on width 32: 3.3, not 105 / 32 = 3.28125; any ratio giving the
    same width matches it when a config is validated), else the smallest."""
    for digits in range(7):
        scale = 10 ** digits
        r = math.ceil(hidden * scale / width) / scale  # the smallest multiple of 10^-digits from hidden / width up
        if int(width * r) == hidden:
            return r
    r = hidden / width
    while int(width * r) < hidden:
        r = math.nextafter(r, math.inf)
    return r


def config_from_state_dict(sd: dict[str, Tensor]) -> tuple[S3Config, list[list[_Block]]]:
    """The network an official state dict holds (per stage, per block), read from its tensor shapes."""
    stages = []
    for s in range(_numbered(sd, "layers.")):
        stages.append([_read_block(sd, f"layers.{s}.blocks.{i}") for i in range(_numbered(sd, f"layers.{s}.blocks."))])
    for s, blocks in enumerate(stages):
        width = majority([b.width for b in blocks], f"stage {s + 1}'s width")
        odd = [i for i, b in enumerate(blocks) if b.width != width]
        if odd:
            raise CheckpointError(f"layers.{s}.blocks.{odd[0]} has width {blocks[odd[0]].width}, its stage "
                                  f"{width}: the blocks of a stage share their width")
    cfg = S3Config(depths=tuple(len(b) for b in stages), embed_dim=tuple(b[0].width for b in stages),
                   mlp_ratio=tuple(tuple(_ratio_for(x.hidden, x.width) for x in b) for b in stages),
                   num_heads=tuple(tuple(x.heads for x in b) for b in stages),
                   qkv_dim=tuple(tuple(x.qkv for x in b) for b in stages),
                   window_size=tuple(tuple(x.window for x in b) for b in stages))
    return cfg, stages


def _img_size(sd: dict[str, Tensor], cfg: S3Config, patch: int, given: int | None) -> int:
    """The input size the shifted blocks' masks imply (checked against `given`), else `given` or 224."""
    sizes = set()
    for s in range(cfg.stages):
        for b in range(cfg.depths[s]):
            key = f"layers.{s}.blocks.{b}.attn_mask"
            if key in sd:
                nw, n, m = _shape(sd, key, 3)
                w = cfg.window_size[s][b]
                side = math.isqrt(nw)
                if side * side != nw or n != m or n != w * w:
                    raise CheckpointError(f"{key} has shape {(nw, n, m)}; a window of {w} needs (windows, {w * w}, "
                                          f"{w * w})")
                sizes.add(side * w * 2 ** s * patch)
    if len(sizes) > 1 or (given is not None and sizes and given not in sizes):
        raise CheckpointError(f"the attn_mask buffers imply input sizes {sorted(sizes)}"
                              + (f", the img_size import option says {given}" if given else "")
                              + "; the checkpoint is inconsistent or the option is wrong")
    return next(iter(sizes)) if sizes else (given or 224)


def check_buffers(sd: dict[str, Tensor], cfg: S3Config, img_size: int, patch: int) -> None:
    """Every block's relative_position_index and (shifted blocks only) attn_mask must equal what its window, shift
    and map imply; CheckpointError names the first that does not."""
    res = img_size // patch
    for s in range(cfg.stages):
        for b in range(cfg.depths[s]):
            where = f"layers.{s}.blocks.{b}"
            w, shift = win.effective_window(res, cfg.window_size[s][b], b)
            _expect(sd, f"{where}.attn.relative_position_index", win.relative_position_index(w),
                    f"window {w}")
            if shift:
                _expect(sd, f"{where}.attn_mask", win.attention_mask(res, w, shift),
                        f"window {w} shifted by {shift} on a {res}x{res} map")
            elif f"{where}.attn_mask" in sd:
                raise CheckpointError(f"{where}.attn_mask is present, but the block does not shift (window {w} on a "
                                      f"{res}x{res} map, block {b + 1}); the checkpoint does not match its shapes")
        res //= 2


def _expect(sd: dict[str, Tensor], key: str, expected: Tensor, what: str) -> None:
    if key not in sd:
        raise CheckpointError(f"{key} is missing; an official S3 checkpoint holds it ({what})")
    got = sd[key]
    if tuple(got.shape) != tuple(expected.shape) or not torch.equal(got.to(expected.dtype), expected):
        raise CheckpointError(f"{key} (shape {tuple(got.shape)}) is not what {what} implies (shape "
                              f"{tuple(expected.shape)}); the checkpoint's buffers disagree with its architecture")


def official_space(cfg: S3Config, img_size: int, patch: int, in_chans: int, classes: int) -> S3Space:
    """The registered S3-T/S/B space when `cfg` is one of them at 224 px, else the point space of `cfg`."""
    for name, official in OFFICIAL.items():
        space = SPACES.get(name)
        if (img_size, patch, in_chans, classes) == (space.img_size, space.patch_size, space.in_chans,
                                                    space.num_classes) and space.contains(cfg) \
                and cfg.depths == official.depths:
            return space
    return point_space(cfg, "checkpoint", img_size, patch, in_chans, classes)


def official_state_dict(model: SwinTransformer) -> dict[str, Tensor]:
    """What `SSSTransformer.state_dict()` holds for a dense S3 model: its weights plus the index and mask buffers."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for s, stage in enumerate(model.spec.body.stages):
        for b, blk in enumerate(stage.blocks):
            sd[f"layers.{s}.blocks.{b}.attn.relative_position_index"] = win.relative_position_index(blk.window_size)
            if blk.shift_size:
                sd[f"layers.{s}.blocks.{b}.attn_mask"] = win.attention_mask(stage.resolution, blk.window_size,
                                                                          blk.shift_size)
    return sd


# ------------------------------------------------------------------------------------------------- the family


@dataclass(frozen=True)
class S3ImportOptions:
    """What an official S3 checkpoint cannot always tell: its input size, when no block shifts (then there is no
    attn_mask to read it from). None: read it from the masks, else 224."""

    img_size: int | None = None


class S3Family:
    name = FAMILY
    config_type = S3Config
    space_type = S3Space
    import_options = S3ImportOptions
    train_rule = "sandwich"
    tiny_space = "s3-tiny"
    default_space = "s3-tiny"

    def config_from_dict(self, obj: Any) -> S3Config:
        return S3Config.from_dict(obj)

    def space_from_dict(self, obj: Any, name: str | None = None) -> S3Space:
        return S3Space.from_dict(obj, name=name)

    def commands(self) -> tuple[Any, ...]:
        from deploy_nas.cli_s3 import evolve_space

        return (evolve_space,)

    def claims(self, state_dict: dict[str, Tensor]) -> bool:
        """The official SSSTransformer layout (`layers.{s}.blocks.{i}...relative_position_bias_table`)."""
        return "patch_embed.proj.weight" in state_dict and \
            "layers.0.blocks.0.attn.relative_position_bias_table" in state_dict

    def from_checkpoint(self, obj: Any, options: S3ImportOptions, source: str = "checkpoint"
                        ) -> tuple[S3Supernet, S3Space]:
        sd = extract_state_dict(obj, source)
        conv = _shape(sd, "patch_embed.proj.weight", 4)
        classes = _shape(sd, "head.weight", 2)[0]
        if options.img_size is not None and not 1 <= options.img_size <= MAX_IMG_SIZE:
            raise InvalidSubnetConfig(f"import option img_size={options.img_size} is not an image size "
                                      f"(1..{MAX_IMG_SIZE})")
        cfg, _ = config_from_state_dict(sd)
        buffers = any(map(is_buffer_key, sd))
        if not buffers and options.img_size is None:  # weights alone (a file filtered to its parameters)
            raise CheckpointError(f"{source} holds S3 weights without their relative_position_index and attn_mask "
                                  "buffers, whose shapes give the input size: pass --import-option img_size=N (224 "
                                  "for the official S3-T/S/B); the buffers are rebuilt from it")
        img = _img_size(sd, cfg, conv[-1], options.img_size)
        try:
            space = official_space(cfg, img, conv[-1], conv[1], classes)
        except InvalidSubnetConfig as err:
            masks = any(is_buffer_key(k) and k.endswith("attn_mask") for k in sd)
            hint = "" if masks or options.img_size is not None else (
                f"; it holds no attn_mask buffer to read the input size from, so {img} px was assumed: pass "
                "--import-option img_size=N")
            raise CheckpointError(f"{source}: its shapes describe no S3 network at {img} px ({err}){hint}") from None
        if buffers:  # all of them, each equal to what the architecture implies (none: rebuilt, as they would be)
            check_buffers(sd, cfg, img, conv[-1])
        weights = {k: v for k, v in sd.items() if not is_buffer_key(k)}
        with torch.device("meta"):  # no initialisation: every weight is written below (zeros where uncovered)
            model = S3Supernet(S3Arch.from_space(space, patch_norm="patch_embed.norm.weight" in sd,
                                                 qkv_bias="layers.0.blocks.0.attn.qkv.bias" in sd))
        # zeros on the CPU in place of the meta tensors (`to_empty` would run the meta device's Python kernels, whose
        # first use imports torch's compiler stack: about two seconds a process)
        model.load_state_dict({k: torch.zeros(v.shape, dtype=v.dtype, device="cpu")
                               for k, v in model.state_dict().items()}, assign=True)
        spec = model.dense_spec(cfg)
        with torch.device("meta"):
            shapes = SwinTransformer(spec)
        check_state_dict(shapes, weights, FAMILY, "check the file is an official S3 (SSSTransformer) checkpoint" + (
            "" if buffers else f" and that img_size={img} is its input size (its windows follow from that size)"))
        model.load_subnet_state(spec, weights)
        return model.eval(), space

    def load_official(self, path: Any, options: S3ImportOptions) -> tuple[S3Supernet, S3Space]:
        """An official S3 checkpoint (.pth with {'model': ...}, or safetensors)."""
        return self.from_checkpoint(read_checkpoint(path), options, str(path))

    def build_supernet(self, space: S3Space, seed: int | None = 0) -> S3Supernet:
        model = S3Supernet(S3Arch.from_space(space))
        model.reset_parameters(torch.Generator().manual_seed(seed or 0))
        return model.eval()

    def supernet_from_meta(self, meta: dict[str, Any]) -> S3Supernet:
        return S3Supernet(S3Arch.from_dict(meta["arch"]))

    def cost_features(self, space: S3Space, cfg: S3Config) -> dict[str, float]:
        """Per-image MACs (millions) of the GEMMs, the attention matmuls and patch merging; blocks and windows."""
        feats = {"const": 1.0, "blocks": float(sum(cfg.depths)), "gemm_macs": 0.0, "attn_macs": 0.0,
                 "merge_macs": 0.0, "windows": 0.0}
        for s, res in enumerate(space.resolutions[:cfg.stages]):
            c, tokens = cfg.embed_dim[s], res * res
            for b, (q, hidden) in enumerate(zip(cfg.qkv_dim[s], cfg.hidden_dims(s))):
                w, _ = win.effective_window(res, cfg.window_size[s][b], b)
                feats["gemm_macs"] += tokens * (4 * q * c + 2 * c * hidden) / 1e6
                feats["attn_macs"] += 2 * tokens * w * w * q / 1e6
                feats["windows"] += tokens / (w * w)
            if s + 1 < cfg.stages:
                feats["merge_macs"] += tokens * c * cfg.embed_dim[s + 1] / 1e6
        return feats

    def tolerances(self) -> dict:
        return {}


FAMILIES.register(FAMILY, S3Family())

__all__ = ["S3Arch", "S3Family", "S3ImportOptions", "S3Supernet", "check_buffers", "config_from_state_dict",
           "dense_shapes", "grown", "official_space", "official_state_dict", "place", "take"]
