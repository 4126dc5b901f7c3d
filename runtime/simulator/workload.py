"""`LayerSpec`: what the simulator needs to know about one layer, independent of torch.

A spec is built from a :class:`crisp.ir.layer_info.LayerInfo` (the compiler's per-layer record,
with its compact :class:`~crisp.sparsity.hybrid_tensor.HybridSparseTensor`), from a GEMM mask, or
synthetically (a GEMM with a pattern or a density, for calibration). It is what a trace
embeds, so that a trace can be lowered again for another architecture.

GEMM convention (Sparseloop's): ``Z[M, N] = A[M, K] x B[K, N]``; A = weights (``M`` output
channels, ``K`` = kh*kw*cin per group), B = activations, ``N`` = output positions x batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from crisp.runtime.simulator.errors import SimulationInputError
from crisp.sparsity.gemm_view import pad_to_blocks, weight_to_gemm
from crisp.sparsity.hybrid_tensor import HybridSparseTensor


def offset_bits(m: int) -> int:
    """Bits of one N:M offset as the compact format stores it (``ceil(log2 m)``)."""
    return math.ceil(math.log2(m)) if m > 1 else 0


def pow2_bits(m: int) -> int:
    """Offset bits rounded up to a power of two, as Sparseloop charges them (3 -> 4)."""
    b = offset_bits(m)
    return 0 if b == 0 else 1 << (b - 1).bit_length()


@dataclass
class LayerSpec:
    name: str
    kind: str  # "conv", "linear" or "gemm"
    M: int  # GEMM rows (output channels, all groups)
    K: int  # reduction length of one group
    N: int  # output positions x batch
    groups: int = 1
    in_channels: int = 0  # conv: input channels (all groups); 0 for a plain GEMM
    in_positions: int = 0  # conv: input positions x batch that the conv reads
    kernel_positions: int = 1  # conv: kh * kw
    pattern: tuple[int, int, int] | None = None  # (n, m, block); block 0 = N:M without blocks; None = dense
    block_cols: np.ndarray | None = None  # int [nbr, k]: kept block columns, ascending per block-row
    row_block_nnz: np.ndarray | None = None  # int [nbr*block, k]: kept weights of each row in each kept block
    row_nnz: np.ndarray | None = None  # int [M]: kept weights of each row (None: dense)
    stored_values: int = 0  # values the compact format stores (explicit zeros included)
    metadata_bytes: int = 0  # bytes of metadata the compact format stores
    index_bytes: int = 2  # bytes per stored block-column index
    paper_metadata_bits: float = 0.0

    def __post_init__(self) -> None:
        for name in ("M", "K", "N", "groups"):
            v = getattr(self, name)
            if int(v) <= 0:
                raise SimulationInputError(f"layer {self.name!r}: {name} must be positive, got {v}")
        if self.M % self.groups:
            raise SimulationInputError(f"layer {self.name!r}: M={self.M} is not a multiple of groups={self.groups}")
        if self.row_nnz is None and self.row_block_nnz is not None:
            self.row_nnz = self.row_block_nnz[: self.M].sum(1)
        if self.row_nnz is not None:
            self.row_nnz = np.asarray(self.row_nnz, dtype=np.int64)
            if self.row_nnz.shape != (self.M,):
                raise SimulationInputError(f"layer {self.name!r}: row_nnz must have {self.M} entries")

    # ------------------------------------------------------------------ geometry
    @property
    def block(self) -> int:
        return self.pattern[2] if self.pattern else 0

    @property
    def has_blocks(self) -> bool:
        return self.block_cols is not None and self.block > 0

    @property
    def num_block_rows(self) -> int:
        return -(-self.M // self.block) if self.block else 0

    @property
    def num_block_cols(self) -> int:
        return -(-self.K // self.block) if self.block else 0

    @property
    def kept_blocks_per_row(self) -> int:
        return int(self.block_cols.shape[1]) if self.has_blocks else self.num_block_cols

    @property
    def kept_weights(self) -> int:
        if self.row_nnz is None:
            return self.M * self.K
        return int(self.row_nnz.sum())

    @property
    def weight_density(self) -> float:
        return self.kept_weights / (self.M * self.K)

    @property
    def macs_dense(self) -> int:
        return self.M * self.K * self.N

    @property
    def macs_kept(self) -> int:
        return self.kept_weights * self.N

    def kept_block_matrix(self) -> np.ndarray:
        """bool [nbr, nbc]: which blocks each block-row keeps."""
        kb = np.zeros((self.num_block_rows, self.num_block_cols), dtype=bool)
        np.put_along_axis(kb, self.block_cols.astype(np.int64), True, axis=1)
        return kb

    # ------------------------------------------------------------------ constructors
    @classmethod
    def dense(cls, name: str, M: int, K: int, N: int, **kw) -> "LayerSpec":
        return cls(name=name, kind=kw.pop("kind", "gemm"), M=M, K=K, N=N, **kw)

    @classmethod
    def synthetic(cls, name: str, M: int, K: int, N: int, *, nm: tuple[int, int] | None = None,
                  density: float | None = None) -> "LayerSpec":
        """A GEMM whose weights keep ``n`` of every ``m`` along K (``nm``), or a share ``density``
        of every row at random positions (unstructured, for DSTC). K should already be padded
        to a multiple of m, as Sparseloop pads it."""
        if nm is not None:
            n, m = nm
            per_row = -(-K // m) * n
            return cls(name=name, kind="gemm", M=M, K=K, N=N, pattern=(n, m, 0),
                       row_nnz=np.full(M, per_row, dtype=np.int64), stored_values=M * per_row,
                       metadata_bytes=math.ceil(M * per_row * offset_bits(m) / 8))
        if density is not None:
            if not 0 < density <= 1:
                raise SimulationInputError(f"layer {name!r}: density must be in (0, 1], got {density}")
            return cls(name=name, kind="gemm", M=M, K=K, N=N,
                       row_nnz=np.full(M, round(density * K), dtype=np.int64))
        return cls.dense(name, M, K, N)

    @classmethod
    def from_hybrid_tensor(cls, name: str, hst: HybridSparseTensor, N: int, *, mask_gemm=None, **kw) -> "LayerSpec":
        """A hybrid-sparse layer whose format numbers are ``hst``'s own: block columns (so kept blocks
        per row), stored values, metadata bytes, index width and the paper's metadata bits. The kept
        weights of each row in each kept block are the stored entries that the bool GEMM mask
        ``mask_gemm`` keeps or, without a mask, the non-zero stored values."""
        p, (M, K) = hst.pattern, hst.shape
        nbr, k = hst.block_cols.shape
        if mask_gemm is not None:
            mask = pad_to_blocks(torch.as_tensor(np.asarray(mask_gemm, dtype=bool)), p.block, False)
            kept = torch.gather(mask.reshape(nbr, p.block, -1), 2, hst.gather_columns())
        else:
            kept = hst.values_by_row() != 0  # [nbr, B, k * values per block row]
        row_block_nnz = kept.reshape(nbr * p.block, k, p.values_per_block_row).sum(-1).cpu().numpy().astype(np.int64)
        return cls(name=name, kind=kw.pop("kind", "gemm"), M=M, K=K, N=N, pattern=(p.n, p.m, p.block),
                   block_cols=hst.block_cols.cpu().numpy().astype(np.int64), row_block_nnz=row_block_nnz,
                   stored_values=int(hst.num_values), metadata_bytes=int(hst.metadata_nbytes),
                   index_bytes=int(hst.block_cols.element_size()), paper_metadata_bits=float(hst.paper_metadata_bits), **kw)

    @classmethod
    def from_mask(cls, name: str, mask_gemm, pattern, N: int, **kw) -> "LayerSpec":
        """A hybrid-sparse layer from its bool GEMM mask ``[M, K]`` (numpy or torch) and a
        :class:`crisp.sparsity.pattern.Pattern`: the spec of the compact tensor the mask gives."""
        mask = torch.as_tensor(np.asarray(mask_gemm.detach().cpu().numpy() if hasattr(mask_gemm, "detach") else mask_gemm, dtype=bool))
        hst = HybridSparseTensor.from_dense(mask.float(), mask, pattern)
        return cls.from_hybrid_tensor(name, hst, N, mask_gemm=mask.numpy(), **kw)

    @classmethod
    def from_layer_info(cls, info) -> "LayerSpec":
        """Spec of a compiler :class:`~crisp.ir.layer_info.LayerInfo`. A layer without ``compact`` is
        dense; a lowered one is the spec of its compact tensor (:meth:`from_hybrid_tensor`), whose kept
        weights are those ``info.mask`` keeps among the stored entries."""
        M, K = (int(v) for v in info.gemm_shape)
        batch = max(1, int(info.batch or 1))
        N = int(info.out_positions) * batch
        geo = _conv_geometry(info, batch)
        if info.compact is None:
            return cls(name=info.name, kind=info.kind, M=M, K=K, N=N, **geo)
        mask = None if info.mask is None else weight_to_gemm(info.mask.to(bool)).cpu().numpy()
        return cls.from_hybrid_tensor(info.name, info.compact, N, mask_gemm=mask, kind=info.kind, **geo)

    # ------------------------------------------------------------------ (de)serialisation
    def header(self) -> dict:
        """JSON-able description without the per-row arrays."""
        return {
            "name": self.name, "kind": self.kind, "M": self.M, "K": self.K, "N": self.N,
            "groups": self.groups, "in_channels": self.in_channels, "in_positions": self.in_positions,
            "kernel_positions": self.kernel_positions,
            "pattern": list(self.pattern) if self.pattern else None,
            "kept_blocks_per_row": self.kept_blocks_per_row if self.pattern and self.block else None,
            "kept_weights": self.kept_weights, "dense_weights": self.M * self.K,
            "stored_values": self.stored_values, "metadata_bytes": self.metadata_bytes,
            "index_bytes": self.index_bytes, "paper_metadata_bits": self.paper_metadata_bits,
            "has_row_nnz": self.row_nnz is not None, "has_blocks": self.has_blocks,
        }

    @classmethod
    def from_header(cls, h: dict, block_cols=None, row_block_nnz=None, row_nnz=None) -> "LayerSpec":
        return cls(
            name=h["name"], kind=h["kind"], M=h["M"], K=h["K"], N=h["N"], groups=h["groups"],
            in_channels=h["in_channels"], in_positions=h["in_positions"], kernel_positions=h["kernel_positions"],
            pattern=tuple(h["pattern"]) if h["pattern"] else None, block_cols=block_cols,
            row_block_nnz=row_block_nnz, row_nnz=row_nnz, stored_values=h["stored_values"],
            metadata_bytes=h["metadata_bytes"], index_bytes=h["index_bytes"],
            paper_metadata_bits=h["paper_metadata_bits"],
        )


def _conv_geometry(info, batch: int) -> dict:
    if info.kind != "conv" or len(info.weight_shape) != 4 or info.conv is None:
        return {}
    cout, cin_g, kh, kw = (int(v) for v in info.weight_shape)
    groups, stride = info.conv.groups, info.conv.strides
    return {
        "groups": groups,
        "in_channels": cin_g * groups,
        "kernel_positions": kh * kw,
        # input positions the conv reads: output positions x stride^2 (exact for "same"-style padding)
        "in_positions": int(info.out_positions) * int(stride[0]) * int(stride[1]) * batch,
    }


def specs_from_layers(layers) -> list[LayerSpec]:
    """Specs of a list of LayerInfo (or LayerSpec) objects, in order."""
    out = []
    for info in layers:
        if isinstance(info, LayerSpec):
            out.append(info)
        elif hasattr(info, "gemm_shape") and hasattr(info, "compact"):
            out.append(LayerSpec.from_layer_info(info))
        else:
            raise SimulationInputError(
                f"expected LayerInfo or LayerSpec objects, got {type(info).__name__}; "
                "pass compiled.layers or a list built with crisp.ir.layer_info.LayerInfo"
            )
    if not out:
        raise SimulationInputError("no layers to simulate: the model has no conv or linear layer")
    return out
