"""FLOPs (as MACs, the way the papers count them) and parameters of dense models, with fvcore.

fvcore skips operators it has no handle for, silently under-counting (e.g. `scaled_dot_product_attention`). We
register handles for every operator the dense models use and report anything still unhandled.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

# Operators that do no multiply-accumulates (elementwise, data movement, index ops): counted as 0 on purpose.
ZERO_MAC_OPS = (
    "aten::add", "aten::add_", "aten::sub", "aten::mul", "aten::mul_", "aten::div", "aten::gelu", "aten::softmax",
    "aten::mean", "aten::sum", "aten::gather", "aten::scatter_add", "aten::new_zeros", "aten::zeros", "aten::expand",
    "aten::cat", "aten::flatten", "aten::transpose", "aten::permute", "aten::reshape", "aten::view",
    "aten::select", "aten::slice", "aten::unbind", "aten::contiguous", "aten::clone", "aten::t", "aten::numpy_T",
    "aten::pad", "aten::constant_pad_nd", "aten::clamp", "aten::arange", "aten::sigmoid", "aten::relu",
    "aten::hardswish", "aten::tanh", "aten::exp", "aten::rsub", "aten::sqrt", "aten::max", "aten::pow",
)


def _shape(value: Any) -> list[int]:
    return list(value.type().sizes())


def sdpa_mac_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """scaled_dot_product_attention: q @ k^T plus attn @ v, i.e. B*H*Nq*Nk*(d + dv) MACs."""
    q, k, v = (_shape(x) for x in inputs[:3])
    batch = 1
    for s in q[:-2]:
        batch *= s
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def _zero_handle(inputs: list[Any], outputs: list[Any]) -> int:
    return 0


@dataclass
class FlopReport:
    macs: int
    params: int
    by_module: dict[str, int] = field(default_factory=dict)
    unsupported: dict[str, int] = field(default_factory=dict)
    by_operator: dict[str, int] = field(default_factory=dict)  # linear, matmul, conv, layer_norm (5 per element)...

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, example: torch.Tensor | None = None) -> FlopReport:
    """MACs of one forward pass at batch 1 (for dense models, the input size comes from their spec)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore traces with torch.jit, which warns that it is deprecated
        from fvcore.nn import FlopCountAnalysis

    if example is None:
        spec = model.spec
        example = torch.zeros(1, spec.in_chans, spec.img_size, spec.img_size)
    analysis = FlopCountAnalysis(model.eval(), (example,))
    analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_mac_handle)
    analysis.set_op_handle(*[x for op in ZERO_MAC_OPS for x in (op, _zero_handle)])
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        total = int(analysis.total())
    by_module = {k: int(v) for k, v in analysis.by_module().items() if k.count(".") <= 1 and k}
    return FlopReport(total, count_params(model), by_module, dict(analysis.unsupported_ops()),
                      {k: int(v) for k, v in analysis.by_operator().items()})
