"""The compact initializers of a pruned layer (values and index, from a
:class:`crisp.sparsity.hybrid_tensor.HybridSparseTensor`) and the ``crisp`` node that reads them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from crisp.onnx.compact.body import COLS_ATTR, DOMAIN
from crisp.sparsity.bitpack import pack_bits
from crisp.sparsity.hybrid_tensor import HybridSparseTensor


@dataclass
class CompactTensors:
    values: onnx.TensorProto  # float [rows, <= k*V]
    index: onnx.TensorProto  # uint8: block columns (little-endian), then packed offsets
    index_bytes: int  # bytes per block column (1, 2 or 4)
    metadata_nbytes: int

    def all(self) -> list[onnx.TensorProto]:
        return [self.values, self.index]


def stored_value_columns(hst: HybridSparseTensor) -> int:
    """How many values per row the file stores: ``k * (B/m) * n``, less the groups of the last
    kept block that lie wholly in the K padding when every block-row keeps the edge block."""
    p = hst.pattern
    width = hst.kept_blocks_per_row * p.values_per_block_row
    tail = hst.shape[1] % p.block
    if not tail or hst.kept_blocks_per_row == 0:
        return width
    if not bool((hst.block_cols[:, -1].to(torch.int64) == hst.num_block_cols - 1).all()):
        return width
    return width - (p.groups_per_block - -(-tail // p.m)) * p.n


def index_bytes_for(hst: HybridSparseTensor) -> int:
    """Bytes per stored block column: 1 up to 256 block columns, 2 up to 65536, else 4."""
    nbc = hst.num_block_cols
    return 1 if nbc <= 1 << 8 else 2 if nbc <= 1 << 16 else 4


def compact_tensors(hst: HybridSparseTensor, prefix: str, scale: float = 1.0) -> CompactTensors:
    """The two initializers of a compact layer (``scale`` multiplies the values, e.g. Gemm alpha).
    Rows and trailing groups that are only block padding are not stored; the weight function
    pads them back with zeros. The offsets are re-packed in the values' (row-major) order."""
    p = hst.pattern
    rows = hst.shape[0]
    width = stored_value_columns(hst)
    by_row = hst.values_by_row()
    values = by_row.reshape(-1, by_row.shape[-1])[:rows, :width].detach().cpu().numpy().astype(np.float32)
    if scale != 1.0:
        values = values * np.float32(scale)
    index_bytes = index_bytes_for(hst)
    cols = hst.block_cols.to(torch.int64).cpu().numpy()
    block_bytes = cols.astype(f"<u{index_bytes}").reshape(-1).view(np.uint8)
    offsets = hst.unpacked_offsets().permute(0, 2, 1, 3, 4)  # [nbr, B, k, groups, n], like the values
    packed = pack_bits(offsets.reshape(-1), p.offset_bits).cpu().numpy().astype(np.uint8)
    index = np.concatenate([block_bytes, packed])
    return CompactTensors(
        values=numpy_helper.from_array(np.ascontiguousarray(values), prefix),
        index=numpy_helper.from_array(index, f"{prefix}.index"),
        index_bytes=index_bytes,
        metadata_nbytes=int(index.size),
    )


def trims_rows(hst: HybridSparseTensor) -> bool:
    return hst.shape[0] % hst.pattern.block != 0


def compact_node(function: onnx.FunctionProto, name: str, x: str, tensors: CompactTensors, bias: str | None,
                 output: str, cols: int, attributes: dict | None = None) -> onnx.NodeProto:
    inputs = [x, tensors.values.name, tensors.index.name] + ([bias] if bias else [])
    return helper.make_node(function.name, inputs, [output], name=name, domain=DOMAIN, **{COLS_ATTR: int(cols)}, **(attributes or {}))
