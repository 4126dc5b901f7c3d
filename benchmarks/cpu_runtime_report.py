"""The Markdown report of ``benchmarks/cpu_runtime.py``: every table of ``cpu_runtime.md``,
rendered from the benchmark's JSON with ``crisp.tables``."""

from __future__ import annotations

from crisp.bench import cpu_peers as cpu_bench
from crisp.tables import table

TARGET_LAYER_EFFICIENCY = 0.7  # a pruned layer should reach 70% of its block-skip limit


def lookup(records, **key) -> dict | None:
    for r in records:
        if all(r.get(k) == v for k, v in key.items()):
            return r
    return None


def _later_runs(data) -> list[dict]:
    """Notes of runs merged into this one after the grid (see ``supplement`` in the JSON)."""
    sup = data.get("supplement") or {}
    runs = [sup] if "note" in sup else []
    return runs + [v for v in sup.values() if isinstance(v, dict) and "note" in v]


def _targets(data) -> str:
    rows = [[t["target"], "-" if t["value"] is None else f"{t['value']}" + (f" ({t['detail']})" if t.get("detail") else ""),
             "not measured" if t["met"] is None else ("yes" if t["met"] else "**MISSED**")] for t in data["targets"]]
    return table(rows, ["target", "measured", "met"], fmt="markdown")


def _model_tables(name: str, records: list[dict], methods: list[str]) -> list[str]:
    """One model's whole-model tables: wall-clock medians, then 1-thread process CPU time."""
    others = [m for m in methods if m != "crisp_cpu"]
    configs = dict.fromkeys((r["block"], r["sparsity"], r["batch"], r["threads"]) for r in records if r["model"] == name)

    def rows(key: str, threads: int | None) -> list[list]:
        out = []
        for block, sparsity, batch, t in configs:
            if threads is not None and t != threads:
                continue
            row = {m: lookup(records, model=name, block=block, sparsity=sparsity, batch=batch, threads=t, method=m) or {}
                   for m in methods}
            cpu = row.get("crisp_cpu", {}).get(key)
            cells = [f"{row[m][key]:.1f}" if key in row[m] else "skipped" for m in methods]
            ratios = [f"{row[m][key] / cpu:.1f}" if key in row[m] and cpu else "-" for m in others]
            out.append([block, sparsity, batch, *([] if threads else [t]), *cells, *ratios])
        return out

    ratio_heads = [f"x {m}" for m in others]
    lines = ["", f"## {name}", "",
             table(rows("median_ms", None), ["block", "sparsity", "batch", "threads", *methods, *ratio_heads], fmt="markdown")]
    one = rows("cpu_median_ms", 1)
    if one:
        lines += ["", f"{name}, 1 thread, median process CPU time per run (ms; not inflated by other jobs "
                  "taking the core, unlike wall time):", "",
                  table(one, ["block", "sparsity", "batch", *methods, *ratio_heads], fmt="markdown")]
    for reason in {r["skipped"] for r in records if r["model"] == name and "skipped" in r}:
        lines.append(f"\nSkipped: {reason}.")
    return lines


def _alternatives(alt: list[dict]) -> list[str]:
    methods = list(dict.fromkeys(k[:-3] for r in alt for k in r if k.endswith("_ms")))
    groups = {kind: [r for r in alt if r["kind"] == kind] for kind in dict.fromkeys(r["kind"] for r in alt)}
    rows = [[kind, len(mine), *("n/a" if v != v else f"{v:.2f}" for v in
                                (sum(r.get(f"{m}_ms", float("nan")) for r in mine) for m in methods))]
            for kind, mine in [*groups.items(), ("all", alt)]]
    return ["", "## Kernel alternatives (every pruned conv of ResNet-50 alone, target configuration)", "",
            "Sum of per-layer medians in ms. `cpp_rows_kernel`: C++, vectorized over output positions (NCHW); "
            "`cpp_channel_kernel`: C++, vectorized over output channels (NHWC, AVX-512), used wherever m divides "
            "Cin; `cpp_as_compiled`: the one of the two the cpu backend picks; `torch_gather_bmm`: vectorized torch (unfold, gather the kept block columns, one batched matmul "
            "with the kept blocks stored densely); `reference_kernel`: the reference op.", "",
            table(rows, ["kind", "layers", *methods], fmt="markdown")]


def _memory(memory: list[dict]) -> list[str]:
    rows = [[f"{mem['model']} (B={mem['block']}, {mem['sparsity']})", method, f"{mem[method]['weights_bytes'] / 1e6:.1f}",
             f"{mem[method]['activation_peak_bytes'] / 1e6:.1f}", f"{mem[method]['total_bytes'] / 1e6:.1f}"]
            for mem in memory for method in ("torch_dense", "crisp_cpu")]
    return ["", "## Memory during inference (batch 1)", "",
            "Weights = parameters + buffers of the module that runs; activation peak = the largest sum of "
            "live allocations during one forward (torch profiler).", "",
            table(rows, ["model", "method", "weights MB", "activation peak MB", "total MB"], fmt="markdown")]


def _per_layer(lr: dict) -> list[str]:
    """One per-layer run: sums by layer kind, the layer table, and the 1-thread CPU-time sums."""
    layers = [cpu_bench.LayerTiming(**{**t, "input_shape": tuple(t["input_shape"])}) for t in lr["layers"]]
    kinds = {kind: [t for t in layers if t.kind == kind] for kind in dict.fromkeys(t.kind for t in layers)}
    rows = []
    for kind, mine in kinds.items():
        d, c, lim = (sum(getattr(t, k) for t in mine) for k in ("dense_ms", "crisp_ms", "limit_ms"))
        rows.append([kind, len(mine), f"{d:.2f}", f"{c:.2f}", f"{lim:.2f}", f"{lim / c:.2f}"])
    head = ["kind", "layers", "dense ms", "crisp ms", "limit ms", "limit/crisp"]
    lines = ["", f"## Per layer: {lr['model']}, B={lr['block']}, sparsity {lr['sparsity']}, batch {lr['batch']}, "
             f"{lr['threads']} thread(s)", "",
             "Dense: best of torch NCHW and channels_last, BN folded. Limit = dense x kept density (the ideal "
             "block-skip time). Kernel: `channel` = NHWC, vectorized over output channels; `rows` = vectorized "
             "over output positions.", "", table(rows, head, fmt="markdown"), "", cpu_bench.layer_table(layers)]
    if lr["threads"] == 1 and all("crisp_cpu_ms" in t for t in lr["layers"]):
        rows = []
        for kind in kinds:
            mine = [t for t in lr["layers"] if t["kind"] == kind]
            d, c = sum(t["dense_cpu_ms"] for t in mine), sum(t["crisp_cpu_ms"] for t in mine)
            lim = sum(t["dense_cpu_ms"] * t["density"] for t in mine)
            low = sum(t["dense_cpu_ms"] * t["density"] / t["crisp_cpu_ms"] < TARGET_LAYER_EFFICIENCY for t in mine)
            rows.append([kind, len(mine), f"{d:.2f}", f"{c:.2f}", f"{lim:.2f}", f"{lim / c:.2f}", low])
        lines += ["", "The same at 1 thread in process CPU time (robust to other jobs on the machine):", "",
                  table(rows, [*head, "layers below 70%"], fmt="markdown")]
    return lines


def markdown(data) -> str:
    env, records, cfg = data["environment"], data["records"], data["config"]
    lines = ["# CPU runtime benchmark", "",
             f"{env['date']} on {env['cpu']} ({env['logical_cpus']} logical CPUs, shared with other jobs: load average "
             f"{env['load_average_start'][0]:.1f} at start, {env['load_average_end'][0]:.1f} at end), torch {env['torch']}, "
             f"onnxruntime {env['onnxruntime']}, scipy {env['scipy']}, crisp {env['crisp_commit']}. Wall-clock medians "
             "after warm-up; pattern 2:4. Times in ms; `x` columns are how many times faster crisp cpu is.", "",
             f"**Kernel path: {env.get('cpu_isa', '?')}** (this CPU runs {', '.join(env.get('cpu_paths', []))}; "
             f"`CRISP_CPU_CAPABILITY` forces one). CPU flags: `{env.get('cpu_flags', '')}`.", "",
             f"Grid: models {cfg['models']}, blocks {cfg['blocks']}, sparsities {cfg['sparsities']}, batches "
             f"{cfg['batches']} (batches other than 1 for blocks {cfg['big_batch_blocks']}), threads {cfg['threads']}; "
             f"reference kernel timed at: {cfg['reference']}; scipy.sparse is single-threaded, so its 2-thread rows repeat "
             "the 1-thread measurement.", "",
             "**Reading these numbers.** The machine is a 2-vCPU virtual machine whose speed drifts: over "
             "a few seconds, runs of the same model at 2 threads move between two levels (for crisp on ResNet-50 "
             "about 10 ms and about 15 ms) with nothing else running. Whole-model times are therefore taken "
             "in 3 rounds (every fast method gets a third of its budget in each round, its runs together) and "
             "the median is over all rounds, so that every method sees the same phases; `round_medians_ms` in the "
             "JSON shows the drift. The reference kernel and scipy, hundreds of ms a run, are timed last, once. "
             "Per-layer times are single measurements per layer and more exposed to the drift. The 1-thread "
             "rows in process CPU time are the most robust comparison; the targets are evaluated both ways.", "",
             *[f"Later run: {v['note']} ({v['date']})." for v in _later_runs(data)], "",
             "## Targets (ResNet-50, 90 %, 2:4, B=32, batch 1, 2 threads)", "", _targets(data)]
    methods = [m for m in cpu_bench.METHODS if any(r["method"] == m for r in records)]
    for name in dict.fromkeys(r["model"] for r in records):
        lines += _model_tables(name, records, methods)
    if data.get("alternatives"):
        lines += _alternatives(data["alternatives"])
    if data.get("memory"):
        lines += _memory(data["memory"])
    for lr in data["layers"]:
        lines += _per_layer(lr)
    return "\n".join(lines) + "\n"
