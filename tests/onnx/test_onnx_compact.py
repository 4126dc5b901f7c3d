"""The ONNX form of one hybrid-sparse layer: the model-local functions run in stock onnxruntime
and compute what the masked dense layer computes, for many geometries and patterns."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from crisp.onnx import compact as oc
from crisp.sparsity.hybrid_tensor import HybridSparseTensor
from crisp.sparsity.gemm_view import gemm_to_weight, weight_to_gemm
from crisp.sparsity.pattern import Pattern
from crisp.sparsity.selection import select_hybrid_masks

OPSET = 17


def _mask(weight: torch.Tensor, pattern: Pattern, sparsity: float) -> torch.Tensor:
    sal = weight_to_gemm(weight).abs()
    chosen = select_hybrid_masks({"w": sal}, pattern, max(sparsity, pattern.min_sparsity)).layers["w"].mask
    return gemm_to_weight(chosen, weight.shape)


def _run(model: onnx.ModelProto, x: np.ndarray, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL) -> np.ndarray:
    onnx.checker.check_model(model, full_check=True)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": x})[0]


def _model(node: onnx.NodeProto, inits: list, functions: list, x_shape: list, opset: int = OPSET) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [f"y{i}" for i in range(len(x_shape))])], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(oc.DOMAIN, 1)],
                             functions=functions)


def _conv_model(hst, geometry, bias, x_shape, body="blocks"):
    fs = oc.FunctionSet(hst.pattern, OPSET, body)
    tensors = oc.compact_tensors(hst, "w")
    fn = fs.conv(geometry, bias is not None, oc.trims_rows(hst), tensors.index_bytes)
    inits = tensors.all() + ([numpy_helper.from_array(bias, "b")] if bias is not None else [])
    node = oc.compact_node(fn, "conv", "X", tensors, "b" if bias is not None else None, "Y", hst.shape[1],
                           oc.conv_attributes(geometry, hst.weight_shape[1]))
    return _model(node, inits, fs.all(), x_shape)


PATTERNS = [(2, 4, 8), (1, 4, 4), (2, 8, 8), (3, 8, 16), (1, 2, 4), (2, 4, 32)]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pat=st.sampled_from(PATTERNS),
    cout=st.integers(1, 20), cin=st.integers(1, 12), k=st.sampled_from([1, 2, 3]), stride=st.sampled_from([1, 2]),
    pad=st.integers(0, 2), dil=st.sampled_from([1, 2]), hw=st.integers(5, 9), bias=st.booleans(),
    sparsity=st.floats(0.5, 0.95), seed=st.integers(0, 2**16),
)
def test_conv_function_equals_masked_conv(pat, cout, cin, k, stride, pad, dil, hw, bias, sparsity, seed):
    pattern = Pattern(*pat)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(cout, cin, k, k, generator=gen)
    mask = _mask(w, pattern, sparsity)
    hst = HybridSparseTensor.from_dense(w, mask, pattern)
    b = torch.randn(cout, generator=gen).numpy() if bias else None
    geometry = oc.ConvGeometry((k, k), (stride, stride), (dil, dil), (pad, pad, pad, pad))
    x = torch.randn(2, cin, hw, hw, generator=gen)
    want = F.conv2d(x, w * mask, None if b is None else torch.from_numpy(b), stride=stride, padding=pad, dilation=dil)
    got = _run(_conv_model(hst, geometry, b, ["N", cin, hw, hw]), x.numpy())
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4 * float(want.abs().max() + 1))


@pytest.mark.parametrize("body", ["blocks", "dense"])
def test_asymmetric_pads_and_rectangular_kernel(body):
    pattern = Pattern(2, 4, 8)
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(10, 6, 3, 2, generator=gen)
    mask = _mask(w, pattern, 0.8)
    hst = HybridSparseTensor.from_dense(w, mask, pattern)
    geometry = oc.ConvGeometry((3, 2), (2, 1), (1, 1), (1, 0, 2, 1))
    x = torch.randn(3, 6, 9, 7, generator=gen)
    want = F.conv2d(F.pad(x, (0, 1, 1, 2)), w * mask, stride=(2, 1))
    got = _run(_conv_model(hst, geometry, None, ["N", 6, 9, 7], body), x.numpy())
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)


def _gemm_model(hst, bias, x_shape, trans_a=False, body="blocks"):
    fs = oc.FunctionSet(hst.pattern, OPSET, body)
    tensors = oc.compact_tensors(hst, "w")
    fn = fs.gemm(bias is not None, oc.trims_rows(hst), trans_a, tensors.index_bytes)
    inits = tensors.all() + ([numpy_helper.from_array(bias, "b")] if bias is not None else [])
    node = oc.compact_node(fn, "fc", "X", tensors, "b" if bias is not None else None, "Y", hst.shape[1])
    return _model(node, inits, fs.all(), x_shape)


@settings(max_examples=20, deadline=None)
@given(pat=st.sampled_from(PATTERNS), rows=st.integers(1, 40), cols=st.integers(1, 40), lead=st.sampled_from([(3,), (2, 3)]),
       bias=st.booleans(), trans_a=st.booleans(), body=st.sampled_from(["blocks", "dense"]), seed=st.integers(0, 2**16))
def test_gemm_function_equals_masked_matmul(pat, rows, cols, lead, bias, trans_a, body, seed):
    if trans_a and len(lead) > 1:
        lead = lead[:1]
    pattern = Pattern(*pat)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen)
    mask = _mask(w, pattern, 0.8)
    hst = HybridSparseTensor.from_dense(w, mask, pattern)
    b = torch.randn(rows, generator=gen).numpy() if bias else None
    x = torch.randn(*lead, cols, generator=gen)
    want = x @ (w * mask).t() + (0 if b is None else torch.from_numpy(b))
    feed = x.t().contiguous() if trans_a else x
    got = _run(_gemm_model(hst, b, list(feed.shape), trans_a, body), feed.numpy())
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4 * float(want.abs().max() + 1))


def test_wide_layers_use_two_byte_block_columns_and_still_match():
    pattern = Pattern(2, 4, 4)
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(6, 1100, generator=gen)  # 275 block columns > 256: 2-byte indices
    mask = _mask(w, pattern, 0.9)
    hst = HybridSparseTensor.from_dense(w, mask, pattern)
    assert oc.index_bytes_for(hst) == 2
    x = torch.randn(2, 1100, generator=gen)
    model = _gemm_model(hst, None, [2, 1100])
    assert any(f.name.endswith("_w") for f in model.functions)
    np.testing.assert_allclose(_run(model, x.numpy()), (x @ (w * mask).t()).numpy(), rtol=1e-4, atol=1e-4)


def test_weight_part_constant_folds_and_unoptimized_session_agrees(tmp_path):
    """onnxruntime folds the weight decoder at session creation; with optimizations off the
    function still computes the same result (it then decodes on every run)."""
    pattern = Pattern(2, 4, 8)
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(16, 8, 3, 3, generator=gen)
    hst = HybridSparseTensor.from_dense(w, _mask(w, pattern, 0.8), pattern)
    model = _conv_model(hst, oc.ConvGeometry((3, 3), pads=(1, 1, 1, 1)), None, ["N", 8, 6, 6])
    x = torch.randn(1, 8, 6, 6, generator=gen).numpy()
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "opt.onnx"))
    ops = {n.op_type for n in optimized.graph.node}
    assert "ScatterElements" not in ops and "Mod" not in ops  # decoded once, at load
    assert "MatMul" in ops and "Gather" in ops  # the block-sparse part runs per inference
    np.testing.assert_allclose(_run(model, x, ort.GraphOptimizationLevel.ORT_DISABLE_ALL), _run(model, x), rtol=1e-5, atol=1e-5)


def test_stored_values_drop_only_padding():
    pattern = Pattern(2, 4, 32)
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(40, 24, generator=gen)  # one block column of which 8 columns are padding
    hst = HybridSparseTensor.from_dense(w, _mask(w, pattern, 0.5), pattern)
    tensors = oc.compact_tensors(hst, "w")
    values = numpy_helper.to_array(tensors.values)
    assert values.shape == (40, 12)  # 6 real groups of 4 -> 12 values per row, not 16
    kept = weight_to_gemm(hst.to_dense()).numpy()
    assert np.count_nonzero(values) == np.count_nonzero(kept)
    np.testing.assert_array_equal(np.sort(values[values != 0]), np.sort(kept[kept != 0]))


def test_function_names_are_shared_per_kind():
    fs = oc.FunctionSet(Pattern(2, 4, 32), OPSET)
    a = fs.conv(oc.ConvGeometry((3, 3), pads=(1, 1, 1, 1)), True, False)
    b = fs.conv(oc.ConvGeometry((5, 5), (2, 2), pads=(2, 2, 2, 2)), True, False)
    c = fs.conv(oc.ConvGeometry((1, 1)), False, True)
    assert a is b and a.name == "Conv_b" and c.name == "Conv1x1_t"
    assert [f.name for f in fs.all()][0].startswith("Weight_")
    with pytest.raises(ValueError):
        oc.FunctionSet(Pattern(2, 4, 32), OPSET, body="nope")


def test_auto_body_gathers_blocks_only_where_few_are_kept():
    pattern = Pattern(2, 4, 32)
    gen = torch.Generator().manual_seed(6)
    w = torch.randn(512, 512, 1, 1, generator=gen)
    sparse = HybridSparseTensor.from_dense(w, _mask(w, pattern, 0.95), pattern)  # 1-2 of 16 blocks per row
    full = HybridSparseTensor.from_dense(w, _mask(w, pattern, 0.5), pattern)  # every block kept
    assert sparse.kept_blocks_per_row <= 2 and full.kept_blocks_per_row == 16
    assert oc.choose_body(sparse, "conv") == "blocks" and oc.choose_body(full, "conv") == "dense"
    # a kernel conv also pays for its im2col: the same few blocks over a tiny K do not pay
    stem_w = torch.randn(64, 3, 7, 7, generator=gen)
    stem = HybridSparseTensor.from_dense(stem_w, _mask(stem_w, pattern, 0.9), pattern)
    assert oc.choose_body(stem, "conv", pointwise=False) == "dense"
    fc = torch.randn(64, 256, generator=gen)
    assert oc.choose_body(HybridSparseTensor.from_dense(fc, _mask(fc, pattern, 0.8), pattern), "linear") == "blocks"
    assert oc.choose_body(HybridSparseTensor.from_dense(fc, _mask(fc, pattern, 0.5), pattern), "linear") == "dense"
