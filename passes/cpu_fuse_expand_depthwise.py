"""FuseExpandDepthwise: a 1x1 conv on crisp's dense GEMM kernel whose only user is a depthwise conv
on crisp's depthwise kernel (an inverted residual block's expansion and depthwise conv,
MobileNetV2's) becomes one call of ``crisp::expand_depthwise_nhwc``, which never writes the
expanded tensor, where that measures faster than the two calls (:class:`~crisp.passes.cpu_kernel_choice.Tuner`,
cached like every kernel choice; without measurement the pair is fused).

Finds its pairs after :class:`LowerDepthwiseConvs` and :class:`LowerDenseConvs` (and
:class:`FuseSparseLayersForCpu`, whose layers may run on the GEMM kernel). Recorded under
``meta[CPU_KEY]["expand_depthwise"]`` (e.g. ``"features.2.conv.0.0+features.2.conv.1.0"``) and,
with the measured times, under ``meta[CPU_KEY]["kernel_choices"]`` of the depthwise layer (kernel
``expand_depthwise``, or ``depthwise`` where the two calls stay).
"""

from __future__ import annotations

import torch
from torch import fx

from crisp.runtime import fast_kernel

from crisp.passes.base import CrispPass
from crisp.passes.cpu_common import record, require_fast_kernels, tidy
from crisp.passes.cpu_kernel_choice import Context, Tuner, layer_key

FUSED, SEPARATE = "expand_depthwise", "depthwise"  # the kernel names: the fused call, or the two calls


def _layer(node: fx.Node) -> str:
    """The layer a kernel call belongs to: the module path of its first weight (a get_attr node)."""
    return node.args[1].target.rsplit(".", 1)[0]


def _tensor(gm: fx.GraphModule, arg):
    return None if arg is None else gm.get_buffer(arg.target)


def fusable_pairs(gm: fx.GraphModule) -> list[tuple[fx.Node, fx.Node]]:
    """(expansion, depthwise) call pairs: a 1x1, stride 1, unpadded GEMM-kernel conv with no
    residual whose only user is a depthwise-kernel call that reads it, on a 4-d input of known shape."""
    gemm, depthwise = fast_kernel.op("dense_conv2d_nhwc"), fast_kernel.op("depthwise_conv2d_nhwc")
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target is not depthwise:
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_function" and src.target is gemm and len(src.users) == 1):
            continue
        x, _, _, _, residual, kernel, stride, padding, dilation, _, _ = src.args
        meta = x.meta.get("tensor_meta") if isinstance(x, fx.Node) else None
        plain = list(kernel) == [1, 1] and list(stride) == [1, 1] and list(padding) == [0, 0] and list(dilation) == [1, 1]
        if plain and residual is None and meta is not None and len(meta.shape) == 4 and all(
                a is None or a.op == "get_attr" for a in (src.args[1], src.args[3], node.args[1], node.args[2])):
            pairs.append((src, node))
    return pairs


class FuseExpandDepthwise(CrispPass):
    needs = ("shapes",)
    adds = ("cpu_expand_depthwise",)

    def call(self, graph_module: fx.GraphModule) -> bool:
        require_fast_kernels(self.name)
        gm, fused, choices = graph_module, [], {}
        tuner, isa = Tuner(), fast_kernel.cpu_capability()
        op = fast_kernel.op("expand_depthwise_nhwc")
        for expand, depthwise in fusable_pairs(gm):
            x, panels, rows, ebias, _, _, _, _, _, elo, ehi = expand.args
            _, weight, bias, kernel, stride, padding, dilation, lo, hi = depthwise.args
            args = (x, panels, rows, ebias, elo, ehi, weight, bias, kernel, stride, padding, dilation, lo, hi)
            x_shape = tuple(x.meta["tensor_meta"].shape)
            tensors = [_tensor(gm, a) for a in (panels, ebias, weight, bias)]
            geometry = (list(kernel), list(stride), list(padding), list(dilation), [str(elo), str(ehi)])
            key = layer_key((rows, x_shape[1], 1, 1), FUSED, 1.0, x_shape, geometry, FUSED, Context(clamp=(lo, hi)))

            def calls(tensors=tensors, x_shape=x_shape, expand=expand, depthwise=depthwise, args=args):
                sample = torch.randn(x_shape).contiguous(memory_format=torch.channels_last)
                p, eb, w, b = tensors
                fused_args = (sample, p, args[2], eb, *args[4:6], w, b, *args[8:])
                pair_args = (sample, p, args[2], eb, *expand.args[4:])

                def separate():
                    return depthwise.target(expand.target(*pair_args), w, b, *depthwise.args[3:])

                return {FUSED: lambda: op(*fused_args), SEPARATE: separate}

            kernel_kept, reason, times = tuner.verdict(key, (FUSED, SEPARATE), calls, FUSED)
            name = f"{_layer(expand)}+{_layer(depthwise)}"
            choices[_layer(depthwise)] = {"kernel": kernel_kept, "isa": isa, "reason": f"{name}: {reason}",
                                          "times_ms": times}
            if kernel_kept != FUSED:
                continue
            with gm.graph.inserting_before(depthwise):
                node = gm.graph.call_function(op, args)
            node.meta.update(depthwise.meta)
            depthwise.replace_all_uses_with(node)
            gm.graph.erase_node(depthwise)
            gm.graph.erase_node(expand)
            fused.append(name)
        record(gm, "expand_depthwise", fused)
        record(gm, "kernel_choices", choices)
        tidy(gm)
        return bool(fused)
