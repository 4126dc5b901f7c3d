"""Accuracy benchmark on scikit-learn's digits: CRISP against its baselines.

The in-project small CNN is pretrained on all 10 digits (fixed train split). For user-class
sets of 2, 3 and 5 classes (5 seeds, classes drawn per seed) it is personalized and pruned at
80/90/95 % sparsity by every method with the same fine-tuning budget (1 warm-up epoch +
(steps + 1) x epochs_per_step epochs, batch 16, SGD lr 0.01 momentum 0.9 wd 5e-4, cosine restarted
in every fine-tune phase; learned masks
train only their logits with Adam lr 0.05). Accuracy is measured once per run on the
user-class *test* split, which is never used for choices; the val split drives the per-step
history only.

Methods: dense fine-tuned (upper bound), CRISP (2:4 + 32x32 blocks, Taylor), CRISP with
magnitude saliency, block-only (1:1 pattern, Taylor), N:M-only (1:5 / 1:10 / 1:20, the only
N:M patterns that reach 80/90/95 %), unstructured magnitude pruning, filter (L1 channel)
pruning at CRISP's FLOPs ratio, and learned N:M masks inside CRISP-selected blocks.

Writes benchmarks/results/accuracy_digits.{json,md,png}. Usage:
    python benchmarks/accuracy_digits.py            # full run (about 15-20 min on 2 cores)
    python benchmarks/accuracy_digits.py --quick    # one scenario, smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import random
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from digits_baselines import dense_finetune, filter_pruning, flops_ratio, out_positions, unstructured, weight_shapes  # noqa: E402

from crisp.tasks.digits_data import load_digits_split, loader, subset  # noqa: E402
from crisp.fileio import atomic_write_text  # noqa: E402
from crisp.tasks.digits import class_accuracy, pretrain_small_cnn  # noqa: E402
from crisp.sparsity.pattern import Pattern  # noqa: E402
from crisp.tables import table  # noqa: E402
from crisp.pruning.prune import prune  # noqa: E402
from crisp.pruning.targets import find_prunable  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
METHODS = ["dense_ft", "crisp_taylor", "crisp_magnitude", "block_only", "nm_only", "unstructured", "filter", "learned"]
LABELS = {
    "dense_ft": "dense fine-tuned (upper bound)",
    "crisp_taylor": "CRISP 2:4 + blocks (Taylor)",
    "crisp_magnitude": "CRISP 2:4 + blocks (magnitude)",
    "block_only": "block-only (Taylor)",
    "nm_only": "N:M-only (1:M)",
    "unstructured": "unstructured magnitude",
    "filter": "filter pruning (equal FLOPs)",
    "learned": "learned N:M masks + blocks",
}


def user_class_sets(sizes, seeds):
    for k in sizes:
        for seed in seeds:
            yield k, seed, sorted(random.Random(1000 + 17 * k + seed).sample(range(10), k))


def nm_only_pattern(kappa: float, block: int) -> Pattern:
    m = round(1 / (1 - kappa))
    return Pattern(1, m, m * math.ceil(block / m))


def run_scenario(model, split, k, seed, classes, args, positions, shapes, prunable):
    train = loader(subset(split.train, classes), batch_size=args.batch_size, shuffle=True, seed=seed)
    val = loader(subset(split.val, classes), batch_size=256)
    example = split.train.tensors[0][:1]
    budget = dict(warmup_epochs=args.warmup, epochs_per_step=args.epochs_per_step, steps=args.steps)
    rows = []

    def record(method, kappa, pruned, masks, hist_acc, start, extra=None):
        acc = class_accuracy(pruned, split.test, classes)
        kept = sum(int(masks[n].sum()) for n in prunable if n in masks)
        total = sum(int(torch.Size(shapes[n]).numel()) for n in prunable)
        row = {
            "k": k, "seed": seed, "classes": classes, "method": method, "sparsity": kappa,
            "test_accuracy": acc, "val_accuracy": hist_acc,
            "achieved_sparsity": 1 - kept / total if masks else 0.0,
            "flops_ratio": flops_ratio(shapes, masks, positions),
            "seconds": time.perf_counter() - start,
        }
        row.update(extra or {})
        rows.append(row)
        return row

    start = time.perf_counter()
    dense, masks, records = dense_finetune(model, train, val, classes, steps=args.steps, warmup=args.warmup,
                                           epochs=args.epochs_per_step, seed=seed)
    record("dense_ft", None, dense, masks, records[-1].accuracy, start)

    def crisp_run(name, kappa, **kw):
        start = time.perf_counter()
        opts = dict(pattern="2:4", block=args.block, sparsity=kappa, saliency="taylor", method="crisp",
                    val_data=val, seed=seed, progress=False, **budget)
        opts.update(kw)
        if opts.get("steps") == 0:  # a one-step schedule gets the whole budget in that step
            opts["steps"] = 1
            opts["epochs_per_step"] = (args.steps + 1) * args.epochs_per_step
        pruned, hist = prune(model, train, classes=classes, **opts)
        return record(name, kappa, pruned, hist.masks, hist.final.accuracy, start,
                      {"mask_change": [round(r.mask_change, 4) for r in hist.steps], "layers": hist.layers})

    for kappa in args.sparsities:
        crisp_row = crisp_run("crisp_taylor", kappa)
        crisp_run("crisp_magnitude", kappa, saliency="magnitude")
        crisp_run("block_only", kappa, pattern="1:1")
        crisp_run("nm_only", kappa, pattern=nm_only_pattern(kappa, args.block), block=None, steps=0)
        crisp_run("learned", kappa, method="learned")
        names = [n for n in prunable]
        start = time.perf_counter()
        sched = [0.5 + (kappa - 0.5) * p / args.steps for p in range(args.steps + 1)]
        pruned, masks, records = unstructured(model, train, val, classes, names, sched, warmup=args.warmup,
                                              epochs=args.epochs_per_step, seed=seed)
        record("unstructured", kappa, pruned, masks, records[-1].accuracy, start)
        start = time.perf_counter()
        pruned, masks, records = filter_pruning(model, train, val, classes, crisp_row["flops_ratio"], steps=args.steps,
                                                warmup=args.warmup, epochs=args.epochs_per_step, seed=seed, example=example)
        record("filter", kappa, pruned, masks, records[-1].accuracy, start,
               {"flops_target": crisp_row["flops_ratio"]})
    return rows


_WORKER: dict = {}


def _init_worker(state: dict, args: argparse.Namespace) -> None:
    """One single-threaded process per core: two OpenMP threads on a shared 2-core host stall each
    other whenever one is descheduled, so the benchmark runs scenarios in parallel processes."""
    from crisp.models import small_cnn

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # denormal floats slowed CPU training 2x here; results are unaffected
    split = load_digits_split()
    model = small_cnn(num_classes=10, in_channels=1, input_size=8)
    model.load_state_dict(state)
    model.eval()
    _WORKER.update(split=split, model=model, args=args, positions=out_positions(model, split.train.tensors[0][:1]),
                   shapes=weight_shapes(model),
                   prunable=[t.weight_name for t in find_prunable(model, Pattern(2, 4, args.block)) if t.prunable])


def _run_job(job):
    k, seed, classes = job
    w = _WORKER
    start = time.perf_counter()
    rows = run_scenario(w["model"], w["split"], k, seed, classes, w["args"], w["positions"], w["shapes"], w["prunable"])
    return k, seed, classes, rows, time.perf_counter() - start


def summarize(rows, sizes, sparsities):
    table = {}
    for k in sizes:
        for kappa in sparsities:
            for method in METHODS:
                sel = [r for r in rows if r["k"] == k and r["method"] == method
                       and (r["sparsity"] == kappa or method == "dense_ft")]
                if not sel:
                    continue
                accs = [100 * r["test_accuracy"] for r in sel]
                table.setdefault(str(k), {}).setdefault(str(kappa), {})[method] = {
                    "mean": statistics.fmean(accs),
                    "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                    "runs": len(accs),
                    "flops_ratio": statistics.fmean(r["flops_ratio"] for r in sel),
                    "achieved_sparsity": statistics.fmean(r["achieved_sparsity"] for r in sel),
                }
    return table


def check_targets(table, sizes, sparsities):
    out = []

    def m(k, kappa, method):
        return table[str(k)][str(kappa)][method]["mean"]

    if 0.9 in sparsities:
        for k in sizes:
            gap = m(k, 0.9, "dense_ft") - m(k, 0.9, "crisp_taylor")
            out.append({"target": f"CRISP at 90% within 2 points of dense fine-tuned ({k} classes)",
                        "met": gap <= 2.0, "detail": f"dense {m(k, 0.9, 'dense_ft'):.2f}, CRISP {m(k, 0.9, 'crisp_taylor'):.2f}, gap {gap:.2f} points"})
    for other in ("block_only", "filter"):
        for kappa in sparsities:
            for k in sizes:
                a, b = m(k, kappa, "crisp_taylor"), m(k, kappa, other)
                out.append({"target": f"CRISP >= {other} at {int(100 * kappa)}% ({k} classes)", "met": a >= b,
                            "detail": f"CRISP {a:.2f} vs {b:.2f}"})
    t = statistics.fmean(m(k, kp, "crisp_taylor") for k in sizes for kp in sparsities)
    g = statistics.fmean(m(k, kp, "crisp_magnitude") for k in sizes for kp in sparsities)
    out.append({"target": "Taylor >= magnitude saliency on average", "met": t >= g,
                "detail": f"Taylor {t:.2f} vs magnitude {g:.2f} (mean over all class counts and sparsities)"})
    return out


def markdown(result):
    cfg, summary = result["config"], result["summary"]
    lines = [
        "# Accuracy on scikit-learn digits: CRISP vs baselines",
        "",
        f"Small CNN pretrained on all 10 digits (test accuracy {100 * result['pretrained_test_accuracy']:.2f}%), "
        f"personalized and pruned for {', '.join(map(str, cfg['sizes']))} user classes, {len(cfg['seeds'])} seeds each "
        f"(classes drawn per seed). Budget per run: {cfg['warmup']} warm-up + ({cfg['steps']} + 1) x "
        f"{cfg['epochs_per_step']} fine-tune epochs, batch {cfg['batch_size']}. Block {cfg['block']}x{cfg['block']}. Mean +- std of accuracy (%) "
        "on the user-class test split; FLOPs = kept multiply-accumulates / dense over all conv/linear layers. "
        f"Run time {result['seconds'] / 60:.1f} min wall clock on {result['machine']}; the per-run wall times add up to "
        f"{sum(r['seconds'] for r in result['runs']) / 60:.1f} min (the host is shared with other jobs, so wall time varies)."
        + ("" if result.get("complete", True) else " **Partial results: the run has not finished.**"),
        "",
    ]
    for k, per_kappa in summary.items():
        rows = []
        for method in METHODS:
            cells = [LABELS[method]]
            for kappa, methods in per_kappa.items():
                s = methods.get(method)
                cells += ["n/a", "n/a"] if s is None else [f"{s['mean']:.2f} +- {s['std']:.2f}", f"{s['flops_ratio']:.3f}"]
            rows.append(cells)
        head = ["method", *(h for s in per_kappa for h in (f"{int(100 * float(s))}% acc", "FLOPs"))]
        lines += [f"## {k} user classes", "", table(rows, head, fmt="markdown", align="l" + "rr" * len(per_kappa)), ""]
    lines += ["## Targets", ""]
    for t in result["targets"]:
        lines.append(f"- {'MET' if t['met'] else '**MISSED**'}: {t['target']} ({t['detail']})")
    missed = [t for t in result["targets"] if not t["met"]]
    lines += ["", f"{len(result['targets']) - len(missed)} of {len(result['targets'])} targets met."
              + (" Missed targets are reported as measured; nothing was tuned on the test split." if missed else ""), ""]
    lines += ["## Notes", "",
              "- Sparsity counts the weights of the pruned layers only (conv2-4, fc1, fc2; conv1 has K=9 < 32 and stays dense).",
              "- N:M-only uses 1:5, 1:10 and 1:20 (the N:M patterns that reach exactly 80/90/95%); 2:4 alone reaches only 50%.",
              "- Filter pruning removes the same share of output channels (smallest L1 norm) in conv1-4 and fc1 and the "
              "matching inputs of the next layer, with the share chosen so its FLOPs equal CRISP-Taylor's in the same run.",
              "- The classifier keeps all 10 outputs; accuracy is argmax over them.",
              "- Defaults were chosen on the validation split only: batch 16 and a cosine learning rate that restarts in "
              "every fine-tune phase (a single cosine over the whole run left the last, largest cut with almost no "
              "learning rate and collapsed several runs to one class).",
              "",
              "## Why CRISP misses its targets here",
              "",
              "- Taylor saliency churns the masks. Eq. 1 is |mean over batches of dL/dW * W|; once the model fits the user "
              "classes (the pretrained CNN already classifies them at about 99%), the mean gradient of the kept weights is "
              "close to zero, while the pruned weights, which the straight-through estimator keeps training, still carry a "
              "nonzero mean gradient. On the validation split (5 class sets, 90%) each block step changed about 35% of the "
              "mask with Taylor against about 15% with magnitude, and the 2-epoch fine-tune after a step does not always "
              "recover: most of CRISP-Taylor's large std comes from a few such runs. Magnitude saliency is more stable here.",
              "- The paper's global ranking of column scores (no per-layer normalization) is harsh on this small network: in "
              "the runs we inspected at 90% it left conv4 (and, with magnitude saliency, also conv2 and conv3) with one kept "
              "32x32 block per block-row, i.e. 16 inputs per output channel after 2:4, while other layers kept most of "
              "their blocks. Filter, unstructured and 1:M pruning keep the network's "
              "structure more evenly and lose almost nothing on 2-5 easy digit classes.",
              "- Learned masks keep the weights frozen, as in the companion paper: they hold 100% validation accuracy at "
              "50-70% sparsity (3 classes), but at 80-95% frozen weights cannot make up for the removed blocks.",
              ""]
    return "\n".join(lines)


def plot(result, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    table = result["summary"]
    fig, axes = plt.subplots(1, len(table), figsize=(5 * len(table), 4), sharey=True, squeeze=False)
    for ax, (k, per_kappa) in zip(axes[0], table.items()):
        kappas = [float(s) for s in per_kappa]
        for method in METHODS:
            if method == "dense_ft":
                d = per_kappa[next(iter(per_kappa))]["dense_ft"]
                ax.axhline(d["mean"], color="black", linestyle="--", label=LABELS[method])
                continue
            ys = [per_kappa[str(kp)][method]["mean"] for kp in kappas]
            es = [per_kappa[str(kp)][method]["std"] for kp in kappas]
            ax.errorbar([100 * kp for kp in kappas], ys, yerr=es, marker="o", capsize=3, label=LABELS[method])
        ax.set_title(f"{k} user classes")
        ax.set_xlabel("sparsity (%)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("user-class test accuracy (%)")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".crisp-", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one scenario (2 classes, 1 seed, 90%%) as a smoke test")
    p.add_argument("--sizes", type=int, nargs="+", default=[2, 3, 5])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.8, 0.9, 0.95])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--epochs-per-step", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--block", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--pretrain-epochs", type=int, default=8)
    p.add_argument("--jobs", type=int, default=2, help="parallel single-threaded worker processes (default 2)")
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--render-only", action="store_true", help="rewrite the .md and .png from the existing .json")
    args = p.parse_args(argv)
    if args.render_only:
        with open(os.path.join(args.out, "accuracy_digits.json")) as fh:
            result = json.load(fh)
        atomic_write_text(os.path.join(args.out, "accuracy_digits.md"), markdown(result), parents=True)
        plot(result, os.path.join(args.out, "accuracy_digits.png"))
        print(markdown(result))
        return 0
    if args.quick:
        args.sizes, args.seeds, args.sparsities = [2], 1, [0.9]
    torch.set_num_threads(1)  # see _init_worker: one thread per process
    torch.set_flush_denormal(True)  # denormal floats slowed CPU training 2x here; results are unaffected
    t0 = time.perf_counter()
    split = load_digits_split()
    model = pretrain_small_cnn(split, epochs=args.pretrain_epochs, seed=0)
    pre_acc = class_accuracy(model, split.test, list(range(10)))
    print(f"pretrained small CNN: test accuracy {100 * pre_acc:.2f}% ({time.perf_counter() - t0:.0f}s)", flush=True)
    rows = []

    def write(final: bool) -> dict:
        done = sorted({r["k"] for r in rows})
        table = summarize(rows, done, args.sparsities)
        complete = [k for k in done if sum(r["k"] == k and r["method"] == "dense_ft" for r in rows) == args.seeds]
        result = {
            "config": {"sizes": args.sizes, "seeds": list(range(args.seeds)), "sparsities": args.sparsities, "steps": args.steps,
                       "epochs_per_step": args.epochs_per_step, "warmup": args.warmup, "block": args.block,
                       "pretrain_epochs": args.pretrain_epochs, "batch_size": args.batch_size, "jobs": args.jobs,
                       "quick": args.quick},
            "complete": final,
            "machine": f"{platform.machine()} CPU, {args.jobs} single-threaded worker processes (shared host), torch {torch.__version__}",
            "pretrained_test_accuracy": pre_acc,
            "summary": table,
            "targets": check_targets(table, complete, args.sparsities) if complete else [],
            "runs": rows,
            "seconds": time.perf_counter() - t0,
        }
        os.makedirs(args.out, exist_ok=True)
        atomic_write_text(os.path.join(args.out, "accuracy_digits.json"), json.dumps(result, indent=2), parents=True)
        atomic_write_text(os.path.join(args.out, "accuracy_digits.md"), markdown(result), parents=True)
        return result

    jobs = sorted(user_class_sets(args.sizes, range(args.seeds)), key=lambda j: (-j[0], j[1]))  # longest first
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(args.jobs, initializer=_init_worker, initargs=(model.state_dict(), args)) as pool:
        for k, seed, classes, new, took in pool.imap_unordered(_run_job, jobs):
            rows += new
            rows.sort(key=lambda r: (r["k"], r["seed"], METHODS.index(r["method"]), r["sparsity"] or 0))
            short = ", ".join(f"{r['method']}@{r['sparsity']}={100 * r['test_accuracy']:.1f}" for r in new
                              if r["method"] in ("dense_ft", "crisp_taylor"))
            print(f"{k} classes seed {seed} {classes}: {short} ({took:.0f}s, total {(time.perf_counter() - t0) / 60:.1f} min)",
                  flush=True)
            write(final=False)  # partial results survive an interrupted run
    result = write(final=True)
    png = plot(result, os.path.join(args.out, "accuracy_digits.png"))
    print(markdown(result))
    print(f"wrote {args.out}/accuracy_digits.json, .md" + (", .png" if png else " (no matplotlib: no plot)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
