"""Parity: an engine's outputs against the reference engine's (the dense torch model) on a fixed batch.

Tolerances, one row per (backend, precision); `None` means "reported, not gated":

* fp32 (onnxruntime, openvino): max abs 1e-4. Same math in float32, only the summation order and fused kernels
  differ; on these models the measured error is ~1e-7, so 1e-4 leaves three orders of margin for wider models
  and still catches a wrong operator (which moves logits by >= 1e-2). Cosine >= 0.99999 and top-1 agreement 1
  (ties within 1e-3 std excepted).
* tensorrt fp32: max abs 1e-3. GPU kernels reorder long reductions and may use TF32 tensor cores (10-bit
  mantissa) where the builder is allowed to.
* fp16 (openvino, tensorrt): max abs 5e-2, min cosine 0.999, top-1 >= 0.99 with ties within 0.01 std. fp16 has
  a unit roundoff of 4.9e-4 and errors grow with the logit range: 2e-4 on logits O(0.3), 2e-3 on logits O(3)
  measured here, ~1e-2 expected on trained ImageNet logits O(20); an fp16 LayerNorm or Softmax overflow moves
  logits by O(1) and fails all three gates.
* openvino int8: no max-abs gate (int8 error scales with the activation ranges, so an absolute number means
  nothing across models); cosine >= 0.98 on average and >= 0.9 on the worst sample; top-1 >= 0.95 where a
  different argmax still agrees if the reference scores it within 0.1 std of its best logit. Why 0.1 std: a mean
  cosine of 0.995 (measured) is a relative error of ~0.1 of the logit vector, so classes closer than that are
  ties at int8 precision. Measured on the untrained tiny AutoFormers (random weights, near-tie logits): honest
  int8 gives mean cosine >= 0.993, worst >= 0.96, and every flipped argmax sits within 0.075 std of the best;
  a harmful calibration (SmoothQuant on these models) gives mean cosine 0.92-0.97, worst 0.73-0.90 and flips
  classes 0.2-1.4 std apart, failing the mean-cosine and top-1 gates.

Metrics per output (rows = samples, everything after axis 0 flattened): max abs error; max relative error with
the denominator floored at 1e-3 of the reference's largest magnitude (so near-zero logits do not explode it);
per-sample cosine similarity (min and mean); top-1 agreement, strict and tie-aware (the engine's argmax scores
within `top1_tie` reference standard deviations of the reference's best); top-5 agreement (mean overlap of the
two top-5 sets, 1 when they are the same set).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from deploy_nas.errors import DeployNASError, ParityError
from deploy_nas.io import write_json_atomic


@dataclass(frozen=True)
class Tolerance:
    max_abs: float | None = None
    min_cosine: float | None = None  # worst sample
    min_mean_cosine: float | None = None  # average over samples
    min_top1: float | None = None  # tie-aware top-1 agreement
    top1_tie: float = 0.0  # a different argmax agrees if within this many reference std of the best logit
    min_top5: float | None = None  # mean overlap of the top-5 sets
    note: str = ""
    source: str = "default"  # "default" (the table below) or "family <name>" (a family's override)


_FP32 = Tolerance(max_abs=1e-4, min_cosine=0.99999, min_top1=1.0, top1_tie=1e-3, note="float32, other kernels")
_FP16 = Tolerance(max_abs=5e-2, min_cosine=0.999, min_top1=0.99, top1_tie=0.01,
                  note="fp16 roundoff grows with the logit range")
TOLERANCES: dict[tuple[str, str], Tolerance] = {
    ("torch", "fp32"): _FP32,
    ("onnxruntime", "fp32"): _FP32,
    ("openvino", "fp32"): _FP32,
    ("openvino", "fp16"): _FP16,
    ("openvino", "int8"): Tolerance(min_cosine=0.9, min_mean_cosine=0.98, min_top1=0.95, top1_tie=0.1,
                                    note="int8 error scales with the activation ranges"),
    ("tensorrt", "fp32"): Tolerance(max_abs=1e-3, min_cosine=0.9999, min_top1=1.0, top1_tie=1e-3,
                                    note="GPU reductions reorder sums; TF32 where allowed"),
    ("tensorrt", "fp16"): _FP16,
}


def tolerance_for(backend: str, precision: str, family: str | None = None) -> Tolerance:
    """The (backend, precision) row, or the family's own override of it (optimum keeps one per model type for
    the same reason: some architectures carry more rounding than others); the result says which it is."""
    if family is not None:
        from deploy_nas.family import FAMILIES

        if family in FAMILIES:
            override = FAMILIES.get(family).tolerances().get((backend, precision))
            if override is not None:
                return replace(override, source=f"family {family}")
    try:
        return TOLERANCES[(backend, precision)]
    except KeyError:
        known = ", ".join(f"{b}/{p}" for b, p in sorted(TOLERANCES))
        raise DeployNASError(f"no parity tolerance for {backend}/{precision}; known: {known}; "
                             "pass tolerance= explicitly") from None


@dataclass(frozen=True)
class OutputParity:
    name: str
    shape: tuple[int, ...]
    max_abs: float
    mean_abs: float
    max_rel: float
    cosine_min: float
    cosine_mean: float
    top1: float  # strict: same argmax
    top1_tie_aware: float  # argmax within the tolerance's tie band of the reference's best
    top5: float
    reference_max_abs: float  # the scale of the reference output


@dataclass(frozen=True)
class ParityResult:
    backend: str
    precision: str
    reference: str
    samples: int
    outputs: tuple[OutputParity, ...]
    tolerance: Tolerance
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def max_abs(self) -> float:
        return max(o.max_abs for o in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d

    def write(self, path: str | Path) -> Path:
        """Write parity.json (or `path` when it names a .json file) atomically."""
        path = Path(path)
        path = path if path.suffix == ".json" else path / "parity.json"
        return write_json_atomic(path, self.to_dict())


def parity_inputs(spec: Any, images: np.ndarray | None = None, n_random: int = 8, seed: int = 0) -> np.ndarray:
    """The fixed parity batch: real `images` (N, C, H, W) first, then `n_random` seeded N(0, 1) inputs."""
    shape = (spec.in_chans, spec.img_size, spec.img_size)
    rng = np.random.default_rng(seed)
    parts = [rng.standard_normal((n_random, *shape), dtype=np.float32)] if n_random else []
    if images is not None:
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or tuple(images.shape[1:]) != shape:
            raise DeployNASError(f"parity images have shape {images.shape}, the model takes (N, {shape}); "
                                 "resize them to the model input")
        parts.insert(0, images)
    if not parts:
        raise DeployNASError("empty parity batch: pass images or n_random > 0")
    return np.ascontiguousarray(np.concatenate(parts))


def _batches(inputs: Any, input_name: str) -> list[dict[str, np.ndarray]]:
    if isinstance(inputs, dict):
        return [inputs]
    if isinstance(inputs, np.ndarray):
        return [{input_name: inputs}]
    return [b if isinstance(b, dict) else {input_name: b} for b in inputs]


def _run(engine: Any, batches: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    outs: dict[str, list[np.ndarray]] = {}
    for feeds in batches:
        for name, value in engine.infer(feeds).items():
            outs.setdefault(name, []).append(np.asarray(value, dtype=np.float64))
    return {k: np.concatenate(v) for k, v in outs.items()}


def check_parity(reference: Any, engine: Any, inputs: Any, tolerance: Tolerance | None = None,
                 family: str | None = None) -> ParityResult:
    """Run both engines on `inputs` (feeds dict, one array, or a list of batches) and compare every output.
    `family`: use its tolerance override where it has one (default: the family of the reference's model)."""
    batches = _batches(inputs, reference.input_name)
    ref, got = _run(reference, batches), _run(engine, batches)
    missing = sorted(set(ref) - set(got))
    if missing:
        raise DeployNASError(f"{engine.name} returned no output named {missing}; its outputs are {sorted(got)}")
    if family is None:
        family = getattr(getattr(getattr(reference, "model", None), "spec", None), "source", {}).get("family")
    tolerance = tolerance or tolerance_for(engine.name, engine.precision, family)
    outputs = tuple(compare(name, got[name], ref[name], tolerance.top1_tie) for name in sorted(ref))
    failures = tuple(f for o in outputs for f in gate_failures(o, tolerance))
    return ParityResult(backend=engine.name, precision=engine.precision, reference=reference.name,
                        samples=len(next(iter(ref.values()))), outputs=outputs, tolerance=tolerance,
                        failures=failures)


def compare(name: str, got: np.ndarray, ref: np.ndarray, tie: float = 0.0) -> OutputParity:
    """All metrics of one output; `tie` is the top-1 tie band in reference standard deviations."""
    if got.shape != ref.shape:
        raise DeployNASError(f"output {name!r} has shape {got.shape}, the reference {ref.shape}; re-export the model")
    diff = np.abs(got - ref)
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    floor = max(scale * 1e-3, np.finfo(np.float32).tiny)
    g, r = got.reshape(len(got), -1), ref.reshape(len(ref), -1)
    cos = cosine_rows(g, r)
    return OutputParity(name=name, shape=tuple(got.shape), max_abs=float(diff.max()), mean_abs=float(diff.mean()),
                        max_rel=float(np.max(diff / np.maximum(np.abs(ref), floor))),
                        cosine_min=float(cos.min()), cosine_mean=float(cos.mean()),
                        top1=topk_agreement(g, r, 1), top1_tie_aware=top1_agreement(g, r, tie),
                        top5=topk_agreement(g, r, 5), reference_max_abs=scale)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows; two zero rows count as identical."""
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = np.sum(a * b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    return np.where(both_zero, 1.0, dot / np.maximum(na * nb, np.finfo(np.float64).tiny))


def topk_agreement(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Mean overlap |top_k(a) & top_k(b)| / k over rows (k capped at the row length)."""
    k = min(k, a.shape[1])
    ta, tb = np.argsort(-a, axis=1, kind="stable")[:, :k], np.argsort(-b, axis=1, kind="stable")[:, :k]
    overlap = [len(set(x) & set(y)) for x, y in zip(ta.tolist(), tb.tolist())]
    return float(np.mean(overlap) / k)


def top1_agreement(got: np.ndarray, ref: np.ndarray, tie: float) -> float:
    """Fraction of rows whose argmax the reference scores within `tie` of its own row std below its best."""
    chosen = ref[np.arange(len(ref)), np.argmax(got, axis=1)]
    return float(np.mean(chosen >= ref.max(axis=1) - tie * ref.std(axis=1)))


def gate_failures(o: OutputParity, t: Tolerance) -> Iterable[str]:
    """One line per violated gate of one output; non-finite outputs fail first, by name (every metric would
    otherwise report NaN comparisons as agreement or disagreement at random)."""
    if not np.isfinite(o.max_abs):
        yield (f"{o.name}: non-finite outputs (NaN or Inf) from the engine or the reference; check the weights "
               "(`deploy-nas extract` refuses non-finite ones) and the input data")
        return
    if t.max_abs is not None and o.max_abs > t.max_abs:
        yield f"{o.name}: max abs {o.max_abs:.3g} > {t.max_abs:g}"
    if t.min_cosine is not None and o.cosine_min < t.min_cosine:
        yield f"{o.name}: min cosine {o.cosine_min:.6f} < {t.min_cosine:g}"
    if t.min_mean_cosine is not None and o.cosine_mean < t.min_mean_cosine:
        yield f"{o.name}: mean cosine {o.cosine_mean:.6f} < {t.min_mean_cosine:g}"
    if t.min_top1 is not None and o.top1_tie_aware < t.min_top1:
        yield f"{o.name}: top-1 agreement {o.top1_tie_aware:.3f} < {t.min_top1:g} (ties within {t.top1_tie:g} std)"
    if t.min_top5 is not None and o.top5 < t.min_top5:
        yield f"{o.name}: top-5 agreement {o.top5:.3f} < {t.min_top5:g}"


def gate(result: ParityResult) -> ParityResult:
    """Raise ParityError (carrying `result`) if any gate failed; write the report before calling this."""
    if not result.passed:
        raise ParityError(f"parity failed for {result.backend}/{result.precision} vs {result.reference} on "
                          f"{result.samples} samples: {'; '.join(result.failures)}; inspect parity.json, then fix the "
                          "lowering or build a higher precision", result)
    return result
