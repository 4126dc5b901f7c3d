"""crisp.ir: the IR — a traced ``torch.fx.GraphModule`` whose ``node.meta`` holds one layer record per conv/linear."""

from crisp.ir.layer_info import META_KEY, LayerInfo
from crisp.ir.tracing import analyses, copy_graph_module, layer_nodes, layers_of, mark_analysis, trace

__all__ = ["META_KEY", "LayerInfo", "analyses", "copy_graph_module", "layer_nodes", "layers_of", "mark_analysis", "trace"]
