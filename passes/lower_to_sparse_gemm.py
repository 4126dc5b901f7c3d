"""LowerToHybridSparseGemm: replace every masked Conv2d / Linear with the
``crisp::hybrid_sparse_gemm`` op on compact weights.

Conv2d becomes ``unfold`` -> reorder to (kh, kw, cin) -> ``hybrid_sparse_gemm`` -> reshape back
to ``[N, Cout, oh, ow]``; Linear calls the op directly. The compact tensors live as buffers of a
:class:`CompactWeight` module that takes the original module's place (same path), so the
lowered graph still reads ``layer1.0.conv1.values`` and so on. Every new node carries
``meta["crisp_lowered_from"]``; the op node carries the layer's LayerInfo. The lowered graph
is specialized to the example input's spatial size (the batch size stays free).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from crisp.sparsity.hybrid_tensor import HybridSparseTensor
from crisp.ir.tracing import layer_nodes
from crisp.ir.layer_info import META_KEY
from crisp.ir.meta import LOWERED_KEY
from crisp.sparsity.pattern import Pattern
from crisp.runtime.ops import HYBRID_SPARSE_GEMM

from crisp.passes.base import CrispPass


class CompactWeight(nn.Module):
    """Holds one layer's compact weight (values, block_cols, offsets) and optional bias."""

    def __init__(self, tensor: HybridSparseTensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("values", tensor.values.clone())
        self.register_buffer("block_cols", tensor.block_cols.clone())
        self.register_buffer("offsets", tensor.offsets.clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.shape = tensor.shape
        self.weight_shape = tensor.weight_shape
        self.pattern = tensor.pattern

    def compact(self) -> HybridSparseTensor:
        return HybridSparseTensor(self.values, self.block_cols, self.offsets, self.shape, self.pattern, self.weight_shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, pattern={self.pattern}, kept_blocks_per_row={self.block_cols.shape[1]}"


class LowerToHybridSparseGemm(CrispPass):
    needs = ("layers", "masks")
    adds = ("lowered",)

    def call(self, graph_module: fx.GraphModule) -> bool:
        graph = graph_module.graph
        changed = False
        for node, info in list(layer_nodes(graph_module)):
            if info.mask is None:
                continue
            module = graph_module.get_submodule(node.target)
            pattern: Pattern = graph_module.meta["crisp_sparsity"]["pattern"]
            compact = HybridSparseTensor.from_dense(module.weight.detach(), info.mask, pattern)
            holder = CompactWeight(compact, module.bias)
            graph_module.set_submodule(node.target, holder)
            info.compact = compact
            created: list[fx.Node] = []

            def add(op: str, target, args, kwargs=None) -> fx.Node:
                new = graph.create_node(op, target, args, kwargs or {})
                created.append(new)
                return new

            with graph.inserting_before(node):
                x = node.args[0]
                attrs = [add("get_attr", f"{node.target}.{name}", ()) for name in ("values", "block_cols", "offsets")]
                bias = add("get_attr", f"{node.target}.bias", ()) if module.bias is not None else None
                rows, cols = compact.shape
                if info.kind == "conv":
                    kh, kw = info.conv.kernel
                    cin = info.weight_shape[1]
                    oh, ow = node.meta["tensor_meta"].shape[-2:]
                    unfolded = add("call_function", F.unfold, (x,), {
                        "kernel_size": (kh, kw), "dilation": info.conv.dilations,
                        "padding": info.conv.padding, "stride": info.conv.strides,
                    })  # [N, cin*kh*kw, L], cin slowest
                    split = add("call_method", "unflatten", (unfolded, 1, (cin, kh * kw)))
                    khwc = add("call_method", "permute", (split, 0, 3, 2, 1))  # [N, L, kh*kw, cin]
                    gemm_in = add("call_method", "flatten", (khwc, 2))  # [N, L, K], K in (kh, kw, cin)
                else:
                    gemm_in = x
                gemm = add("call_function", HYBRID_SPARSE_GEMM,
                           (gemm_in, *attrs, bias, rows, cols, pattern.n, pattern.m, pattern.block))
                if info.kind == "conv":
                    channels_first = add("call_method", "transpose", (gemm, 1, 2))  # [N, Cout, L]
                    out = add("call_method", "unflatten", (channels_first, 2, (int(oh), int(ow))))
                else:
                    out = gemm
            for new in created:
                new.meta[LOWERED_KEY] = info.name
            gemm.meta[META_KEY] = info
            if "tensor_meta" in node.meta:
                out.meta["tensor_meta"] = node.meta["tensor_meta"]
            node.replace_all_uses_with(out)
            graph.erase_node(node)
            changed = True
        return changed
