"""crisp.sparsity: the hybrid N:M + block pattern, its compact tensor format and the mask selection (pure tensor code, no IR)."""

from crisp.sparsity.hybrid_tensor import HybridSparseTensor
from crisp.sparsity.pattern import Pattern

__all__ = ["HybridSparseTensor", "Pattern"]
