"""``crisp.optimize_onnx`` on hand-built graphs: every prunable form (Conv with/without bias,
Gemm transA/transB/alpha/beta, MatMul, Constant-node and ConstantOfShape weights, external
data), ops crisp has never seen, both output formats, everything else preserved."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from crisp.errors import CrispError, ModelError, PatternError
from crisp.onnx.io import OnnxInputError, constant_node_value, save_model
from crisp.onnx.optimize import AlreadyOptimizedError, optimize_onnx, optimize_onnx_with_report
from crisp.onnx.to_fx import OnnxImportError
from crisp.pruning.class_data import DataError
from crisp.sparsity.pattern import Pattern
from crisp.sparsity.pattern_check import hybrid_violation

BLOCK = 8  # small blocks so that the small test layers have several blocks per row


def _unsqueeze(opset, x, out, axis, name):
    if opset >= 13:
        return [helper.make_node("Constant", [], [f"{name}_axes"], value=numpy_helper.from_array(np.array([axis], np.int64)),
                                 name=f"{name}_axes"),
                helper.make_node("Unsqueeze", [x, f"{name}_axes"], [out], name=name)]
    return [helper.make_node("Unsqueeze", [x], [out], axes=[axis], name=name)]


def zoo(opset: int = 13, unknown_op: bool = True, seed: int = 0) -> onnx.ModelProto:
    """A small CNN holding every prunable form and some ops that must pass through."""
    rng = np.random.default_rng(seed)

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    inits = [
        numpy_helper.from_array(r(24, 16, 3, 3) * 0.2, "w2_noise"), numpy_helper.from_array(r(24), "b2"),
        numpy_helper.from_array(np.abs(r(16)) + 0.5, "bn_scale"), numpy_helper.from_array(r(16) * 0.1, "bn_bias"),
        numpy_helper.from_array(r(16) * 0.1, "bn_mean"), numpy_helper.from_array(np.abs(r(16)) + 0.5, "bn_var"),
        numpy_helper.from_array(r(40, 24), "fc1_w"), numpy_helper.from_array(r(40), "fc1_b"),
        numpy_helper.from_array(r(40, 36), "fc2_w"), numpy_helper.from_array(r(1, 36), "fc2_c"),
        numpy_helper.from_array(r(36, 20), "mm_w"),
        numpy_helper.from_array(r(12, 20), "fc3_w"),
    ] + ([numpy_helper.from_array(np.zeros(1, np.float32), "fc3_c")] if opset < 11 else [])  # C is optional from opset 11
    nodes = [
        helper.make_node("Constant", [], ["w1"], value=numpy_helper.from_array(r(16, 3, 3, 3)), name="w1_const"),
        helper.make_node("Conv", ["X", "w1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["bn1"], name="bn1"),
        helper.make_node("Relu", ["bn1"], ["r1"], name="relu1"),
        helper.make_node("Constant", [], ["w2_shape"], value=numpy_helper.from_array(np.array([24, 16, 3, 3], np.int64)), name="w2_shape"),
        helper.make_node("ConstantOfShape", ["w2_shape"], ["w2_base"], value=numpy_helper.from_array(np.array([0.05], np.float32)),
                         name="w2_cos"),
        helper.make_node("Add", ["w2_base", "w2_noise"], ["w2"], name="w2_add"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    ]
    last = "c2"
    if unknown_op:  # a standard op that crisp never handles: it must pass through untouched
        nodes.append(helper.make_node("LpNormalization", ["c2"], ["lp"], name="mystery", axis=1, p=2))
        last = "lp"
    nodes += [
        helper.make_node("GlobalAveragePool", [last], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc1_w", "fc1_b"], ["f1"], name="fc1", transB=1),
        helper.make_node("Relu", ["f1"], ["r2"], name="relu2"),
        helper.make_node("Transpose", ["r2"], ["r2t"], name="tr", perm=[1, 0]),
        helper.make_node("Gemm", ["r2t", "fc2_w", "fc2_c"], ["f2"], name="fc2", transA=1, transB=0, alpha=0.5, beta=2.0),
    ]
    nodes += _unsqueeze(opset, "f2", "f2u", 1, "unsq")
    nodes += [
        helper.make_node("MatMul", ["f2u", "mm_w"], ["m3"], name="matmul3d"),
        helper.make_node("Flatten", ["m3"], ["m3f"], name="flatten2", axis=1),
        helper.make_node("Gemm", ["m3f", "fc3_w"] + (["fc3_c"] if opset < 11 else []), ["Y"], name="fc3", transB=1),
    ]
    graph = helper.make_graph(nodes, "zoo", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3, 12, 12])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 12])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="crisp-tests")
    model.ir_version = min(model.ir_version, 7 if opset < 15 else model.ir_version)
    helper.set_model_props(model, {"author": "tests"})
    onnx.checker.check_model(model, full_check=True)
    return model


PRUNABLE = {"conv1", "conv2", "fc1", "fc2", "matmul3d", "fc3"}


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def weights_of(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


X = np.random.default_rng(1).standard_normal((3, 3, 12, 12)).astype(np.float32)


@pytest.fixture(scope="module")
def results():
    model = zoo()
    before = model.SerializeToString()
    # body="blocks": every layer's function gathers kept blocks (auto would pick dense ops for some toy layers)
    out = {fmt: optimize_onnx_with_report(model, pattern="2:4", block=BLOCK, sparsity=0.8, format=fmt, body="blocks")
           for fmt in ("dense", "compact")}
    assert model.SerializeToString() == before  # the input is never changed
    return model, out


def test_both_formats_pass_the_full_checker_and_agree(results):
    model, out = results
    for res in out.values():
        onnx.checker.check_model(res.model, full_check=True)
    dense, compact = run(out["dense"].model, X), run(out["compact"].model, X)
    np.testing.assert_allclose(compact, dense, rtol=1e-4, atol=1e-4 * float(np.abs(dense).max()))
    assert not np.allclose(dense, run(model, X), rtol=1e-3)  # pruning really happened


@pytest.mark.parametrize("body", ["auto", "measure", "dense"])
def test_other_bodies_compute_the_same(results, body):
    model, out = results
    res = optimize_onnx_with_report(model, block=BLOCK, sparsity=0.8, body=body)
    executions = {layer.execution for layer in res.report.pruned_layers}
    assert executions <= {"blocks", "dense"} and (body in ("auto", "measure") or executions == {body})
    assert all(np.array_equal(res.masks[k], out["compact"].masks[k]) for k in res.masks)
    want = run(out["dense"].model, X)
    np.testing.assert_allclose(run(res.model, X), want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_report_lists_every_candidate_with_a_reason(results):
    _, out = results
    report = out["compact"].report
    assert {layer.name for layer in report.layers} == PRUNABLE
    assert all(layer.pruned and layer.reason == "pruned" and layer.execution == "blocks" for layer in report.layers)
    assert abs(report.achieved_sparsity - 0.8) < 0.05
    text = report.format_table()
    assert "conv2" in text and "achieved" in text
    d = report.to_dict()
    assert d["layers"][0]["density"] is not None and d["size_bound_bytes"] > 0


def test_dense_output_obeys_the_pattern_and_keeps_the_input_weights(results):
    model, out = results
    res = out["dense"]
    before, after = weights_of(model), weights_of(res.model)
    pattern = Pattern(2, 4, BLOCK)
    by_name = {layer.name: layer for layer in res.report.layers}
    for name, mask in res.masks.items():
        layer = by_name[name]
        w_in = before.get(layer.weight_name)
        w_out = after[layer.weight_name]
        if w_in is None:  # folded from a Constant / ConstantOfShape subgraph
            w_in = {"conv1": constant_node_value(model.graph.node[0]), "conv2": np.float32(0.05) + before["w2_noise"]}[name]
        t = torch.from_numpy(mask)
        t = t.t() if name in ("fc2", "matmul3d") else t  # stored [K, rows] -> torch layout
        assert hybrid_violation(t, pattern) is None, name
        np.testing.assert_array_equal(w_out[~mask], 0)
        np.testing.assert_array_equal(w_out[mask], w_in[mask])
        assert np.count_nonzero(w_out) == mask.sum()


def test_everything_else_is_preserved(results):
    model, out = results
    for fmt, res in out.items():
        m = res.model
        assert [i.name for i in m.graph.input] == ["X"] and [o.name for o in m.graph.output] == ["Y"]
        folded = {"w1_const", "w2_shape", "w2_cos", "w2_add"}
        names_in = [n.name for n in model.graph.node if n.name not in folded]
        assert [n.name for n in m.graph.node] == names_in  # the weight subgraphs were folded, nothing else moved
        untouched = {n.name: n for n in model.graph.node if n.name not in PRUNABLE}
        for node in m.graph.node:
            if node.name in untouched:
                assert node == untouched[node.name], node.name
        mystery = next(n for n in m.graph.node if n.name == "mystery")
        assert mystery.op_type == "LpNormalization"
        props = {p.key: p.value for p in m.metadata_props}
        assert props["author"] == "tests" and props["crisp.pattern"] == "2:4" and props["crisp.format"] == fmt
        assert props["crisp.block"] == str(BLOCK) and "crisp.version" in props
        assert m.producer_name == "crisp-tests"
        for name in ("bn_scale", "bn_bias", "bn_mean", "bn_var", "b2", "fc1_b"):
            assert weights_of(m)[name].tobytes() == weights_of(model)[name].tobytes()
    compact = out["compact"].model
    assert {(o.domain, o.version) for o in compact.opset_import} == {("", 13), ("crisp", 1)}
    assert {n.name: n.domain for n in compact.graph.node if n.name in PRUNABLE} == dict.fromkeys(PRUNABLE, "crisp")
    assert all(f.domain == "crisp" for f in compact.functions)


def test_compact_tensors_hold_little_more_than_the_kept_weights(results):
    """The file-size rule itself is checked on the exported ResNet-50/MobileNetV2/VGG-16 (a toy
    graph this small is dominated by the function definitions)."""
    _, out = results
    report = out["compact"].report
    kept_bytes = 4 * sum(layer.kept_weights for layer in report.pruned_layers)
    values_bytes = report.stored_weight_bytes - report.metadata_bytes
    assert kept_bytes <= values_bytes <= 1.3 * kept_bytes  # zeros only where edge blocks are padded
    assert report.metadata_bytes < 0.1 * report.dense_weight_bytes
    assert report.output_bytes < out["dense"].report.output_bytes


def test_optimizing_a_crisp_output_again_is_refused(results, tmp_path):
    _, out = results
    for res in out.values():
        with pytest.raises(AlreadyOptimizedError, match="already an output of crisp"):
            optimize_onnx(res.model)
    stripped = onnx.ModelProto()
    stripped.CopyFrom(out["compact"].model)
    del stripped.metadata_props[:]  # no metadata: the crisp domain still gives it away
    with pytest.raises(AlreadyOptimizedError):
        optimize_onnx(stripped)


def test_deterministic_bytes():
    a = optimize_onnx(zoo(), block=BLOCK, sparsity=0.8)
    b = optimize_onnx(zoo(), block=BLOCK, sparsity=0.8)
    assert a.SerializeToString() == b.SerializeToString()


@pytest.mark.parametrize("opset", [9, 17, 21])
def test_other_opsets(opset):
    model = zoo(opset=opset, unknown_op=opset >= 12)
    compact = optimize_onnx(model, block=BLOCK, sparsity=0.8)
    dense = optimize_onnx(model, block=BLOCK, sparsity=0.8, format="dense")
    assert dense.opset_import[0].version == opset  # dense keeps the opset; compact needs >= 13
    assert compact.opset_import[0].version == max(opset, 13)
    for m in (compact, dense):
        onnx.checker.check_model(m, full_check=True)
    d = run(dense, X)
    np.testing.assert_allclose(run(compact, X), d, rtol=1e-4, atol=1e-4 * float(np.abs(d).max()))


def test_external_data_input(tmp_path):
    model = zoo()
    path = save_model(model, tmp_path / "ext.onnx", external_data=True)
    assert (tmp_path / "ext.onnx.data").exists()
    out = optimize_onnx(path, block=BLOCK, sparsity=0.8)
    np.testing.assert_allclose(run(out, X), run(optimize_onnx(model, block=BLOCK, sparsity=0.8), X), rtol=1e-6)


def test_exclude_keeps_layers_untouched():
    model = zoo()
    res = optimize_onnx_with_report(model, block=BLOCK, sparsity=0.8, exclude=("fc*", "conv1"))
    by_name = {layer.name: layer for layer in res.report.layers}
    assert not by_name["fc2"].pruned and "excluded" in by_name["fc2"].reason
    assert by_name["conv2"].pruned and by_name["matmul3d"].pruned
    fc1 = next(n for n in res.model.graph.node if n.name == "fc1")
    assert fc1 == next(n for n in model.graph.node if n.name == "fc1")


def test_unprunable_forms_get_a_reason():
    nodes = [helper.make_node("Conv", ["X", "wd"], ["c"], name="depthwise", group=4, kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("MatMul", ["c", "c"], ["Y"], name="dynamic")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4, 5, 5])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 4, 5, 5])],
                              [numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "wd")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(ModelError, match="no prunable layer") as err:
        optimize_onnx(model)
    assert "depthwise" in str(err.value) and "group" in str(err.value)


def test_bad_arguments():
    model = zoo()
    with pytest.raises(ModelError, match="format"):
        optimize_onnx(model, format="sparse")
    with pytest.raises(ModelError, match="saliency"):
        optimize_onnx(model, saliency="random")
    with pytest.raises(ModelError, match="calibration"):
        optimize_onnx(model, saliency="taylor")
    with pytest.raises(PatternError):
        optimize_onnx(model, pattern="4:2")
    with pytest.raises(PatternError):
        optimize_onnx(model, sparsity=0.3)
    with pytest.raises(OnnxInputError):
        optimize_onnx("definitely/not/here.onnx")
    with pytest.raises(OnnxInputError):
        optimize_onnx(b"not a model")  # type: ignore[arg-type]
    assert issubclass(AlreadyOptimizedError, CrispError)


# ---------------------------------------------------------------------------------- class-aware saliency
def test_taylor_saliency_on_the_imported_graph():
    model = zoo(unknown_op=False)
    xs = np.random.default_rng(2).standard_normal((40, 3, 12, 12)).astype(np.float32)
    logits = run(model, xs)
    labels = logits.argmax(1)
    classes = sorted(set(labels.tolist()))[:2]
    res = optimize_onnx_with_report(model, block=BLOCK, sparsity=0.8, saliency="taylor", calibration=(xs, labels), classes=classes)
    mag = optimize_onnx_with_report(model, block=BLOCK, sparsity=0.8)
    onnx.checker.check_model(res.model, full_check=True)
    assert res.report.saliency == "taylor"
    assert any(not np.array_equal(res.masks[k], mag.masks[k]) for k in res.masks)  # the data changed the choice
    dense = optimize_onnx(model, block=BLOCK, sparsity=0.8, saliency="taylor", calibration=(xs, labels), classes=classes, format="dense")
    np.testing.assert_allclose(run(res.model, X), run(dense, X), rtol=1e-4, atol=1e-4)
    # a DataLoader-like iterable with the same batches gives the same masks
    batches = [(torch.from_numpy(xs[i:i + 32]), torch.from_numpy(labels[i:i + 32])) for i in range(0, 40, 32)]
    again = optimize_onnx_with_report(model, block=BLOCK, sparsity=0.8, saliency="taylor", calibration=batches, classes=classes)
    assert all(np.array_equal(again.masks[k], res.masks[k]) for k in res.masks)
    # labels default to the model's own predictions, which are `labels` here
    unlabeled = optimize_onnx_with_report(model, block=BLOCK, sparsity=0.8, saliency="taylor", calibration=xs, classes=classes)
    assert all(np.array_equal(unlabeled.masks[k], res.masks[k]) for k in res.masks)


def test_taylor_saliency_errors():
    # the ONNX path runs crisp's one Taylor saliency, so it refuses bad data as crisp.prune does (DataError)
    model = zoo(unknown_op=False)
    xs = np.random.default_rng(3).standard_normal((8, 3, 12, 12)).astype(np.float32)
    labels = np.arange(8) % 3
    with pytest.raises(DataError, match=r"classes \[50\] are outside the model's outputs: it predicts 12 classes"):
        optimize_onnx(model, saliency="taylor", calibration=(xs, labels), classes=[1, 50])
    with pytest.raises(DataError, match="empty"):
        optimize_onnx(model, saliency="taylor", calibration=(xs, labels), classes=[])
    with pytest.raises(DataError, match="no batch of user-class samples"):
        optimize_onnx(model, saliency="taylor", calibration=(xs, labels), classes=[7])
    with pytest.raises(DataError, match="integer class ids"):
        optimize_onnx(model, saliency="taylor", calibration=[(xs, labels.astype(np.float32))])
    with pytest.raises(DataError, match="empty"):
        optimize_onnx(model, saliency="taylor", calibration=[])
    with pytest.raises(OnnxImportError, match="'mystery'.*LpNormalization.*magnitude"):
        optimize_onnx(zoo(), saliency="taylor", calibration=xs)
