"""Class-aware (Taylor, CRISP Eq. 1) saliency of an ONNX model: the graph imported into torch.fx
and scored by crisp's one Taylor saliency, :func:`crisp.pruning.saliency.taylor_saliency`."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import onnx
import torch

from crisp.errors import ModelError
from crisp.onnx.to_fx import onnx_to_fx
from crisp.onnx.weights import OnnxLayer
from crisp.pruning.class_data import CalibrationBatches, DataError, num_outputs
from crisp.pruning.saliency import taylor_saliency
from crisp.sparsity.gemm_view import weight_to_gemm


def _first_output_only(gm: torch.fx.GraphModule) -> None:
    """Make a model with several outputs return its first one (the logits)."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    if isinstance(out.args[0], (tuple, list)):
        out.args = (out.args[0][0],)
        gm.graph.eliminate_dead_code()
        gm.recompile()


def _predictions(gm: torch.fx.GraphModule) -> Callable[[torch.Tensor], torch.Tensor]:
    """Labels for unlabeled calibration inputs: the model's own predicted classes."""

    def label(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = gm(x)
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise DataError(f"class-aware saliency needs [batch, classes] logits as the model's first output, got "
                            f"{shape}; use saliency='magnitude' for this model")
        return out.argmax(1)

    return label


def _check_lengths(calibration: Any) -> None:
    """Refuse (inputs, labels) of different lengths with a crisp error, before any work."""
    if isinstance(calibration, tuple) and len(calibration) == 2 and all(hasattr(c, "__len__") for c in calibration):
        n_inputs, n_labels = len(calibration[0]), len(calibration[1])
        if n_inputs != n_labels:
            raise DataError(f"the calibration data has {n_inputs} inputs but {n_labels} labels; give one label per "
                            "input (or no labels: crisp then labels each input with the model's own prediction)")


def onnx_taylor_saliency(model: onnx.ModelProto, layers: list[OnnxLayer], calibration: Any,
                         classes: Iterable[int] | None) -> dict[str, torch.Tensor]:
    """``{layer name: saliency in the GEMM view}`` of ``layers``, on the calibration samples of
    ``classes`` (every class when None). ``calibration`` takes the forms of
    :class:`crisp.pruning.class_data.CalibrationBatches`; labels default to the model's own predictions."""
    _check_lengths(calibration)
    gm = onnx_to_fx(model, trainable={layer.weight_name for layer in layers})
    if sum(1 for n in gm.graph.nodes if n.op == "placeholder") != 1:
        raise ModelError("class-aware saliency on ONNX supports models with one input; use saliency='magnitude'")
    _first_output_only(gm)
    batches = CalibrationBatches(calibration, label=_predictions(gm), dtype=torch.float32)
    if classes is None:
        first = next(iter(batches), None)
        if first is None:
            raise DataError("the calibration data is empty: it yields no batches")
        classes = range(num_outputs(gm, first[0]))
    names = [gm.onnx_attrs[layer.weight_name] for layer in layers]
    scores = taylor_saliency(gm, batches, list(classes), names=names)
    return {layer.name: weight_to_gemm(layer.weight_from_onnx(scores[name].numpy())) for layer, name in zip(layers, names)}
