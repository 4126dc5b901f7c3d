"""The report of ``crisp.optimize_onnx``: one row per candidate layer (pruned or why not, blocks,
density, bytes, MACs) and the model's totals, as a table or JSON."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from crisp.fileio import atomic_write_text
from crisp.tables import table


@dataclass
class OnnxLayerReport:
    name: str
    op_type: str
    kind: str
    weight_name: str
    weight_shape: list[int]
    gemm_shape: list[int]
    pruned: bool
    reason: str
    kept_blocks_per_row: int | None = None
    blocks_per_row: int | None = None
    kept_weights: int | None = None
    total_weights: int | None = None
    dense_bytes: int = 0
    stored_bytes: int = 0
    metadata_bytes: int = 0
    out_positions: int | None = None
    execution: str | None = None  # compact format: "blocks" or "dense" (how the layer's function computes)
    execution_reason: str | None = None  # why: the cost model's numbers or the measured times
    measured_blocks_ms: dict[int, float] | None = None  # body="measure": CPU ms of the kept blocks, per batch size
    measured_dense_ms: dict[int, float] | None = None  # body="measure": CPU ms of the standard op on the masked weight
    measured_context: float | None = None  # body="measure": the blocks' cost to the model around them, x dense time

    @property
    def density(self) -> float | None:
        return None if not self.total_weights else self.kept_weights / self.total_weights

    @property
    def macs_dense(self) -> int | None:
        if self.out_positions is None or not self.gemm_shape:
            return None
        return self.gemm_shape[0] * self.gemm_shape[1] * self.out_positions

    @property
    def macs_kept(self) -> int | None:
        if self.macs_dense is None:
            return None
        return self.kept_weights * self.out_positions if self.pruned else self.macs_dense


@dataclass
class OnnxOptimizeReport:
    source: str
    format: str
    pattern: str
    block: int
    saliency: str
    target_sparsity: float
    achieved_sparsity: float
    opset_in: int
    opset_out: int
    layers: list[OnnxLayerReport] = field(default_factory=list)
    dense_weight_bytes: int = 0  # bytes of the pruned layers' weights before
    stored_weight_bytes: int = 0  # bytes the pruned layers' weights take in the output
    metadata_bytes: int = 0  # block columns + packed offsets
    untouched_bytes: int = 0  # every other initializer in the output
    source_bytes: int = 0  # serialized size of the input model (weights included)
    rest_bytes: int = 0  # size of the input (constant weights folded) less the pruned weights: what crisp leaves alone
    output_bytes: int = 0  # serialized size of the output model
    seconds: float = 0.0

    @property
    def pruned_layers(self) -> list[OnnxLayerReport]:
        return [layer for layer in self.layers if layer.pruned]

    def size_bound(self, slack: float = 0.02) -> float:
        """The most bytes the output may take: (1 - sparsity) of the pruned layers' dense weight
        bytes + metadata + everything of the input that crisp leaves untouched (other tensors,
        nodes, Constant nodes, names), plus ``slack``."""
        return ((1.0 - self.achieved_sparsity) * self.dense_weight_bytes + self.metadata_bytes + self.rest_bytes) * (1 + slack)

    def tensor_size_bound(self, slack: float = 0.02) -> float:
        """The stricter bound that counts only the untouched initializers (not the graph): it
        holds for big models, but a small model whose nodes alone exceed ``slack`` cannot meet it."""
        return ((1.0 - self.achieved_sparsity) * self.dense_weight_bytes + self.metadata_bytes + self.untouched_bytes) * (1 + slack)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for layer, out in zip(self.layers, d["layers"]):
            out["density"] = layer.density
            out["macs_dense"] = layer.macs_dense
            out["macs_kept"] = layer.macs_kept
        d["size_bound_bytes"] = self.size_bound()
        d["tensor_size_bound_bytes"] = self.tensor_size_bound()
        return d

    def to_json(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))

    def format_table(self) -> str:
        lines = [
            f"crisp optimize: {self.source} -> format={self.format}, pattern {self.pattern} in {self.block}x{self.block} blocks, "
            f"saliency={self.saliency}",
        ]
        rows = [[layer.name[-44:], layer.op_type, "x".join(map(str, layer.gemm_shape)) if layer.gemm_shape else "-",
                 f"{layer.kept_blocks_per_row}/{layer.blocks_per_row}" if layer.pruned else "-",
                 f"{layer.density:.3f}" if layer.density is not None else "-", layer.execution or "-",
                 layer.reason + (f"; runs as {layer.execution}: {layer.execution_reason}" if layer.execution_reason else "")]
                for layer in self.layers]
        lines.append(table(rows, ["layer", "op", "gemm (rows x K)", "blocks/row", "density", "runs as", "reason"],
                           align="llrrrrl"))
        pruned = self.pruned_layers
        lines.append(
            f"{len(pruned)}/{len(self.layers)} layers pruned; sparsity target {self.target_sparsity:.3f}, achieved "
            f"{self.achieved_sparsity:.3f}; pruned weights {self.dense_weight_bytes / 1e6:.2f} MB -> "
            f"{self.stored_weight_bytes / 1e6:.2f} MB (metadata {self.metadata_bytes / 1e6:.3f} MB); other tensors "
            f"{self.untouched_bytes / 1e6:.2f} MB; opset {self.opset_in} -> {self.opset_out}; {self.seconds:.1f} s"
        )
        if any(layer.execution == "dense" for layer in pruned):
            lines.append("runs as dense: gathering the kept blocks would be slower than the standard op (by the cost model of "
                         "crisp.onnx.compact.cost, or measured with body='measure'; the numbers are in the layer's reason); its "
                         "weight is still stored compactly and decoded once at load")
        return "\n".join(lines)
