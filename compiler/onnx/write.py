"""Model surgery of the compact export: write a pruned layer into an ONNX model, densely (zeros in
place) or as a ``crisp`` node on its compact tensors, then add the functions, the domain and the metadata."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from crisp.errors import CrispError
from crisp.onnx.compact.body import DOMAIN, DOMAIN_VERSION
from crisp.onnx.compact.cost import choose_body
from crisp.onnx.compact.functions import FunctionSet, conv_attributes
from crisp.onnx.compact.tensors import compact_node, compact_tensors, trims_rows
from crisp.onnx.io import remove_unused_initializers
from crisp.onnx.weights import OnnxLayer
from crisp.sparsity.hybrid_tensor import HybridSparseTensor


def _replace_initializer(model: onnx.ModelProto, tensor: onnx.TensorProto) -> None:
    for i, t in enumerate(model.graph.initializer):
        if t.name == tensor.name:
            model.graph.initializer[i].CopyFrom(tensor)
            return
    raise CrispError(f"internal error: initializer {tensor.name!r} disappeared")


def write_dense_layer(model: onnx.ModelProto, layer: OnnxLayer, masked: torch.Tensor) -> None:
    """Overwrite ``layer``'s weight initializer with the masked weight (same name, shape, layout, dtype)."""
    dtype = layer.weight.dtype if layer.weight is not None else np.float32
    array = layer.weight_to_onnx(masked).astype(dtype)
    _replace_initializer(model, numpy_helper.from_array(array, layer.weight_name))


def _node_at(model: onnx.ModelProto, layer: OnnxLayer) -> onnx.NodeProto:
    node = model.graph.node[layer.node_index]
    if node.output[0] != layer.output_name:
        raise CrispError(f"internal error: node {layer.name!r} moved")
    return node


def write_compact_layer(model: onnx.ModelProto, layer: OnnxLayer, hst: HybridSparseTensor, functions: FunctionSet,
                        body: str | None = None) -> None:
    """Replace ``layer``'s node (in place, same name and output) by a ``crisp`` node on the
    compact tensors of ``hst``; the values take the weight initializer's name and place. ``body``
    (the layer's chosen way, "blocks" or "dense") overrides the set's default."""
    trim = trims_rows(hst)
    bias_name = layer.bias_name
    tensors = compact_tensors(hst, layer.weight_name, scale=layer.alpha if layer.op_type == "Gemm" else 1.0)
    extra_inits = tensors.all()
    if layer.op_type == "Gemm" and bias_name is not None:
        bias = np.asarray(layer.bias, dtype=np.float32)
        rows = hst.shape[0]
        if layer.beta != 1.0 or bias.shape != (rows,):
            flat = np.broadcast_to(bias.reshape(-1) * np.float32(layer.beta), (rows,)).astype(np.float32)
            bias_name = f"{layer.bias_name}.crisp_bias"
            extra_inits.append(numpy_helper.from_array(np.ascontiguousarray(flat), bias_name))
    has_bias = bias_name is not None
    body = body or functions.body
    if body in ("auto", "measure"):
        body = choose_body(hst, layer.kind, layer.conv.pointwise if layer.kind == "conv" else True)
    layer.body = body
    if layer.kind == "conv":
        fn = functions.conv(layer.conv, has_bias, trim, tensors.index_bytes, body)
        attrs = conv_attributes(layer.conv, layer.weight_shape[1])
    else:
        fn = functions.gemm(has_bias, trim, layer.trans_a, tensors.index_bytes, body)
        attrs = None
    node = _node_at(model, layer)
    new = compact_node(fn, node.name, layer.input_name, tensors, bias_name, layer.output_name, hst.shape[1], attrs)
    node.CopyFrom(new)
    _replace_initializer(model, tensors.values)  # the compact values take the weight's name and place
    model.graph.initializer.extend(extra_inits[1:])
    layer.compact_names = tuple(t.name for t in tensors.all())


def add_domain(model: onnx.ModelProto) -> None:
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    if model.ir_version < 8:  # model-local functions need IR version 8
        model.ir_version = 8


def finish_compact_model(model: onnx.ModelProto, functions: FunctionSet, layers: list[OnnxLayer],
                         metadata: dict[str, str]) -> None:
    """After every layer is written: drop initializers nothing reads anymore (e.g. a replaced Gemm
    C), add the functions, the ``crisp`` domain and the ``crisp.*`` metadata."""
    remove_unused_initializers(model, {layer.bias_name for layer in layers if layer.bias_name})
    model.functions.extend(functions.all())
    add_domain(model)
    if metadata:
        helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **metadata})
