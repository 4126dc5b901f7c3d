"""Hand-built ONNX graphs in the styles users' files come in (fixtures of tests/onnx): model-zoo IR 3
files at opsets 7 and 9, a weight shared with an ``If`` branch, a weight computed as ``Mul(W0, S)``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def _rand(rng, *shape):
    return (rng.standard_normal(shape) * 0.2).astype(np.float32)


def zoo_ir3(opset: int = 9, seed: int = 0) -> onnx.ModelProto:
    """IR 3, every initializer also a graph input; LRN, grouped conv, Dropout, Sum; a weight computed as
    ``Mul(W0, S)`` and one made by ``ConstantOfShape`` (a ``Constant`` node at opset 7, which lacks it)."""
    rng = np.random.default_rng(seed)
    inits = {"c1_w": _rand(rng, 32, 3, 3, 3), "c1_b": _rand(rng, 32), "g_w": _rand(rng, 32, 8, 3, 3),
             "c3_w0": _rand(rng, 64, 32, 1, 1), "c3_s": _rand(rng, 64, 1, 1, 1), "fc_w": _rand(rng, 10, 64),
             "fc_b": _rand(rng, 10)}
    if opset >= 9:
        inits["shape"] = np.array([16, 64, 1, 1], np.int64)
        weight = helper.make_node("ConstantOfShape", ["shape"], ["cs_w"], name="cos",
                                  value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.05]))
    else:
        weight = helper.make_node("Constant", [], ["cs_w"], name="cos",
                                  value=numpy_helper.from_array(np.linspace(-1, 1, 16 * 64, dtype=np.float32).reshape(16, 64, 1, 1)))
    nodes = [
        helper.make_node("Conv", ["X", "c1_w", "c1_b"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("LRN", ["a"], ["b"], name="lrn", size=3),
        helper.make_node("Conv", ["b", "g_w"], ["c"], name="gconv", pads=[1, 1, 1, 1], group=4),
        helper.make_node("Dropout", ["c"], ["d"], name="drop", ratio=0.5),
        helper.make_node("Sum", ["d", "b"], ["e"], name="sum"),
        helper.make_node("Mul", ["c3_w0", "c3_s"], ["c3_w"], name="scale_w"),
        helper.make_node("Conv", ["e", "c3_w"], ["g"], name="conv3"),
        weight,
        helper.make_node("Conv", ["g", "cs_w"], ["h0"], name="conv_cos"),
        helper.make_node("Relu", ["h0"], ["h"], name="relu"),
        helper.make_node("GlobalAveragePool", ["g"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["q"], name="flat"),
        helper.make_node("Gemm", ["q", "fc_w", "fc_b"], ["Y"], name="fc", transB=1),
    ]
    tensors = [numpy_helper.from_array(v, k) for k, v in inits.items()]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 3, 12, 12])]
    inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in tensors]
    outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 10]),
               helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 16, 12, 12])]
    model = helper.make_model(helper.make_graph(nodes, "zoo_ir3", inputs, outputs, tensors),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 3
    onnx.checker.check_model(model)
    return model


def shared_with_if(seed: int = 0) -> onnx.ModelProto:
    """Weight ``w`` read by a main-graph Conv and by a Conv inside an ``If`` branch."""
    rng = np.random.default_rng(seed)
    branch = lambda name, out: helper.make_graph(  # noqa: E731
        [helper.make_node("Conv", ["X", "w"], [out], name=f"{name}_conv", pads=[1, 1, 1, 1])], name, [],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 32, 8, 8])])
    nodes = [
        helper.make_node("Conv", ["X", "w"], ["main"], name="main_conv", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["main", "w2"], ["Y"], name="second_conv"),
        helper.make_node("If", ["flag"], ["Z"], name="branch", then_branch=branch("then", "t"), else_branch=branch("else", "e")),
    ]
    inits = [numpy_helper.from_array(_rand(rng, 32, 32, 3, 3), "w"), numpy_helper.from_array(_rand(rng, 32, 32, 1, 1), "w2")]
    graph = helper.make_graph(
        nodes, "shared", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 32, 8, 8]),
                          helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 32, 8, 8]),
         helper.make_tensor_value_info("Z", TensorProto.FLOAT, ["N", 32, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def folded_weight(seed: int = 0, value_info: bool = True) -> onnx.ModelProto:
    """A Conv weight computed as ``Mul(W0, S)`` and a Gemm on plain initializers; with ``value_info``
    the graph also describes its weights and activations (as torch's dynamo exporter does), with a symbolic batch."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(_rand(rng, 64, 32, 3, 3), "W0"), numpy_helper.from_array(_rand(rng, 64, 1, 1, 1), "S"),
             numpy_helper.from_array(_rand(rng, 10, 64), "fc_w"), numpy_helper.from_array(np.zeros(2, np.int64) + [2, 3], "axes")]
    nodes = [helper.make_node("Mul", ["W0", "S"], ["W"], name="scale"),
             helper.make_node("Conv", ["X", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("ReduceMean", ["c", "axes"], ["m"], name="mean", keepdims=0),
             helper.make_node("Gemm", ["m", "fc_w"], ["Y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "folded", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 32, "H", "W"])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 10])], inits)
    if value_info:
        graph.value_info.extend([helper.make_tensor_value_info("W", TensorProto.FLOAT, [64, 32, 3, 3]),
                                 helper.make_tensor_value_info("fc_w", TensorProto.FLOAT, [10, 64]),
                                 helper.make_tensor_value_info("c", TensorProto.FLOAT, ["N", 64, "H", "W"]),
                                 helper.make_tensor_value_info("m", TensorProto.FLOAT, ["N", 64])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture
def graphs():
    """The builders above, for tests that make their own variants."""
    return {"zoo_ir3": zoo_ir3, "shared_with_if": shared_with_if, "folded_weight": folded_weight}
