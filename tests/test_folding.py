"""Each folding pass is a pure function of a state dict that leaves the outputs of the model unchanged."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from deploy_nas.folding import BatchNormFold, ScaleFold, apply_folds


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("layer", [nn.Linear(6, 5), nn.Conv2d(3, 5, 3)])
def test_scale_on_outputs_folds_into_rows_and_bias(layer):
    s = torch.rand(5) + 0.5
    x = torch.randn(2, 6) if isinstance(layer, nn.Linear) else torch.randn(2, 3, 7, 7)
    shape = (1, -1) if isinstance(layer, nn.Linear) else (1, -1, 1, 1)
    before = _state(layer)
    folded = ScaleFold("l", s).apply({f"l.{k}": v for k, v in before.items()})
    with torch.no_grad():
        expected = layer(x) * s.reshape(shape)
        layer.load_state_dict({k[2:]: v for k, v in folded.items()})
        torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-6)


def test_scale_on_inputs_folds_into_columns_and_leaves_the_bias():
    layer, s, x = nn.Linear(6, 5), torch.rand(6) + 0.5, torch.randn(3, 6)
    folded = ScaleFold("fc2", s, axis="in").apply({"fc2.weight": layer.weight.data, "fc2.bias": layer.bias.data})
    assert torch.equal(folded["fc2.bias"], layer.bias.data)
    with torch.no_grad():
        expected = layer(x * s)
        layer.load_state_dict({"weight": folded["fc2.weight"], "bias": folded["fc2.bias"]})
        torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bias", [True, False])
def test_batchnorm_folds_into_the_conv(bias):
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3, bias=bias), nn.BatchNorm2d(4)
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2)
    bn.bias.data.uniform_(-1, 1)
    bn.eval()
    state = {**{f"c.{k}": v for k, v in conv.state_dict().items()}, **{f"b.{k}": v for k, v in bn.state_dict().items()}}
    original = {k: v.clone() for k, v in state.items()}
    folded = BatchNormFold("c", "b", bn.eps).apply(state)
    assert set(folded) == {"c.weight", "c.bias"}  # no BN left
    assert all(torch.equal(original[k], state[k]) for k in state)  # pure: the input dict is untouched
    dense = nn.Conv2d(3, 4, 3)
    dense.load_state_dict({"weight": folded["c.weight"], "bias": folded["c.bias"]})
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(dense(x), bn(conv(x)), rtol=1e-5, atol=1e-5)


def test_folds_apply_in_order_and_refuse_unknown_layers():
    state = {"l.weight": torch.ones(2, 2), "l.bias": torch.ones(2)}
    out = apply_folds(state, [ScaleFold("l", torch.tensor([2.0, 3.0])), ScaleFold("l", torch.tensor([0.5, 0.5]))])
    assert out["l.bias"].tolist() == [1.0, 1.5] and state["l.bias"].tolist() == [1.0, 1.0]
    with pytest.raises(KeyError, match="lacks"):
        ScaleFold("missing", torch.ones(2)).apply(state)
    with pytest.raises(ValueError, match="3 values for 2 output channels"):
        ScaleFold("l", torch.ones(3)).apply(state)
