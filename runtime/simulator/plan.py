"""How an architecture executes a layer's sparsity pattern (and the fallback when it cannot).

A native pattern n':m' can hold a layer's n:m when m' divides m and n' >= min(n, m'): every
sub-group of m' inside a group of m then keeps at most n' weights, so the layer is stored as
n':m' with explicit zeros. The architecture picks the sparsest such native pattern; if none
fits, the layer runs dense (within kept blocks when the architecture skips blocks).
"""

from __future__ import annotations

from dataclasses import dataclass

from crisp.runtime.simulator.arch import Arch
from crisp.runtime.simulator.workload import LayerSpec


@dataclass(frozen=True)
class ExecPlan:
    nm: tuple[int, int] | None  # pattern the hardware runs, None = dense (inside kept blocks)
    skip: bool  # pruned blocks and their activations are skipped
    native: bool  # the layer's own pattern runs as stored (no explicit zeros added)
    description: str
    fallback: str | None  # why the layer runs denser than its pattern (None: it does not)


def _holds(native: tuple[int, int], n: int, m: int) -> bool:
    nn, mm = native
    return m % mm == 0 and nn >= min(n, mm)


def plan_layer(spec: LayerSpec, arch: Arch) -> ExecPlan:
    """Decide how ``arch`` runs ``spec`` (simd dataflow; outer-product takes any sparsity)."""
    if arch.dataflow == "outer-product":
        d = spec.weight_density
        what = "dense weights" if spec.row_nnz is None else f"weights at density {d:.3f}"
        return ExecPlan(None, False, True, f"outer product, {what}, activations at {arch.activation_density:g}", None)
    if spec.pattern is None:
        return ExecPlan(None, False, True, "dense layer", None)
    n, m, block = spec.pattern
    skip = arch.block_skipping and spec.has_blocks and spec.groups == 1
    blocks = f" in {block}x{block} blocks ({spec.kept_blocks_per_row}/{spec.num_block_cols} kept per row)" if spec.has_blocks else ""
    ignored = "" if skip or not spec.has_blocks else f"; {arch.name} cannot skip blocks, so all blocks run"
    if not arch.patterns and not arch.block_skipping:
        return ExecPlan(None, False, False, f"dense ({arch.name} exploits no weight sparsity)", None)
    if n == m:
        desc = ("dense inside kept blocks" if skip else "dense") + blocks + ignored
        return ExecPlan(None, skip, True, desc, None)
    natives = [p for p in arch.native_patterns if _holds(p, n, m)]
    if (n, m) in natives:
        return ExecPlan((n, m), skip, True, f"{n}:{m}{blocks}{ignored}", None)
    supported = "/".join(arch.patterns) or "no N:M pattern"
    if natives:
        nn, mm = min(natives, key=lambda p: (p[0] / p[1], p[1]))
        why = (f"{arch.name} runs {supported}, not {n}:{m}: the layer is stored as {nn}:{mm} with explicit "
               f"zeros, so it computes {nn}/{mm} of its weights instead of {n}/{m}")
        return ExecPlan((nn, mm), skip, False, f"{n}:{m} run as {nn}:{mm}{blocks}{ignored}", why)
    why = (f"{arch.name} runs {supported}, and no pattern it runs can hold {n}:{m}: the layer runs dense"
           + (" inside its kept blocks" if skip else ""))
    return ExecPlan(None, skip, False, f"{n}:{m} run dense{blocks}{ignored}", why)
