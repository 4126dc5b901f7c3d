"""Passes as plain torch.fx infra passes: usable one by one, ordered by what they need,
never mutating their input, and runnable under torch's own PassManager."""

import copy

import pytest
import torch
from torch.fx.passes.infra.pass_base import PassResult
from torch.fx.passes.infra.pass_manager import PassManager

import crisp
from crisp import Pattern, Pipeline
from crisp.errors import PassOrderError
from crisp.ir.tracing import trace
from crisp.sparsity.masking import relative_error
from crisp.passes import (
    ComputeSaliency, FindPrunableLayers, FoldBatchNorm, LowerToHybridSparseGemm, PropagateShapes, SelectHybridMasks,
    VerifyAgainstMaskedDense,
)

P = Pattern(2, 4, 16)


@pytest.fixture()
def setup():
    model = crisp.models.build("small_cnn")
    x = torch.randn(2, 1, 8, 8)
    return model, x, trace(model)


def test_single_passes_in_a_user_pipeline(setup):
    model, x, gm = setup
    result = Pipeline([PropagateShapes((x,)), FindPrunableLayers(P), ComputeSaliency("magnitude"), SelectHybridMasks(P, 0.8)])(gm)
    assert isinstance(result, PassResult)
    infos = {n.target: n.meta["crisp"] for n in result.graph_module.graph.nodes if "crisp" in n.meta}
    assert set(infos) == {"conv1", "conv2", "conv3", "conv4", "fc1", "fc2"}
    assert infos["conv1"].mask is None and "smaller than one block" in infos["conv1"].reason
    assert infos["conv2"].mask is not None and infos["conv2"].saliency is not None
    # analysis only: the graph still computes the dense model
    assert torch.allclose(result.graph_module(x), model(x))
    assert result.graph_module.meta["crisp_sparsity"]["achieved"] == pytest.approx(0.8, abs=0.01)


def test_missing_requirement_names_the_providing_pass(setup):
    _, x, gm = setup
    with pytest.raises(PassOrderError, match="SelectHybridMasks needs the analysis 'saliency', which ComputeSaliency provides"):
        Pipeline([PropagateShapes((x,)), FindPrunableLayers(P), SelectHybridMasks(P, 0.8)])(gm)
    with pytest.raises(PassOrderError, match="needs the analysis 'shapes', which PropagateShapes provides"):
        FindPrunableLayers(P)(gm)


def test_passes_never_mutate_their_input(setup):
    model, x, gm = setup
    code_before = gm.code
    state_before = copy.deepcopy(gm.state_dict())
    staged = Pipeline([PropagateShapes((x,)), FindPrunableLayers(P), ComputeSaliency(), SelectHybridMasks(P, 0.8)])(gm).graph_module
    staged_code = staged.code
    lowered = LowerToHybridSparseGemm()(FoldBatchNorm()(staged).graph_module).graph_module
    assert gm.code == code_before
    assert all(torch.equal(state_before[k], v) for k, v in gm.state_dict().items())
    assert staged.code == staged_code and "hybrid_sparse_gemm" not in staged_code
    assert "hybrid_sparse_gemm" in lowered.code


def test_passes_run_under_torch_pass_manager(setup):
    model, x, gm = setup
    passes = [PropagateShapes((x,)), FindPrunableLayers(P), ComputeSaliency(), SelectHybridMasks(P, 0.9),
              FoldBatchNorm(), LowerToHybridSparseGemm(), VerifyAgainstMaskedDense(model, (x,))]
    result = PassManager(passes=passes, steps=1)(gm)
    lowered = result.graph_module
    assert result.modified
    assert lowered.meta["crisp_verification"]["relative_error"] <= 1e-4
    masks = {n.meta["crisp"].weight_name: n.meta["crisp"].mask for n in lowered.graph.nodes
             if "crisp" in n.meta and n.meta["crisp"].mask is not None}
    assert relative_error(lowered(x), crisp.apply_masks(model, masks)(x)) <= 1e-4


def test_lowered_nodes_are_tagged_and_batchnorm_folded(setup):
    model, x, gm = setup
    lowered = crisp.default_pipeline(model, (x,), P, 0.8)(gm).graph_module
    gemms = [n for n in lowered.graph.nodes if n.target is torch.ops.crisp.hybrid_sparse_gemm.default]
    assert len(gemms) == 5
    for node in gemms:
        info = node.meta["crisp"]
        assert info.compact is not None and node.meta["crisp_lowered_from"] == info.name
    conv2 = next(n.meta["crisp"] for n in gemms if n.meta["crisp"].name == "conv2")
    assert conv2.folded_batchnorm == "bn2"
    assert not hasattr(lowered, "bn2")


def test_default_pipeline_is_named():
    assert crisp.PIPELINES["default"] is crisp.default_pipeline
