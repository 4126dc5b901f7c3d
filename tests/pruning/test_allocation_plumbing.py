"""``allocation=`` reaches the selection from crisp.compile, crisp.prune, crisp.optimize_onnx and the
CLI: the same masks as select_hybrid_masks with that rule, recorded in reports and histories."""

import io

import pytest
import torch
from torch import nn

import crisp
from crisp.cli import build_parser
from crisp.errors import CrispError
from crisp.pruning.prune import prune
from crisp.sparsity.gemm_view import weight_to_gemm
from crisp.sparsity.pattern import Pattern
from crisp.sparsity.selection import select_hybrid_masks

P = Pattern(2, 4, 8)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 16, 16)
        with torch.no_grad():
            self.fc.weight.mul_(0.01)  # a layer with a small score scale: the paper's rule starves it

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _expected(model: nn.Module, allocation: str) -> dict[str, torch.Tensor]:
    sal = {"conv": weight_to_gemm(model.conv.weight.detach().abs()), "fc": model.fc.weight.detach().abs()}
    return {n: s.mask for n, s in select_hybrid_masks(sal, P, 0.85, allocation).layers.items()}


@pytest.mark.parametrize("allocation", ["paper", "normalized", "lamp"])
def test_compile_uses_the_allocation_and_reports_it(allocation):
    model, x = Net().eval(), torch.randn(1, 32, 4, 4)
    compiled = crisp.compile(model, (x,), target="reference", pattern=P, sparsity=0.85, allocation=allocation)
    want = _expected(model, allocation)
    assert torch.equal(weight_to_gemm(compiled.masks["conv.weight"]), want["conv"])
    assert torch.equal(compiled.masks["fc.weight"], want["fc"])
    report = compiled.report.to_dict()
    assert report["allocation"] == allocation
    assert report["density_distribution"]["layers"] == 2
    assert f"(allocation {allocation})" in compiled.report.summary()
    assert "layer density over 2 pruned layers" in compiled.report.summary()


def test_paper_allocation_puts_the_small_scale_layer_at_its_floor_and_the_default_does_not():
    model, x = Net().eval(), torch.randn(1, 32, 4, 4)
    paper = crisp.compile(model, (x,), target="reference", pattern=P, sparsity=0.85, allocation="paper").report
    default = crisp.compile(model, (x,), target="reference", pattern=P, sparsity=0.85).report
    assert "fc" in paper.density_distribution()["at_floor"]
    assert default.density_distribution()["at_floor"] == []


def test_unknown_allocation_is_a_crisp_error_everywhere():
    model, x = Net().eval(), torch.randn(1, 32, 4, 4)
    with pytest.raises(CrispError, match="known allocations: paper, normalized, lamp"):
        crisp.compile(model, (x,), pattern=P, sparsity=0.85, allocation="uniform?")
    data = [(torch.randn(8, 32, 4, 4), torch.randint(0, 2, (8,)))]
    with pytest.raises(CrispError, match="known allocations"):
        prune(model, data, classes=[0, 1], pattern=P, sparsity=0.85, allocation="nope")
    with pytest.raises(CrispError, match="known allocations"):
        crisp.optimize_onnx(io.BytesIO(), pattern=P, sparsity=0.85, allocation="nope")


def test_prune_records_the_allocation_and_its_masks_follow_it():
    model = Net().eval()
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 32, 4, 4, generator=gen), torch.randint(0, 2, (16,), generator=gen)) for _ in range(2)]
    runs = {a: prune(model, data, classes=[0, 1], pattern=P, sparsity=0.85, steps=1, epochs_per_step=0,
                     warmup_epochs=0, saliency="magnitude", allocation=a)[1] for a in ("paper", "normalized")}
    for allocation, history in runs.items():
        assert history.allocation == allocation and history.to_dict()["allocation"] == allocation
        assert history.to_dict()["density_distribution"]["layers"] == 2
    assert runs["paper"].layers["fc.weight"]["kept_blocks_per_row"] == 1
    assert runs["normalized"].layers["fc.weight"]["kept_blocks_per_row"] > 1


@pytest.mark.parametrize("command", [["compile"], ["prune", "--classes", "3", "5"], ["optimize", "in.onnx", "-o", "o.onnx"]])
def test_cli_takes_allocation(command):
    parser = build_parser()
    assert parser.parse_args(command + ["--allocation", "paper"]).allocation == "paper"
    assert parser.parse_args(command).allocation == crisp.sparsity.selection.DEFAULT_ALLOCATION
    with pytest.raises(SystemExit):
        parser.parse_args(command + ["--allocation", "nope"])
