"""`PackedHybridWeight`: the layout the fast CPU kernels read, prepared once at compile time.

The compact :class:`crisp.sparsity.hybrid_tensor.HybridSparseTensor` stores kept blocks plus bit-packed N:M
offsets, which is small but must be decoded before use. The kernels instead want, for every
output channel (GEMM row) ``r``, its kept values ``vals[row_ptr[r]:row_ptr[r+1]]`` next to the
GEMM column each one multiplies (``cols``, int32, in (kh, kw, cin) order, ascending): the
offsets decoded into gather indices once, so a call does no unpacking. Pruned blocks and
pruned N:M entries are absent; so are the zero entries the compact format pads edge tiles and
short groups with. The packed form holds nothing dense: 8 bytes per kept weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crisp.errors import FormatError
from crisp.sparsity.hybrid_tensor import HybridSparseTensor
from crisp.sparsity.gemm_view import gemm_to_weight


@dataclass(frozen=True, eq=False)
class PackedHybridWeight:
    """A hybrid-sparse GEMM weight ``G[rows, K]`` as per-row (value, column) lists."""

    row_ptr: torch.Tensor  # int64 [rows + 1]
    cols: torch.Tensor  # int32 [nnz], GEMM column of each kept value
    vals: torch.Tensor  # float32 [nnz]
    shape: tuple[int, int]  # (rows, K)
    weight_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_compact(cls, weight: HybridSparseTensor) -> "PackedHybridWeight":
        """Decode the compact tensor's block columns and N:M offsets into per-row gather lists."""
        rows, k = weight.shape
        if weight.kept_blocks_per_row == 0:  # nothing kept at all
            return cls(torch.zeros(rows + 1, dtype=torch.int64), torch.zeros(0, dtype=torch.int32),
                       torch.zeros(0, dtype=torch.float32), (rows, k), tuple(weight.weight_shape))
        cols = weight.gather_columns()  # [nbr, B, V] in the block-padded K
        vals = weight.values_by_row().to(torch.float32)
        nbr, b, v = cols.shape
        cols = cols.reshape(nbr * b, v)[:rows]
        vals = vals.reshape(nbr * b, v)[:rows]
        keep = (cols < k) & (vals != 0)  # drop edge-tile padding and explicit zeros
        counts = keep.sum(1)
        row_ptr = torch.zeros(rows + 1, dtype=torch.int64)
        row_ptr[1:] = torch.cumsum(counts, 0)
        # boolean indexing walks rows in order and keeps each row's ascending column order
        return cls(
            row_ptr=row_ptr,
            cols=cols[keep].to(torch.int32).contiguous(),
            vals=vals[keep].contiguous(),
            shape=(rows, k),
            weight_shape=tuple(weight.weight_shape),
        )

    def validate(self) -> None:
        """Check every invariant the kernels rely on (they index without bounds checks)."""
        rows, k = self.shape
        rp, cols, vals = self.row_ptr, self.cols, self.vals
        if rp.dtype != torch.int64 or rp.dim() != 1 or rp.numel() != rows + 1:
            raise FormatError(f"row_ptr must be int64 with {rows + 1} entries, got {rp.dtype} {tuple(rp.shape)}")
        if cols.dtype != torch.int32 or cols.dim() != 1:
            raise FormatError(f"cols must be a 1-D int32 tensor, got {cols.dtype} {tuple(cols.shape)}")
        if vals.dtype != torch.float32 or vals.shape != cols.shape:
            raise FormatError(f"vals must be float32 shaped like cols {tuple(cols.shape)}, got {vals.dtype} {tuple(vals.shape)}")
        if not (rp.is_contiguous() and cols.is_contiguous() and vals.is_contiguous()):
            raise FormatError("packed weight tensors must be contiguous")
        if int(rp[0]) != 0 or int(rp[-1]) != cols.numel() or bool((rp[1:] < rp[:-1]).any()):
            raise FormatError("row_ptr must start at 0, never decrease and end at the number of values")
        if cols.numel() and (int(cols.min()) < 0 or int(cols.max()) >= k):
            raise FormatError(f"a packed column index lies outside [0, {k})")

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def nnz(self) -> int:
        return self.cols.numel()

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.row_ptr, self.cols, self.vals))

    def tensors(self) -> dict[str, torch.Tensor]:
        """The arrays to register as buffers of a module that calls the kernels."""
        return {"row_ptr": self.row_ptr, "cols": self.cols, "vals": self.vals}

    def to_dense_gemm(self) -> torch.Tensor:
        """The weight as a dense ``[rows, K]`` matrix (for tests and measurements only)."""
        rows, k = self.shape
        dense = torch.zeros(rows, k, dtype=self.vals.dtype)
        row_of = torch.repeat_interleave(torch.arange(rows), self.row_ptr[1:] - self.row_ptr[:-1])
        dense[row_of, self.cols.to(torch.int64)] = self.vals
        return dense

    def to_dense(self) -> torch.Tensor:
        return gemm_to_weight(self.to_dense_gemm(), self.weight_shape)


@dataclass(frozen=True, eq=False)
class ChannelPackedWeight:
    """A hybrid-sparse conv/linear weight packed for the channel-vector kernel (NHWC activations).

    For every 16 output channels (a row vector ``rv``) and every N:M group ``g`` of its block-row's
    kept blocks: ``vals[rv, g, j, lane]``, the ``j``-th kept value of output channel
    ``16*rv + lane`` in that group, and ``idx[...]`` (uint8), its position inside the group. Per
    block-row and group, ``gtap`` (kernel tap ``kh*kw_size + kw``) and ``gcin`` (first input
    channel) locate the group's m inputs, which are consecutive channels of one pixel. Groups of
    the zero padding past K point at tap 0, channel 0 and hold zero values.
    """

    vals: torch.Tensor  # float32 [row vectors, groups, n, 16]
    idx: torch.Tensor  # uint8 [row vectors, groups, n, 16]
    gtap: torch.Tensor  # int32 [block rows, groups]
    gcin: torch.Tensor  # int32 [block rows, groups]
    rows: int
    n: int
    m: int
    in_channels: int
    weight_shape: tuple[int, ...]

    @staticmethod
    def supports(weight: HybridSparseTensor, in_channels: int, max_m: int = 16) -> bool:
        """The layout needs 16 | block, m <= ``max_m`` (the kernel's vector lanes: 16 on AVX-512, 8
        on AVX2 and the portable path) and groups that never straddle two taps (m | C)."""
        p = weight.pattern
        return p.block % 16 == 0 and p.m <= max_m and in_channels % p.m == 0 and weight.shape[1] % in_channels == 0

    @classmethod
    def from_compact(cls, weight: HybridSparseTensor, in_channels: int) -> "ChannelPackedWeight":
        """``in_channels``: input channels per tap (Cin for a conv, K for a linear layer)."""
        if not cls.supports(weight, in_channels):
            raise FormatError(
                f"pattern {weight.pattern} with {in_channels} input channels does not fit the channel-vector layout"
            )
        p = weight.pattern
        nbr, k = weight.block_cols.shape
        b, groups, n = p.block, p.groups_per_block, p.n
        rv_per_br = b // 16
        values = weight.values.to(torch.float32).reshape(nbr, k, rv_per_br, 16, groups, n)
        offsets = weight.unpacked_offsets().reshape(nbr, k, rv_per_br, 16, groups, n)
        # -> [nbr, rv_per_br, k, groups, n, 16]
        vals = values.permute(0, 2, 1, 4, 5, 3).reshape(nbr * rv_per_br, k * groups, n, 16)
        idx = offsets.permute(0, 2, 1, 4, 5, 3).reshape(nbr * rv_per_br, k * groups, n, 16).to(torch.uint8)
        start = weight.block_cols.to(torch.int64)[:, :, None] * b + torch.arange(groups) * p.m  # [nbr, k, groups]
        start = start.reshape(nbr, k * groups)
        real = start < weight.shape[1]
        gtap = torch.where(real, start // in_channels, 0).to(torch.int32)
        gcin = torch.where(real, start % in_channels, 0).to(torch.int32)
        return cls(vals.contiguous(), idx.contiguous(), gtap.contiguous(), gcin.contiguous(), weight.shape[0], n, p.m,
                   in_channels, tuple(weight.weight_shape))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.vals, self.idx, self.gtap, self.gcin))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"vals": self.vals, "idx": self.idx, "gtap": self.gtap, "gcin": self.gcin}


@dataclass(frozen=True, eq=False)
class DenseWeight:
    """A layer's weight kept whole for torch's own dense conv / linear (oneDNN), the path a layer
    takes where no sparse kernel beats it: a conv weight ``[O, C, kh, kw]`` channels-last, like
    the activations around it; a linear weight ``[O, K]``."""

    weight: torch.Tensor
    weight_shape: tuple[int, ...]

    @classmethod
    def from_dense(cls, weight: torch.Tensor) -> "DenseWeight":
        w = weight.detach().to(torch.float32).clone()
        if w.dim() == 4:
            w = w.contiguous(memory_format=torch.channels_last)
        return cls(w, tuple(w.shape))

    @property
    def nbytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight}


@dataclass(frozen=True, eq=False)
class GemmPackedWeight:
    """A dense conv weight (groups=1) packed for crisp's GEMM kernel on channels-last activations:
    ``panels[o // 16, k, o % 16]`` = ``weight[o, k]`` with ``k`` in (kh, kw, cin) order, 16 output
    channels per panel, zero past the last one. Every weight is kept: this is how a layer left
    dense (or whose pruned weight runs fastest dense) runs on crisp's own threads, with its bias,
    residual and activation fused."""

    panels: torch.Tensor  # float32 [ceil(rows / 16), K, 16]
    rows: int
    weight_shape: tuple[int, ...]

    @classmethod
    def from_dense(cls, weight: torch.Tensor) -> "GemmPackedWeight":
        if weight.dim() != 4:
            raise FormatError(f"the GEMM kernel packs conv weights [O, C, kh, kw], got shape {list(weight.shape)}")
        w = weight.detach().to(torch.float32).permute(0, 2, 3, 1).reshape(weight.shape[0], -1)  # (kh, kw, cin) order
        rows, k = w.shape
        padded = torch.zeros((rows + 15) // 16 * 16, k)
        padded[:rows] = w
        panels = padded.reshape(-1, 16, k).transpose(1, 2).contiguous()
        return cls(panels, rows, tuple(weight.shape))

    @property
    def nbytes(self) -> int:
        return self.panels.numel() * self.panels.element_size()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"panels": self.panels}
