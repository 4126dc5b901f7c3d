"""Per-layer records and the report of a compiled model as JSON plus named tensors, and back.

Used by :mod:`crisp.serialize`: everything but tensors becomes plain JSON; masks and compact
weights go to a flat ``{name: tensor}`` dict that is saved with ``torch.save`` and read back
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from crisp.errors import FormatError
from crisp.ir.conv_geometry import ConvGeometry
from crisp.ir.layer_info import LayerInfo
from crisp.report import LayerRow, Report
from crisp.sparsity.hybrid_tensor import HybridSparseTensor
from crisp.sparsity.pattern import Pattern

_TENSOR_FIELDS = ("saliency", "mask")


def layers_to_json(layers: list[LayerInfo]) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """JSON records of ``layers`` and the tensors they reference (by key ``"<i>.<field>"``)."""
    records, tensors = [], {}
    for i, info in enumerate(layers):
        rec: dict[str, Any] = {}
        for f in dataclasses.fields(LayerInfo):
            value = getattr(info, f.name)
            if f.name in _TENSOR_FIELDS:
                if value is not None:
                    tensors[f"{i}.{f.name}"] = value.detach().cpu().contiguous()
                rec[f.name] = value is not None
            elif f.name == "conv":
                rec["conv"] = None if value is None else dataclasses.asdict(value)
            elif f.name == "compact":
                rec["compact"] = None if value is None else _compact_to_json(value, f"{i}.compact", tensors)
            else:
                rec[f.name] = list(value) if isinstance(value, tuple) else value
        records.append(rec)
    return records, tensors


def _compact_to_json(t: HybridSparseTensor, key: str, tensors: dict) -> dict:
    for part in ("values", "block_cols", "offsets"):
        tensors[f"{key}.{part}"] = getattr(t, part).detach().cpu().contiguous()
    p = t.pattern
    return {"shape": list(t.shape), "pattern": [p.n, p.m, p.block], "weight_shape": list(t.weight_shape)}


def layers_from_json(records: list, tensors: dict[str, torch.Tensor], where: str) -> list[LayerInfo]:
    """Rebuild the LayerInfo list written by :func:`layers_to_json`; FormatError naming ``where``."""
    names = {f.name for f in dataclasses.fields(LayerInfo)}
    layers = []
    try:
        for i, rec in enumerate(records):
            kw = {k: v for k, v in rec.items() if k in names}
            for f in _TENSOR_FIELDS:
                kw[f] = tensors[f"{i}.{f}"] if kw.get(f) else None
            kw["conv"] = None if kw.get("conv") is None else ConvGeometry(**{
                k: tuple(v) if isinstance(v, list) else v for k, v in kw["conv"].items()})
            c = kw.get("compact")
            if c is not None:
                kw["compact"] = HybridSparseTensor(
                    tensors[f"{i}.compact.values"], tensors[f"{i}.compact.block_cols"], tensors[f"{i}.compact.offsets"],
                    tuple(c["shape"]), Pattern(*c["pattern"]), tuple(c["weight_shape"]))
            for k in ("weight_shape", "gemm_shape"):
                kw[k] = tuple(kw[k])
            layers.append(LayerInfo(**kw))
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{where}: the layer table is damaged ({type(exc).__name__}: {exc}); "
                          "save the model again with compiled.save(path)") from exc
    return layers


def report_to_json(report: Report) -> dict:
    out = {f.name: getattr(report, f.name) for f in dataclasses.fields(Report) if f.name != "rows"}
    out["rows"] = [dataclasses.asdict(r) for r in report.rows]
    return out


def report_from_json(data: dict, where: str) -> Report:
    try:
        known = {f.name for f in dataclasses.fields(Report)}
        kw = {k: v for k, v in data.items() if k in known and k != "rows"}
        row_fields = {f.name for f in dataclasses.fields(LayerRow)}
        rows = []
        for r in data["rows"]:
            r = {k: v for k, v in r.items() if k in row_fields}
            r["gemm_shape"] = tuple(r["gemm_shape"])
            rows.append(LayerRow(**r))
        return Report(rows=rows, **kw)
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{where}: the report is damaged ({type(exc).__name__}: {exc})") from exc
