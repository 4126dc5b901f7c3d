"""crisp.ir: the IR — a traced ``torch.fx.GraphModule`` whose ``node.meta`` holds one layer record per conv/linear,
the conv geometry and the one rule that decides which layers are pruned."""

from crisp.ir.conv_geometry import ConvGeometry, conv_out_size, same_pads
from crisp.ir.layer_info import META_KEY, LayerInfo
from crisp.ir.prunable import decide, describe_module, dense_reason, excluded_by
from crisp.ir.tracing import analyses, copy_graph_module, layer_nodes, layers_of, mark_analysis, trace

__all__ = [
    "META_KEY", "ConvGeometry", "LayerInfo", "analyses", "conv_out_size", "copy_graph_module", "decide",
    "dense_reason", "describe_module", "excluded_by", "layer_nodes", "layers_of", "mark_analysis", "same_pads", "trace",
]
