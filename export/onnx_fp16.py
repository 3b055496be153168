"""fp32 ONNX -> mixed fp16 ONNX for strongly typed TensorRT (which takes every tensor's type from the graph).

Every float tensor becomes fp16 except in the numerically fragile ops, which keep fp32 inputs and outputs with
Cast nodes around them: LayerNormalization (the variance overflows fp16 after attention), Softmax (exp of the
logits) and every Reduce* (long sums). Graph inputs and outputs stay fp32, so callers feed and read float32.
Initializers are converted in place when every consumer runs in fp16, else kept fp32 and cast where needed.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from deploy_nas.errors import ExportError

FP32_OPS = ("LayerNormalization", "Softmax", "LogSoftmax")
FP32_PREFIXES = ("Reduce",)
# Ops whose inputs are not tied to the float type of the node (never cast them).
TYPE_AGNOSTIC = ("Cast", "Shape", "Size")
FP16_MAX = float(np.finfo(np.float16).max)


def keeps_fp32(node: Any, fp32_ops: Iterable[str] = FP32_OPS) -> bool:
    return node.op_type in fp32_ops or node.op_type.startswith(FP32_PREFIXES)


def fp16_from_fp32(model: Any, fp32_ops: Iterable[str] = FP32_OPS) -> Any:
    """A new ModelProto; see the module doc. Raises ExportError when the graph cannot be rewritten."""
    import onnx
    from onnx import TensorProto

    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.node for a in n.attribute):
        raise ExportError("the fp16 rewrite does not handle control flow (If/Loop/Scan); build fp32 instead")
    fp32_ops = tuple(fp32_ops)
    types = _elem_types(model)
    is_float = {name for name, t in types.items() if t == TensorProto.FLOAT}
    home = _homes(g, is_float, fp32_ops)
    _convert_initializers(g, home)
    nodes = _rewrite_nodes(g, is_float, home, fp32_ops)
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise ExportError(f"the fp16 graph fails onnx.checker: {str(err).splitlines()[0]}; build fp32 instead") from err
    return model


def _elem_types(model: Any) -> dict[str, int]:
    """Element type of every named tensor (after shape inference)."""
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
    types.update({t.name: t.data_type for t in g.initializer})
    for n in g.node:
        if n.op_type == "Constant":
            value = next((a.t for a in n.attribute if a.name == "value"), None)
            if value is not None:
                types[n.output[0]] = value.data_type
    return types


def _homes(g: Any, is_float: set[str], fp32_ops: tuple[str, ...]) -> dict[str, str]:
    """The precision each float tensor is produced in: "fp32" or "fp16"."""
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def by_consumers(name: str) -> str:  # constants: fp16 only if every consumer wants fp16
        users = [u for u in consumers.get(name, []) if u.op_type not in TYPE_AGNOSTIC]
        return "fp16" if users and not any(keeps_fp32(u, fp32_ops) for u in users) else "fp32"

    home = {i.name: "fp32" for i in g.input}
    home.update({t.name: by_consumers(t.name) for t in g.initializer if t.name in is_float})
    for n in g.node:
        precision = "fp32" if keeps_fp32(n, fp32_ops) else "fp16"
        for o in n.output:
            if o in is_float:
                home[o] = by_consumers(o) if n.op_type == "Constant" else precision
    return home


def _convert_initializers(g: Any, home: dict[str, str]) -> None:
    from onnx import numpy_helper

    for i, t in enumerate(g.initializer):
        if home.get(t.name) != "fp16":
            continue
        value = numpy_helper.to_array(t)
        if value.size and float(np.max(np.abs(value))) > FP16_MAX:
            raise ExportError(f"initializer {t.name} holds |values| up to {np.max(np.abs(value)):.3g} > {FP16_MAX:g} "
                              "(fp16 max); build fp32 instead")
        g.initializer[i].CopyFrom(numpy_helper.from_array(value.astype(np.float16), t.name))


def _rewrite_nodes(g: Any, is_float: set[str], home: dict[str, str], fp32_ops: tuple[str, ...]) -> list[Any]:
    """Nodes in order, with Casts inserted where a float tensor's home differs from what its consumer needs."""
    out_names = {o.name for o in g.output}
    renamed = {o: f"{o}__fp16" for o in out_names if home.get(o) == "fp16"}
    made: set[str] = set()
    nodes = []
    for n in g.node:
        precision = "fp32" if keeps_fp32(n, fp32_ops) else "fp16"
        node = _retyped(n, precision, home)
        if n.op_type not in TYPE_AGNOSTIC:
            for k, name in enumerate(node.input):
                if name in is_float and home.get(name, "fp32") != precision:
                    cast = f"{name}__{precision}"
                    if cast not in made:
                        nodes.append(_cast(renamed.get(name, name), cast, precision))
                        made.add(cast)
                    node.input[k] = cast
        node.input[:] = [renamed.get(i, i) for i in node.input]
        node.output[:] = [renamed.get(o, o) for o in node.output]
        nodes.append(node)
    nodes += [_cast(new, old, "fp32") for old, new in sorted(renamed.items())]
    return nodes


def _cast(src: str, dst: str, precision: str) -> Any:
    from onnx import TensorProto, helper

    to = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT
    return helper.make_node("Cast", [src], [dst], name=f"cast_{dst}", to=to)


def _retyped(n: Any, precision: str, home: dict[str, str]) -> Any:
    """A copy of `n` whose type-defining attributes follow the tensor homes (Cast, ConstantOfShape, Constant)."""
    from onnx import NodeProto, TensorProto, helper, numpy_helper

    node = NodeProto()
    node.CopyFrom(n)
    wants16 = bool(n.output) and home.get(n.output[0]) == "fp16"
    if n.op_type == "ConstantOfShape" and wants16 and not any(a.name == "value" for a in node.attribute):
        node.attribute.add().CopyFrom(helper.make_attribute("value", numpy_helper.from_array(np.zeros(1, np.float32))))
    for a in node.attribute:
        if n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT and wants16:
            a.i = TensorProto.FLOAT16
        elif a.name == "value" and a.t.data_type == TensorProto.FLOAT and wants16:
            a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name))
    return node
