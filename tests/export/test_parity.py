"""Parity: every backend/precision against the torch reference (one parametrized test), the metrics and gates on
hand-made outputs, and the per-family tolerance override."""
from __future__ import annotations

import json

import numpy as np
import pytest

from deploy_nas.errors import ParityError
from deploy_nas.export.parity import (
    TOLERANCES,
    OutputParity,
    Tolerance,
    check_parity,
    compare,
    cosine_rows,
    gate,
    gate_failures,
    tolerance_for,
    top1_agreement,
    topk_agreement,
)

TARGETS = [pytest.param(b, p, marks=[getattr(pytest.mark, b)] if b in ("openvino", "tensorrt") else [],
                        id=f"{b}-{p}")
           for b, p in (("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "fp16"), ("openvino", "int8"),
                        ("tensorrt", "fp32"), ("tensorrt", "fp16"))]


@pytest.mark.parametrize("backend, precision", TARGETS)
def test_engine_matches_torch_within_its_tolerance(engines, reference_engines, parity_batch, kind, backend,
                                                   precision):
    result = check_parity(reference_engines[kind], engines(backend, precision, kind), parity_batch)
    assert result.passed, result.failures
    assert result.tolerance == TOLERANCES[backend, precision] and result.samples == len(parity_batch)
    o = result.outputs[0]
    assert o.shape == (len(parity_batch), 10) and o.reference_max_abs > 1.0  # trained: logits far from ties
    if precision == "fp32":
        assert result.max_abs <= TOLERANCES[backend, "fp32"].max_abs and o.top1_tie_aware == 1.0
    else:
        assert o.top1_tie_aware >= TOLERANCES[backend, precision].min_top1 and o.cosine_mean > 0.98


# ------------------------------------------------------------------------------------ metrics on known values


def test_compare_reports_every_metric():
    ref = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    got = ref + np.array([[0.0, 0.0, 0.1], [0.0, 0.5, 0.0]])
    o = compare("logits", got, ref)
    assert (o.max_abs, o.reference_max_abs) == (0.5, 3.0)
    assert o.max_rel == pytest.approx(0.25) and o.mean_abs == pytest.approx(0.1)
    assert o.top1 == 1.0 and o.top5 == 1.0 and 0.98 < o.cosine_min < o.cosine_mean < 1.0


def test_cosine_and_agreement_edge_cases():
    assert cosine_rows(np.zeros((1, 3)), np.zeros((1, 3))).tolist() == [1.0]
    assert cosine_rows(np.array([[1.0, 0.0]]), np.array([[-1.0, 0.0]])).tolist() == [-1.0]
    a = np.array([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    assert topk_agreement(a, a[:, ::-1], 5) == pytest.approx(4 / 5) and topk_agreement(a, a, 1) == 1.0
    ref = np.array([[1.0, 0.999, -3.0]])  # classes 0 and 1 are a tie within 0.01 std
    assert top1_agreement(np.array([[0.0, 1.0, 0.0]]), ref, tie=0.01) == 1.0
    assert top1_agreement(np.array([[0.0, 1.0, 0.0]]), ref, tie=0.0) == 0.0


def test_gates_name_the_metric_and_the_numbers():
    o = OutputParity("logits", (2, 3), max_abs=0.2, mean_abs=0.1, max_rel=0.1, cosine_min=0.9, cosine_mean=0.95,
                     top1=0.5, top1_tie_aware=0.5, top5=0.8, reference_max_abs=3.0)
    failures = list(gate_failures(o, Tolerance(max_abs=1e-4, min_cosine=0.999, min_mean_cosine=0.99, min_top1=1.0,
                                               min_top5=0.9)))
    assert failures == ["logits: max abs 0.2 > 0.0001", "logits: min cosine 0.900000 < 0.999",
                        "logits: mean cosine 0.950000 < 0.99",
                        "logits: top-1 agreement 0.500 < 1 (ties within 0 std)", "logits: top-5 agreement 0.800 < 0.9"]
    assert list(gate_failures(o, Tolerance())) == []  # nothing gated: reported only


class _Fixed:
    """An engine returning fixed outputs (to drive check_parity with known numbers)."""

    input_name = "input"

    def __init__(self, name: str, out: np.ndarray, precision: str = "fp32"):
        self.name, self.precision, self.out = name, precision, out

    def infer(self, feeds):
        return {"logits": self.out[: len(feeds["input"])]}


def test_failed_gate_raises_parity_error_carrying_the_result(tmp_path):
    ref = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    result = check_parity(_Fixed("torch", ref), _Fixed("onnxruntime", ref + 1e-3), np.zeros((4, 3, 8, 8), np.float32))
    assert not result.passed and result.failures[0].startswith("logits: max abs 0.001")
    with pytest.raises(ParityError, match="parity failed for onnxruntime/fp32") as info:
        gate(result)
    assert info.value.result is result and info.value.exit_code == 1
    written = json.loads(result.write(tmp_path).read_text())
    assert written["passed"] is False and written["tolerance"]["source"] == "default"


def test_a_family_can_override_one_tolerance(monkeypatch):
    from deploy_nas.family import FAMILIES

    loose = Tolerance(max_abs=1e-2, min_cosine=0.999, min_top1=1.0, note="deeper models reorder more sums")
    family = FAMILIES.get("autoformer")
    monkeypatch.setattr(type(family), "tolerances", lambda self: {("onnxruntime", "fp32"): loose})
    t = tolerance_for("onnxruntime", "fp32", "autoformer")
    assert t.max_abs == 1e-2 and t.source == "family autoformer"
    assert tolerance_for("openvino", "fp32", "autoformer") == TOLERANCES["openvino", "fp32"]  # others unchanged
    ref = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    reference = _Fixed("torch", ref)
    result = check_parity(reference, _Fixed("onnxruntime", ref + 1e-3), np.zeros((4, 3, 8, 8), np.float32),
                          family="autoformer")
    assert result.passed and result.tolerance.source == "family autoformer"
    assert result.to_dict()["tolerance"]["source"] == "family autoformer"  # what report.json records
