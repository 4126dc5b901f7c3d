"""Every implementation considered for a pruned conv, timed alone on its real input: the C++ kernels,
vectorized torch (gather + batched matmul) and the reference kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from crisp.bench.cpu_peers import capture_layer_inputs, fold_batchnorm, masked_copy
from crisp.bench.timing import measure
from crisp.ir.layer_info import LayerInfo
from crisp.runtime import fast_kernel
from crisp.runtime.packed_weight import ChannelPackedWeight, PackedHybridWeight
from crisp.runtime.reference_kernel import reference_hybrid_sparse_gemm
from crisp.sparsity.gemm_view import pad_to_blocks


class TorchGatherBmm:
    """The vectorized-torch alternative to the C++ kernels: unfold in (kh, kw, cin) order, gather
    each block-row's kept block columns, one batched matmul with the kept blocks (N:M zeros kept
    inside them, so it does n/m-times-too-many multiply-adds and stores the blocks densely)."""

    def __init__(self, info: LayerInfo):
        t = info.compact
        b = t.pattern.block
        nbr, k = t.block_cols.shape
        self.info, self.rows, self.k = info, t.shape[0], t.shape[1]
        self.padded_k = t.num_block_cols * b
        self.index = (t.block_cols.to(torch.int64)[:, :, None] * b + torch.arange(b)).reshape(nbr, k * b)  # [nbr, kB]
        dense = pad_to_blocks(t.to_dense_gemm(), b, 0)  # only to cut out the kept blocks
        self.blocks = torch.stack([dense[r * b:(r + 1) * b, self.index[r]] for r in range(nbr)])  # [nbr, B, kB]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.info.conv
        n, c, h, w = x.shape
        kh, kw = conv.kernel
        cols = F.unfold(x, (kh, kw), conv.dilations, conv.padding, conv.strides)  # [N, c*kh*kw, L]
        cols = cols.unflatten(1, (c, kh * kw)).transpose(1, 2).flatten(1, 2)  # [N, K, L] in (kh, kw, cin)
        if self.padded_k != self.k:
            cols = F.pad(cols, (0, 0, 0, self.padded_k - self.k))
        gathered = cols[:, self.index]  # [N, nbr, kB, L]
        out = torch.matmul(self.blocks, gathered)  # [N, nbr, B, L]
        oh, ow = conv.out_size(h, w)
        return out.flatten(1, 2)[:, : self.rows].unflatten(2, (oh, ow))


def kernel_alternatives(model: nn.Module, compiled, x: torch.Tensor, **measure_kw) -> list[dict]:
    """Every pruned conv of ``compiled`` run alone by each implementation we considered."""
    folded = fold_batchnorm(masked_copy(model, compiled.masks))
    convs = [info for info in compiled.layers if info.compact is not None and info.kind == "conv"]
    inputs = capture_layer_inputs(folded, [info.name for info in convs], x)
    rows = []
    with torch.no_grad():
        for info in convs:
            xi = inputs[info.name]
            x_cl = xi.contiguous(memory_format=torch.channels_last)
            conv = info.conv
            geometry = (conv.kernel, conv.strides, conv.padding, conv.dilations)
            want = F.conv2d(xi, folded.get_submodule(info.name).weight, None, conv.strides, conv.padding, conv.dilations)
            row = {"name": info.name, "kind": info.kind_label, "density": float(info.mask.sum()) / info.mask.numel()}
            runs = {}
            rows_pack = PackedHybridWeight.from_compact(info.compact)
            runs["cpp_rows_kernel"] = lambda: fast_kernel.conv2d(xi, rows_pack, None, *geometry)
            if ChannelPackedWeight.supports(info.compact, info.weight_shape[1], fast_kernel.channel_max_m()):
                chan_pack = ChannelPackedWeight.from_compact(info.compact, info.weight_shape[1])
                runs["cpp_channel_kernel"] = lambda: fast_kernel.conv2d(x_cl, chan_pack, None, *geometry)
            gather_bmm = TorchGatherBmm(info)
            runs["torch_gather_bmm"] = lambda: gather_bmm(xi)

            def reference(info=info):
                cols = F.unfold(xi, conv.kernel, conv.dilations, conv.padding, conv.strides)
                cols = cols.unflatten(1, (xi.shape[1], -1)).transpose(1, 2).flatten(1, 2).transpose(1, 2)
                return reference_hybrid_sparse_gemm(cols, info.compact, None).transpose(1, 2).unflatten(2, want.shape[2:])

            runs["reference_kernel"] = reference
            for method, run in runs.items():
                got = run()
                row[f"{method}_error"] = float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))
                slow = method == "reference_kernel"
                row[f"{method}_ms"] = measure(run, warmup=1, min_runs=3 if slow else 5, **measure_kw).median_ms
            row["cpp_as_compiled_ms"] = row.get("cpp_channel_kernel_ms", row["cpp_rows_kernel_ms"])
            rows.append(row)
    return rows
