"""The targets, the per-layer causes and the markdown of ``benchmarks/onnx_runtime.py`` (not a test)."""

from __future__ import annotations

import platform
from pathlib import Path

from crisp.tables import table

NOISE = 0.95  # "never slower": 5 % timing noise allowed


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _group(layer) -> str:
    if layer.kind != "conv":
        return "fully connected"
    k = layer.weight_shape[2] * layer.weight_shape[3] if len(layer.weight_shape) == 4 else 1
    return "1x1 conv" if k == 1 else "kxk conv"


def layer_causes(report, cost_choice: dict[str, str], batch: int = 1) -> dict:
    """Per pruned layer: both forms' measured CPU ms at ``batch`` (body="measure"), the measured choice
    (blocks only where they win at every timed batch) and the cost model's; per layer group (kxk conv,
    1x1 conv, fully connected): the sums, and the layer-level bound."""
    rows, groups = [], {}
    for layer in report.pruned_layers:
        if not layer.measured_blocks_ms or batch not in layer.measured_blocks_ms:
            continue
        b, d = layer.measured_blocks_ms[batch], layer.measured_dense_ms[batch]
        g = _group(layer)
        chosen = {"measured": layer.execution, "cost model": cost_choice.get(layer.name)}
        rows.append({"layer": layer.name, "group": g, "gemm": layer.gemm_shape, "out_positions": layer.out_positions,
                     "blocks_kept": f"{layer.kept_blocks_per_row}/{layer.blocks_per_row}", "blocks_ms": b, "dense_ms": d,
                     "measured": chosen["measured"], "cost_model": chosen["cost model"]})
        s = groups.setdefault(g, {"layers": 0, "blocks_ms": 0.0, "dense_ms": 0.0, "best_ms": 0.0, "measured_ms": 0.0,
                                  "cost_model_ms": 0.0})
        s["layers"] += 1
        s["blocks_ms"] += b
        s["dense_ms"] += d
        s["best_ms"] += min(b, d)
        s["measured_ms"] += b if chosen["measured"] == "blocks" else d
        s["cost_model_ms"] += b if chosen["cost model"] == "blocks" else d
    total = {k: sum(s[k] for s in groups.values()) for k in ("blocks_ms", "dense_ms", "best_ms", "measured_ms", "cost_model_ms")}
    agree = sum(1 for r in rows if r["measured"] == r["cost_model"])
    return {"batch": batch, "layers": rows, "groups": groups, "total": total, "cost_model_agrees": agree,
            "measured_layers": len(rows)}


def targets(models: list[dict]) -> list[dict]:
    out = []
    for entry in models:
        c = entry["variants"]["compact"]
        if entry["model"].partition(":")[0] in ("resnet50", "vgg16") and "speedup_b1" in c:
            out.append({"text": f"{entry['model']} compact >= 2x faster than the dense input at batch 1",
                        "measured": c["speedup_b1"], "met": c["speedup_b1"] >= 2.0, "model": entry["model"], "batch": 1})
        for key in sorted(k for k in c if k.startswith("speedup_b")):
            out.append({"text": f"{entry['model']} compact never slower than the dense input (batch "
                                f"{key[len('speedup_b'):]}; 5 % timing noise allowed)",
                        "measured": c[key], "met": c[key] >= NOISE, "model": entry["model"], "batch": int(key[len("speedup_b"):])})
    return out


def _cause(entry: dict, batch: int = 1) -> str:
    """The measured per-layer cause of a model's speed at ``batch``, in one sentence."""
    t = entry.get("layer_timings", {}).get(f"b{batch}")
    if not t or not t["measured_layers"]:
        return "no per-layer timing"
    parts = [f"{g}: {s['layers']} layers, dense {s['dense_ms']:.1f} ms, kept blocks {s['blocks_ms']:.1f} ms "
             f"({s['dense_ms'] / max(s['blocks_ms'], 1e-9):.2f}x)" for g, s in t["groups"].items()]
    tot = t["total"]
    return (f"per layer, CPU ms (2 threads) at batch {batch} on each layer's own input ({'; '.join(parts)}); the faster "
            f"form of every layer would take {tot['best_ms']:.1f} ms against {tot['dense_ms']:.1f} ms dense, a layer-level "
            f"bound of {tot['dense_ms'] / max(tot['best_ms'], 1e-9):.2f}x; the measured choice (blocks only where they win at "
            f"batch 1 and 8, their cost to the ops around them included) takes {tot['measured_ms']:.1f} ms, the cost model's {tot['cost_model_ms']:.1f} ms (same choice "
            f"on {t['cost_model_agrees']}/{t['measured_layers']} layers)")


def _fmt(d: dict, key: str, fmt: str) -> str:
    return fmt.format(d[key]) if key in d else "-"


def markdown(results: dict) -> str:
    la, lb = results.get("load_average_start", (0, 0, 0)), results.get("load_average_end", (0, 0, 0))
    lines = [
        "# onnxruntime on crisp's ONNX outputs", "",
        f"{results['date']}, onnxruntime {results['onnxruntime']}, {results['threads']} intra-op threads, {results['machine']}, "
        "CPUExecutionProvider (MLAS kernels). Models exported at 224x224 with TorchScript at opset 17 (``:dynamo``: torch's "
        "dynamo exporter, its default opset, value_info written, symbolic batch), seeded random weights; crisp at 2:4, 32x32 "
        "blocks, 90 % sparsity, magnitude saliency. Wall-clock medians of repeated runs, variants round-robin in one process; "
        "``cpu 1t``: CPU ms of one run at 1 thread (spinning off), which other processes on the machine change less. "
        "``dense output`` runs the same graph as ``dense input`` (zeros in place, same kernels): its speedup is the control "
        "that shows the timing noise of each column. "
        f"Run under the shared benchmark lock; 1/5/15-minute load average {la[0]:.1f}/{la[1]:.1f}/{la[2]:.1f} at the start, "
        f"{lb[0]:.1f}/{lb[1]:.1f}/{lb[2]:.1f} at the end (the machine has {results['machine'].rsplit(', ', 1)[-1]}; other "
        f"sessions' tests ran outside the lock, so wall-clock numbers are noisy). {results.get('scope', '')} "
        f"Took {results.get('seconds', 0) / 60:.1f} min.", "",
    ]
    rows = [[e["model"], v, f"{d['file_bytes'] / 1e6:.2f}", f"{d['load_seconds']:.2f}",
             _fmt(d, "median_ms_b1", "{:.1f}"), _fmt(d, "speedup_b1", "{:.2f}x"), _fmt(d, "median_ms_b8", "{:.1f}"),
             _fmt(d, "speedup_b8", "{:.2f}x"), _fmt(d, "cpu_ms_1thread_b1", "{:.1f}"), _fmt(d, "cpu_speedup_1thread_b1", "{:.2f}x"),
             _fmt(d, "cpu_ms_1thread_b8", "{:.1f}"), _fmt(d, "cpu_speedup_1thread_b8", "{:.2f}x")]
            for e in results["models"] for v, d in e["variants"].items()]
    head = ["model", "variant", "file MB", "load s", "b1 ms", "speedup b1", "b8 ms", "speedup b8", "cpu 1t b1 ms",
            "cpu 1t b1 speedup", "cpu 1t b8 ms", "cpu 1t b8 speedup"]
    lines += [table(rows, head, fmt="markdown", align="llrrrrrrrrrr"), "", "## Targets", ""]
    for t in results["targets"]:
        entry = next(e for e in results["models"] if e["model"] == t["model"])
        cpu = entry["variants"]["compact"].get(f"cpu_speedup_1thread_b{t['batch']}")
        line = f"- {t['text']}: measured {t['measured']:.2f}x -> **{'MET' if t['met'] else 'MISSED'}**"
        line += f" (1-thread CPU time, batch {t['batch']}: {cpu:.2f}x)" if cpu else ""
        if not t["met"]:
            line += ". Cause: " + _cause(entry, t["batch"]) + "."
        lines.append(line)
    lines += ["", "Why the 2x targets are missed: onnxruntime's dense convs (MLAS, blocked NCHWc layout) are fast on this "
              "CPU, and the kept-blocks form made of standard ops copies data the dense conv never copies: the kept input "
              "columns of every block-row are gathered (one float copied per 32 MACs), for a kxk conv from an im2col built "
              "first. On every kxk conv measured that costs more than the 80 % of MACs it saves; 1x1 convs and fully "
              "connected layers win alone (1.2-2.5x), but the bias, activation and residual Add that no longer fuse into "
              "them eat most of that. The layer-level bounds in the causes (1.1-1.3x) cap any per-layer choice.",
              "", "## Per model", ""]
    for e in results["models"]:
        c = e["variants"]["compact"]
        lines.append(
            f"- {e['model']}: {e['pruned_layers']}/{e['layers']} layers pruned, achieved sparsity {e['achieved_sparsity']:.3f}; "
            f"{e['layers_on_blocks']} run on kept blocks by the cost model, {e.get('layers_on_blocks_measured', '-')} by "
            f"measurement; compact file {c['file_bytes'] / 1e6:.2f} MB (bound {e['size_bound_bytes'] / 1e6:.2f} MB, holds: "
            f"{e['size_rule_holds']}); {_cause(e, 1)}; {_cause(e, 8)}.")
    lines += ["", "## Per layer (measured at batch 1, the slowest 12 by dense time per model)", "",
              "CPU ms of each form of the layer alone (2 threads). The measured choice runs kept blocks only where they win at "
              "batch 1 and 8 after adding what they cost the model around the layer (unfused bias, activation and residual "
              "Add, layout changes: 80 dense-MAC equivalents per input and output float, crisp.onnx.compact.cost), so a layer "
              "can be faster alone and still stay dense.", ""]
    for e in results["models"]:
        t = e.get("layer_timings", {}).get("b1")
        if not t:
            continue
        top = sorted(t["layers"], key=lambda r: -r["dense_ms"])[:12]
        lines += [f"### {e['model']}", "", table(
            [[r["layer"][-40:], r["group"], "x".join(map(str, r["gemm"])), r["blocks_kept"], f"{r['dense_ms']:.3f}",
              f"{r['blocks_ms']:.3f}", r["measured"], r["cost_model"]] for r in top],
            ["layer", "group", "rows x K", "blocks kept", "dense ms", "blocks ms", "measured choice", "cost model"],
            fmt="markdown", align="lllrrrll"), ""]
    return "\n".join(lines)
