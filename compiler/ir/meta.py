"""The keys under which crisp's passes leave their results in ``node.meta`` and ``graph_module.meta``.

The layer record's own key (``META_KEY``) lives with :class:`crisp.ir.layer_info.LayerInfo`.
"""

from __future__ import annotations

LOWERED_KEY = "crisp_lowered_from"  # node.meta: the name of the layer a lowered node computes part of
CPU_KEY = "crisp_cpu"  # graph_module.meta: what the cpu passes fused, folded and lowered (artifacts of the cpu target)
