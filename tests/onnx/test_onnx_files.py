"""``crisp.optimize_onnx`` on files as users have them: value_info that describes rewritten weights,
IR 3 model-zoo files (initializers as graph inputs, opsets 7 and 9), weights shared with an ``If`` branch,
folded weights leaving no dead initializers, refused opsets and blocks, and the output check."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from crisp.errors import CrispError, ModelError
from crisp.onnx.optimize import optimize_onnx_with_report
from crisp.onnx.verify import OnnxInternalError, verify_output
from crisp.pruning.class_data import DataError


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def masked(source: onnx.ModelProto, result) -> dict[str, np.ndarray]:
    """The dense output's weights must be the input's (folded) weights times the masks."""
    by_layer = {layer.name: layer.weight_name for layer in result.report.layers}
    return {by_layer[name]: mask for name, mask in result.masks.items()}


def optimize_both(model, **kw):
    return {fmt: optimize_onnx_with_report(model, format=fmt, pattern="2:4", block=8, sparsity=0.7, **kw)
            for fmt in ("compact", "dense")}


def test_value_info_of_rewritten_weights_is_updated_and_symbolic_dims_stay(graphs):
    model = graphs["folded_weight"]()
    out = optimize_both(model)
    x = np.random.default_rng(1).standard_normal((3, 32, 10, 6)).astype(np.float32)  # other N, H, W than any export
    results = {}
    for fmt, res in out.items():
        onnx.checker.check_model(res.model, full_check=True)
        inits = {t.name: t for t in res.model.graph.initializer}
        infos = {v.name: v for v in res.model.graph.value_info}
        for name, info in infos.items():  # what describes an initializer describes it as it is now
            if name in inits:
                assert [d.dim_value for d in info.type.tensor_type.shape.dim] == list(inits[name].dims)
        if fmt == "dense":  # the dense form keeps the activations' entries as they were
            assert [d.dim_param or d.dim_value for d in infos["c"].type.tensor_type.shape.dim] == ["N", 64, "H", "W"]
        else:  # the compact form leaves shapes to the runtime (onnxruntime runs it faster so)
            assert not infos
        assert res.model.graph.input[0].type.tensor_type.shape.dim[2].dim_param == "H"
        results[fmt] = run(res.model, {"X": x})[0]
    np.testing.assert_allclose(results["compact"], results["dense"], rtol=1e-4, atol=1e-4)
    assert not np.allclose(results["dense"], run(model, {"X": x})[0], rtol=1e-3)


def test_folded_weight_leaves_no_dead_initializer_and_dense_is_not_larger(graphs):
    model = graphs["folded_weight"](value_info=False)
    out = optimize_both(model)
    for fmt, res in out.items():
        names = {t.name for t in res.model.graph.initializer}
        assert not names & {"W0", "S"}, fmt
        used = {i for n in res.model.graph.node for i in n.input}
        assert names <= used | {i for f in res.model.functions for n in f.node for i in n.input}
    assert out["dense"].model.ByteSize() <= model.ByteSize()  # W replaces W0 (same size), S is gone
    assert out["compact"].model.ByteSize() < model.ByteSize()
    folded = numpy_helper.to_array(model.graph.initializer[0]) * numpy_helper.to_array(model.graph.initializer[1])
    dense_w = {t.name: numpy_helper.to_array(t) for t in out["dense"].model.graph.initializer}["W"]
    np.testing.assert_array_equal(dense_w, folded * masked(model, out["dense"])["W"])


@pytest.mark.parametrize("opset", [7, 9])
def test_ir3_zoo_file(graphs, opset):
    model = graphs["zoo_ir3"](opset)
    before = model.SerializeToString()
    out = optimize_both(model)
    assert model.SerializeToString() == before
    x = np.random.default_rng(2).standard_normal((1, 3, 12, 12)).astype(np.float32)
    got = {}
    for fmt, res in out.items():
        onnx.checker.check_model(res.model, full_check=True)
        pruned = {layer.name for layer in res.report.pruned_layers}
        assert {"conv1", "conv3", "conv_cos", "fc"} <= pruned, res.report.format_table()  # initializer inputs are constants
        inits = {t.name for t in res.model.graph.initializer}
        assert not inits & {"c3_w0", "c3_s"}
        got[fmt] = run(res.model, {"X": x})
    dense, compact = out["dense"].model, out["compact"].model
    assert dense.ir_version == 3 and dense.opset_import[0].version == opset  # dense keeps the file's versions
    assert {t.name for t in dense.graph.initializer} <= {i.name for i in dense.graph.input}  # as IR 3 requires
    assert compact.ir_version >= 8 and [i.name for i in compact.graph.input] == ["X"]  # constants, not inputs
    for a, b in zip(got["compact"], got["dense"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    src = run(model, {"X": x})
    assert not np.allclose(src[0], got["dense"][0], rtol=1e-3)
    masks = masked(model, out["dense"])
    weights = {t.name: numpy_helper.to_array(t) for t in dense.graph.initializer}
    originals = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(weights["c1_w"], originals["c1_w"] * masks["c1_w"])


def test_ir4_weight_that_is_also_an_input_stays_dense(graphs):
    model = graphs["zoo_ir3"](9)
    model.ir_version = 7  # from IR 4 on, an initializer that is also an input is only a default value
    res = optimize_onnx_with_report(model, format="dense", block=8, sparsity=0.7)
    reasons = {layer.name: layer.reason for layer in res.report.layers}
    assert "also a graph input" in reasons["conv1"] and "fc" not in {layer.name for layer in res.report.pruned_layers}


def test_weight_shared_with_an_if_branch_stays_dense(graphs):
    model = graphs["shared_with_if"]()
    res = optimize_onnx_with_report(model, format="dense", block=8, sparsity=0.7)
    layers = {layer.name: layer for layer in res.report.layers}
    assert not layers["main_conv"].pruned and "shared" in layers["main_conv"].reason
    assert layers["second_conv"].pruned
    x = np.random.default_rng(3).standard_normal((1, 32, 8, 8)).astype(np.float32)
    feeds = {"X": x, "flag": np.array(True)}
    np.testing.assert_array_equal(run(res.model, feeds)[1], run(model, feeds)[1])  # the branch computes as before
    compact = optimize_onnx_with_report(model, format="compact", block=8, sparsity=0.7).model
    np.testing.assert_allclose(run(compact, feeds)[0], run(res.model, feeds)[0], rtol=1e-4, atol=1e-4)


def test_unknown_opset_and_huge_block_are_refused(graphs):
    model = graphs["folded_weight"]()
    model.opset_import[0].version = 99
    with pytest.raises(ModelError, match="opset 99.*re-export"):
        optimize_onnx_with_report(model)
    with pytest.raises(ModelError, match="smaller than one block"):
        optimize_onnx_with_report(graphs["folded_weight"](), block=10**9)


def test_calibration_with_fewer_labels_than_inputs_is_refused(graphs):
    x = np.zeros((4, 32, 6, 6), np.float32)
    with pytest.raises(DataError, match="4 inputs but 3 labels"):
        optimize_onnx_with_report(graphs["folded_weight"](), saliency="taylor", calibration=(x, np.zeros(3, np.int64)))


def test_output_check_names_the_failing_node():
    nodes = [helper.make_node("Conv", ["X", "w"], ["Y"], name="broken_conv")]
    w = numpy_helper.from_array(np.zeros((8, 5, 3, 3), np.float32), "w")  # 5 input channels for a 4-channel input
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [1, 4, 6, 6])],
                              [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(OnnxInternalError, match="broken_conv") as info:
        verify_output(model, ["broken_conv"])
    assert isinstance(info.value, CrispError) and "No output was written" in str(info.value)
