"""`HybridSparseTensor`: the compact storage of a hybrid N:M + block sparse weight.

Layout of a GEMM matrix ``G[rows, K]`` under pattern ``n:m`` in ``B x B`` blocks, with ``nbr``
block-rows, each keeping the same ``k`` blocks (Blocked-ELL):

- ``block_cols[nbr, k]``: column index of each kept block, ascending within a block-row
  (int16, or int32 for more than 32767 block columns);
- ``values[nbr, k, B, (B/m)*n]``: for each kept block and each of its B rows, the n kept
  values of every group of m, group by group;
- ``offsets``: for every value, its position in ``[0, m)`` inside its group, packed into
  ``ceil(log2 m)`` bits each (2 bits for m = 4) as a flat uint8 stream.

Edge tiles are padded with zeros and count as blocks. A block-row that keeps fewer than ``k``
blocks, or a group that keeps fewer than ``n`` entries, is filled with explicit zero values,
so the format holds every mask that has at most ``n`` ones per group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from crisp.sparsity.bitpack import pack_bits, unpack_bits
from crisp.errors import FormatError
from crisp.sparsity.gemm_view import as_blocks, blocks_along, from_blocks, gemm_shape, gemm_to_weight, pad_to_blocks, weight_to_gemm
from crisp.sparsity.pattern import Pattern


def _index_dtype(num_block_cols: int) -> torch.dtype:
    return torch.int16 if num_block_cols <= torch.iinfo(torch.int16).max else torch.int32


def _first_k_by_key(key: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` smallest keys along the last axis, returned in ascending index order."""
    picked = torch.argsort(key, dim=-1, stable=True)[..., :k]
    return torch.sort(picked, dim=-1).values


@dataclass(frozen=True, eq=False)
class HybridSparseTensor:
    """A weight stored as kept values + Blocked-ELL block columns + packed N:M offsets."""

    values: torch.Tensor
    block_cols: torch.Tensor
    offsets: torch.Tensor
    shape: tuple[int, int]
    pattern: Pattern
    weight_shape: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.weight_shape:
            object.__setattr__(self, "weight_shape", tuple(self.shape))
        self.validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dense(cls, weight: torch.Tensor, mask: torch.Tensor, pattern: Pattern) -> "HybridSparseTensor":
        """Compress ``weight * mask``. ``weight`` is a Linear/GEMM ``[rows, K]`` or a Conv2d
        ``[Cout, Cin, kh, kw]`` weight; ``mask`` (bool, same shape) may keep at most ``n`` of
        every ``m`` entries of a group along the reduction axis (in (kh, kw, cin) order)."""
        if not isinstance(weight, torch.Tensor) or not isinstance(mask, torch.Tensor):
            raise FormatError("from_dense needs a weight tensor and a mask tensor")
        if weight.shape != mask.shape:
            raise FormatError(f"mask shape {tuple(mask.shape)} differs from weight shape {tuple(weight.shape)}")
        if weight.dim() not in (2, 4):
            raise FormatError(f"expected a 2-D (Linear) or 4-D (Conv2d) weight, got shape {tuple(weight.shape)}")
        if not weight.is_floating_point():
            raise FormatError(f"weight must be floating point, got {weight.dtype}")
        b, m, n = pattern.block, pattern.m, pattern.n
        g = weight_to_gemm(weight.detach())
        mk = weight_to_gemm(mask.to(torch.bool))
        rows, cols = g.shape
        gb = as_blocks(pad_to_blocks(g, b, 0), b)  # [nbr, nbc, B, B]
        mb = as_blocks(pad_to_blocks(mk, b, False), b)
        nbr, nbc = gb.shape[:2]
        groups = b // m
        per_group = mb.reshape(nbr, nbc, b, groups, m).sum(-1)
        if bool((per_group > n).any()):
            br, bc, r, gi = (int(i) for i in (per_group > n).nonzero()[0])
            raise FormatError(
                f"mask keeps {int(per_group[br, bc, r, gi])} entries in the group of {m} at GEMM row "
                f"{br * b + r}, columns {bc * b + gi * m}..{bc * b + gi * m + m - 1}; "
                f"pattern {n}:{m} allows at most {n}"
            )
        kept = mb.any(dim=(2, 3))  # [nbr, nbc]
        k = int(kept.sum(1).max()) if nbr else 0
        col_ids = torch.arange(nbc).expand(nbr, nbc)
        block_cols = _first_k_by_key((~kept).to(torch.int64) * nbc + col_ids, k)  # [nbr, k]
        sel = block_cols[:, :, None, None].expand(nbr, k, b, b)
        vals_kept = torch.gather(gb, 1, sel) * torch.gather(mb, 1, sel)
        mask_kept = torch.gather(mb, 1, sel).reshape(nbr, k, b, groups, m)
        pos = torch.arange(m).expand_as(mask_kept)
        offs = _first_k_by_key((~mask_kept).to(torch.int64) * m + pos, n)  # [nbr, k, B, groups, n]
        values = torch.gather(vals_kept.reshape(nbr, k, b, groups, m), -1, offs)
        return cls(
            values=values.reshape(nbr, k, b, groups * n).contiguous(),
            block_cols=block_cols.to(_index_dtype(nbc)).contiguous(),
            offsets=pack_bits(offs, pattern.offset_bits),
            shape=(rows, cols),
            pattern=pattern,
            weight_shape=tuple(weight.shape),
        )

    # ------------------------------------------------------------------ geometry
    @property
    def num_block_rows(self) -> int:
        return blocks_along(self.shape[0], self.pattern.block)

    @property
    def num_block_cols(self) -> int:
        return blocks_along(self.shape[1], self.pattern.block)

    @property
    def kept_blocks_per_row(self) -> int:
        return int(self.block_cols.shape[1])

    @property
    def num_values(self) -> int:
        return self.values.numel()

    def validate(self) -> None:
        """Check that the stored arrays are consistent with each other; raise FormatError if not."""
        p = self.pattern
        nbr, nbc = self.num_block_rows, self.num_block_cols
        if self.block_cols.dim() != 2 or self.block_cols.shape[0] != nbr:
            raise FormatError(f"block_cols must have shape [{nbr}, k], got {tuple(self.block_cols.shape)}")
        k = self.block_cols.shape[1]
        want = (nbr, k, p.block, p.values_per_block_row)
        if tuple(self.values.shape) != want:
            raise FormatError(f"values must have shape {list(want)}, got {list(self.values.shape)}")
        if k > nbc:
            raise FormatError(f"{k} kept blocks per row but only {nbc} block columns")
        if self.block_cols.numel() and (int(self.block_cols.min()) < 0 or int(self.block_cols.max()) >= nbc):
            raise FormatError(f"block column index out of range [0, {nbc})")
        if k > 1 and bool((self.block_cols[:, 1:] <= self.block_cols[:, :-1]).any()):
            raise FormatError("block columns must be strictly ascending within each block-row")
        need = math.ceil(self.num_values * p.offset_bits / 8)
        if self.offsets.dtype != torch.uint8 or self.offsets.numel() != need:
            raise FormatError(f"offsets must be {need} packed uint8 bytes, got {self.offsets.numel()} of {self.offsets.dtype}")
        if tuple(gemm_shape(self.weight_shape)) != tuple(self.shape):
            raise FormatError(f"weight shape {self.weight_shape} does not have GEMM shape {self.shape}")

    # ------------------------------------------------------------------ decoding
    def unpacked_offsets(self) -> torch.Tensor:
        """Offsets as int64 ``[nbr, k, B, groups, n]``."""
        p = self.pattern
        nbr, k = self.block_cols.shape
        offs = unpack_bits(self.offsets, p.offset_bits, self.num_values)
        return offs.reshape(nbr, k, p.block, p.groups_per_block, p.n)

    def gather_columns(self) -> torch.Tensor:
        """For every stored value, the GEMM column (in the block-padded K) it multiplies:
        int64 ``[nbr, B, k * (B/m) * n]``, laid out like ``values`` with the row axis first."""
        p = self.pattern
        nbr, k = self.block_cols.shape
        group_base = torch.arange(p.groups_per_block, dtype=torch.int64).view(1, 1, 1, -1, 1) * p.m
        cols = self.block_cols.to(torch.int64).view(nbr, k, 1, 1, 1) * p.block + group_base + self.unpacked_offsets()
        per_block = p.groups_per_block * p.n  # explicit, so that k = 0 (nothing kept) works too
        return cols.reshape(nbr, k, p.block, per_block).permute(0, 2, 1, 3).reshape(nbr, p.block, k * per_block)

    def values_by_row(self) -> torch.Tensor:
        """``values`` as ``[nbr, B, k * (B/m) * n]``, matching :meth:`gather_columns`."""
        nbr, k, b, v = self.values.shape
        return self.values.permute(0, 2, 1, 3).reshape(nbr, b, k * v)

    def to_dense_gemm(self) -> torch.Tensor:
        """The masked weight as the ``[rows, K]`` GEMM matrix."""
        p = self.pattern
        nbr, k = self.block_cols.shape
        b, g = p.block, p.groups_per_block
        blocks_kept = torch.zeros(nbr, k, b, g, p.m, dtype=self.values.dtype)
        blocks_kept.scatter_(-1, self.unpacked_offsets(), self.values.reshape(nbr, k, b, g, p.n))
        blocks = torch.zeros(nbr, self.num_block_cols, b, b, dtype=self.values.dtype)
        idx = self.block_cols.to(torch.int64)[:, :, None, None].expand(nbr, k, b, b)
        blocks.scatter_(1, idx, blocks_kept.reshape(nbr, k, b, b))
        rows, cols = self.shape
        return from_blocks(blocks)[:rows, :cols]

    def to_dense(self) -> torch.Tensor:
        """The masked weight in its original shape (Linear or Conv2d)."""
        return gemm_to_weight(self.to_dense_gemm(), self.weight_shape)

    # ------------------------------------------------------------------ transforms
    def scale_rows(self, scale: torch.Tensor) -> "HybridSparseTensor":
        """A copy whose GEMM row ``r`` is multiplied by ``scale[r]`` (e.g. folded BatchNorm)."""
        rows = self.shape[0]
        if scale.shape != (rows,):
            raise FormatError(f"row scale must have shape ({rows},), got {tuple(scale.shape)}")
        nbr, _, b, _ = self.values.shape
        padded = torch.ones(nbr * b, dtype=self.values.dtype)
        padded[:rows] = scale.to(self.values.dtype)
        values = self.values * padded.view(nbr, 1, b, 1)
        return HybridSparseTensor(values, self.block_cols, self.offsets, self.shape, self.pattern, self.weight_shape)

    # ------------------------------------------------------------------ sizes
    @property
    def values_nbytes(self) -> int:
        return self.values.numel() * self.values.element_size()

    @property
    def metadata_nbytes(self) -> int:
        return self.block_cols.numel() * self.block_cols.element_size() + self.offsets.numel()

    @property
    def nbytes(self) -> int:
        """Bytes the compact form really stores (values + block columns + packed offsets)."""
        return self.values_nbytes + self.metadata_nbytes

    @property
    def metadata_bits(self) -> int:
        """Metadata bits as stored (block column indices at their dtype + packed offsets)."""
        return 8 * self.metadata_nbytes

    @property
    def paper_metadata_bits(self) -> float:
        """The paper's formula (Sec. III-A) with S = rows and K' = kept columns per row:
        ``S*K'*floor(log2(K'/B))/(B*B) + S*K'*(N/M)*floor(log2 M)``."""
        p = self.pattern
        s, kp = self.shape[0], self.kept_blocks_per_row * p.block
        if kp == 0:
            return 0.0
        block_bits = s * kp * math.floor(math.log2(kp / p.block)) / (p.block * p.block)
        nm_bits = s * kp * (p.n / p.m) * math.floor(math.log2(p.m))
        return block_bits + nm_bits

    @property
    def dense_nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * self.values.element_size()

    def __repr__(self) -> str:
        return (
            f"HybridSparseTensor(shape={self.shape}, pattern={self.pattern}, kept_blocks_per_row="
            f"{self.kept_blocks_per_row}/{self.num_block_cols}, nbytes={self.nbytes})"
        )
