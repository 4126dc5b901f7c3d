"""crisp.runtime: the ops the lowered graph calls and their kernels.

Importing this package registers the ``crisp::hybrid_sparse_gemm`` custom op.
"""

from crisp.runtime.ops import hybrid_sparse_gemm
from crisp.runtime.reference_kernel import reference_hybrid_sparse_gemm

__all__ = ["hybrid_sparse_gemm", "reference_hybrid_sparse_gemm"]
