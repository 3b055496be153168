"""NNCF post-training int8 quantization of an OpenVINO model (transformer model type)."""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from deploy_nas.errors import ExportError
from deploy_nas.export.backends.base import BuildConfig


def quantize_int8(ov_model: Any, config: BuildConfig) -> tuple[Any, dict[str, Any]]:
    """(quantized model, what was done). With smooth_quant=None both variants are built and the one whose
    outputs on the calibration batch are closer to fp32 (mean cosine) is kept; ties keep SmoothQuant on."""
    from deploy_nas.data import calibration_images
    from deploy_nas.export.backends.openvino_backend import compile_ir, model_shape

    channels, height, width = model_shape(ov_model)
    if height != width:
        raise ExportError(f"int8 calibration needs a square input, the model takes {height}x{width}")
    calib = calibration_images(height, channels, config.calib_size, config.calib_dir)
    reference = compile_ir(ov_model, "f32", config.threads)(calib)[0]
    choices = (True, False) if config.smooth_quant is None else (bool(config.smooth_quant),)
    scores, models = {}, {}
    kept, odd_bias = table_matmuls(ov_model), full_bias_matmuls(ov_model)
    for sq in choices:
        models[sq] = nncf_quantize(ov_model, calib, sq, kept, bias_correction=not odd_bias)
        scores[sq] = mean_cosine(compile_ir(models[sq], "f32", config.threads)(calib)[0], reference)
    best = max(choices, key=lambda sq: scores[sq])
    meta = {"method": "nncf.quantize", "model_type": "transformer", "smooth_quant": best, "kept_fp32": len(kept),
            "bias_correction": not odd_bias,
            "calibration_mean_cosine": {("smooth_quant" if sq else "no_smooth_quant"): s for sq, s in scores.items()},
            "calibration": str(config.calib_dir) if config.calib_dir else "embedded", "calibration_images": len(calib)}
    return models[best], meta


def table_matmuls(ov_model: Any) -> list[str]:
    """The MatMuls next to a gather by constant indices: the small products with relative-position tables of
    AutoFormer's compact lowering (q with the offset tables before its gather, the gathered attention mass with the
    values tables after its). They stay fp32: quantized, the values-term product alone took the embedded default's
    min subnet from a mean cosine of 0.997 to 0.934 against fp32 (worst sample -0.38), for a few kMAC per token."""
    def constant_gather(node: Any) -> bool:
        return node.get_type_name() == "Gather" and node.input_value(1).get_node().get_type_name() == "Constant"

    return [node.get_friendly_name() for node, after in _matmuls(ov_model)
            if any(constant_gather(node.input_value(i).get_node()) for i in range(node.get_input_size()))
            or any(constant_gather(n) for n in after)]


def _matmuls(ov_model: Any) -> list[tuple[Any, list[Any]]]:
    """Each MatMul of the model with the nodes its output feeds, through a Reshape too."""
    found = []
    for node in ov_model.get_ordered_ops():
        if node.get_type_name() == "MatMul":
            after = [t.get_node() for t in node.output(0).get_target_inputs()]
            after += [t.get_node() for n in after if n.get_type_name() == "Reshape"
                      for t in n.output(0).get_target_inputs()]
            found.append((node, after))
    return found


def full_bias_matmuls(ov_model: Any) -> list[str]:
    """The MatMuls whose output (reshaped or not) takes a constant Add that is no per-channel bias: NASViT's
    talking-heads projection `proj_l` adds the attention bias of shape (1, heads, L, L) after it. NNCF's bias
    correction takes that constant for the MatMul's bias and fails reshaping it to (1, heads, 1) ("cannot reshape
    array of size 6480"), with the MatMul in the ignored scope too; such a model is quantized without it."""
    def big_constant(value: Any) -> bool:
        node = value.get_node()
        while node.get_type_name() == "Convert" and node.input_value(0).get_node().get_type_name() == "Constant":
            node = node.input_value(0).get_node()
        return node.get_type_name() == "Constant" and sum(d > 1 for d in node.get_output_shape(0)) >= 2

    return [node.get_friendly_name() for node, after in _matmuls(ov_model)
            if any(n.get_type_name() == "Add" and any(big_constant(n.input_value(i)) for i in range(n.get_input_size()))
                   for n in after)]


def nncf_quantize(ov_model: Any, calib: np.ndarray, smooth_quant: bool, kept: list[str] = (),
                  bias_correction: bool = True) -> Any:
    """int8 weights and activations, except the MatMuls named in `kept`; SmoothQuant off means alpha -1 for MatMul
    (NNCF's "disabled"); `bias_correction` False: none (see full_bias_matmuls)."""
    # nncf imports torch.utils.cpp_extension, which warns about a missing CUDA runtime on CPU-only machines
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    nncf.set_log_level(logging.ERROR)
    options = {} if smooth_quant else {
        "smooth_quant_alphas": AdvancedSmoothQuantParameters(convolution=-1, matmul=-1)}
    if not bias_correction:
        options["disable_bias_correction"] = True
    advanced = AdvancedQuantizationParameters(**options) if options else None
    dataset = nncf.Dataset([calib[i:i + 1] for i in range(len(calib))])
    try:
        return nncf.quantize(ov_model.clone(), dataset, model_type=nncf.ModelType.TRANSFORMER,
                             subset_size=len(calib), advanced_parameters=advanced,
                             ignored_scope=nncf.IgnoredScope(names=list(kept), validate=False))
    except (RuntimeError, ValueError, nncf.InternalError) as err:
        raise ExportError(f"NNCF int8 quantization failed: {str(err).splitlines()[0]}; "
                          "build fp16 instead or report the model") from err


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    from deploy_nas.export.parity import cosine_rows

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.mean(cosine_rows(a.reshape(len(a), -1), b.reshape(len(b), -1))))
