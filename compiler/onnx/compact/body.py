"""The builder of crisp's model-local ONNX functions: a body of standard-op nodes with short
unique value names and shared constants, and the constants of the ``crisp`` domain."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

DOMAIN = "crisp"
DOMAIN_VERSION = 1
MIN_OPSET = 13  # the bodies use Unsqueeze/ReduceSum/Slice/Pad with tensor inputs
COLS_ATTR = "cols"  # node attribute: K, the GEMM width of the layer
BODIES = ("auto", "measure", "blocks", "dense")  # auto: cost model; measure: timed per layer
INT64_MAX = int(np.iinfo(np.int64).max)


class Body:
    """Collects the nodes of a function body, hands out short unique value names and shares
    equal constants."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0
        self._consts: dict[tuple, str] = {}

    def _name(self) -> str:
        self._count += 1
        return f"t{self._count}"

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        outs = [self._name() for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, **attrs))  # no domain field: default ONNX
        return outs[0] if n_out == 1 else outs

    def rename_output(self, value: str, name: str) -> None:
        """Rename the value ``value`` to ``name`` (a function output) in its producer and users."""
        found = False
        for node in self.nodes:
            for i, out in enumerate(node.output):
                if out == value:
                    node.output[i] = name
                    found = True
            for i, inp in enumerate(node.input):
                if inp == value:
                    node.input[i] = name
        if not found:
            raise ValueError(f"no node produces {value!r}")

    def const(self, values, dtype=np.int64) -> str:
        array = np.asarray(values, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            if array.dtype == np.int64 and array.ndim == 1:
                self._consts[key] = self.op("Constant", [], value_ints=[int(v) for v in array])
            elif array.dtype == np.int64 and array.ndim == 0:
                self._consts[key] = self.op("Constant", [], value_int=int(array))
            else:
                self._consts[key] = self.op("Constant", [], value=numpy_helper.from_array(array))
        return self._consts[key]

    def ints(self, values: list[int]) -> str:
        return self.const(list(values))

    def scalar(self, value: int) -> str:
        return self.const(value)

    def attr_int(self, name: str) -> str:
        """A scalar int64 constant whose value is the calling node's attribute ``name``."""
        attr = onnx.AttributeProto(name="value_int", ref_attr_name=name, type=onnx.AttributeProto.INT)
        out = self._name()
        node = helper.make_node("Constant", [], [out])
        node.attribute.append(attr)
        self.nodes.append(node)
        return out

    def const_attr_ints(self, name: str) -> str:
        """A 1-D int64 constant whose value is the calling node's ints attribute ``name``."""
        attr = onnx.AttributeProto(name="value_ints", ref_attr_name=name, type=onnx.AttributeProto.INTS)
        out = self._name()
        node = helper.make_node("Constant", [], [out])
        node.attribute.append(attr)
        self.nodes.append(node)
        return out

    def call(self, function: str, inputs: list[str], n_out: int, forward_attrs: tuple[str, ...]) -> list[str]:
        outs = [self._name() for _ in range(n_out)]
        node = helper.make_node(function, inputs, outs, domain=DOMAIN)
        for name in forward_attrs:
            node.attribute.append(onnx.AttributeProto(name=name, ref_attr_name=name, type=onnx.AttributeProto.INT))
        self.nodes.append(node)
        return outs


def make_function(name: str, inputs: list[str], outputs: list[str], body: Body, opset: int, doc: str = "",
              attrs: list[str] | None = None) -> onnx.FunctionProto:
    fn = helper.make_function(
        DOMAIN, name, inputs, outputs, body.nodes,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)],
        attributes=attrs or [COLS_ATTR],
    )
    if doc:
        fn.doc_string = doc
    return fn
