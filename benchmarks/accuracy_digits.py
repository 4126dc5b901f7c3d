"""Accuracy benchmark on scikit-learn's digits: CRISP against its baselines, on two models.

Models: the in-project small CNN (8x8) and a residual bottleneck CNN on digits upsampled to 16x16
(9 prunable layers: 1x1 and 3x3 convs, residual projections, classifier); both pretrained on all 10
digits of the pretrain part (40 % of every class). For user-class sets of 2, 3 and 5 classes (classes
drawn per seed) each model is personalized and pruned by every method with the same fine-tuning
budget (warm-up + (steps + 1) x epochs_per_step epochs on the user classes' pretrain samples, batch
16, SGD momentum 0.9 wd 5e-4, cosine restarted in every phase; the budget is crisp.prune's default,
1 warm-up + 8 fine-tune epochs, and the lr was chosen on validation class sets; learned masks train their logits with Adam lr 0.05). Accuracy is measured on the user classes' held-out samples (60 %
of every class, never seen in pretraining or fine-tuning; about 216 samples for 2 classes), in two
fixed folds.

Default allocation and schedules: chosen on *validation* runs only (their own class sets, seeds 100+),
by cross-fitting: the choice evaluated on fold f is the candidate with the best validation accuracy
on the other fold, so no test sample takes part in the choice it is scored under. CRISP's allocation
and schedule (iterative: Alg. 1's N:M step then block steps; one-shot: one step to the target, the
same epochs after it) are chosen together; each fine-tuning baseline gets its own schedule.

Writes benchmarks/results/accuracy_digits.{json,md}. Usage:
    python benchmarks/accuracy_digits.py                 # the grid in the arguments' defaults
    python benchmarks/accuracy_digits.py --quick         # one scenario per model, a smoke test
    python benchmarks/accuracy_digits.py --render-only   # rewrite the .md from the .json
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
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from accuracy_digits_models import BLOCK, FILTER_CHAINS, INPUT_SIZE, benchmark_split, build, fold_accuracy, pretrain  # noqa: E402
from accuracy_digits_report import markdown  # noqa: E402
from accuracy_digits_stats import check_targets, summarize  # noqa: E402
from digits_baselines import dense_finetune, filter_pruning, flops_ratio, out_positions, unstructured, weight_shapes  # noqa: E402

from crisp.fileio import atomic_write_text  # noqa: E402
from crisp.pruning.prune import DEFAULT_FINETUNE_EPOCHS, prune  # noqa: E402
from crisp.pruning.targets import find_prunable, max_reachable_sparsity  # noqa: E402
from crisp.errors import PatternError  # noqa: E402
from crisp.sparsity.pattern import Pattern  # noqa: E402
from crisp.pruning.schedule import sparsity_schedule  # noqa: E402
from crisp.sparsity.selection import ALLOCATIONS, DEFAULT_ALLOCATION  # noqa: E402
from crisp.tasks.digits_data import loader, subset  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
VAL_SEED0 = 100
# both train warm-up + (steps + 1) x epochs_per_step epochs; "one-shot" prunes to the target in one step
SCHEDULES = ("iterative", "one-shot")
LOAD_AT_START = os.getloadavg()[0]


def class_sets(sizes, seeds):
    for k in sizes:
        for seed in seeds:
            yield k, seed, sorted(random.Random(1000 + 17 * k + seed).sample(range(10), k))


def nm_only_pattern(kappa: float, block: int) -> Pattern:
    m = round(1 / (1 - kappa))
    return Pattern(1, m, m * math.ceil(block / m))


class Scenario:
    """One (model, class set, seed): runs methods and records their held-out accuracy per fold."""

    def __init__(self, w: dict, model_name: str, k: int, seed: int, classes: list[int], phase: str):
        self.w, self.name, self.k, self.seed, self.classes, self.phase = w, model_name, k, seed, classes, phase
        self.model, self.held, self.fold = w["models"][model_name], w["held"][model_name], w["fold"][model_name]
        self.train = loader(subset(w["pretrain"][model_name], classes), batch_size=w["args"].batch_size, shuffle=True, seed=seed)
        self.rows: list[dict] = []

    def record(self, method, kappa, pruned, masks, start, extra=None):
        shapes, positions, prunable = self.w["shapes"][self.name], self.w["positions"][self.name], self.w["prunable"][self.name]
        f0, f1, n = fold_accuracy(pruned, self.held, self.fold, self.classes)
        kept = sum(int(masks[p].sum()) for p in prunable if p in masks)
        total = sum(int(torch.Size(shapes[p]).numel()) for p in prunable)
        row = {"phase": self.phase, "model": self.name, "k": self.k, "seed": self.seed, "classes": self.classes,
               "method": method, "sparsity": kappa, "fold_accuracy": [f0, f1], "test_accuracy": (f0 + f1) / 2,
               "test_samples": n, "achieved_sparsity": 1 - kept / total if masks else 0.0,
               "flops_ratio": flops_ratio(shapes, masks, positions), "seconds": time.perf_counter() - start}
        row.update(extra or {})
        self.rows.append(row)
        return row

    def budget(self, schedule: str) -> dict:
        """``steps`` and ``epochs_per_step`` of ``schedule`` under the benchmark's budget (both schedules
        train warm-up + (steps + 1) x epochs_per_step epochs)."""
        a = self.w["args"]
        if schedule == "one-shot":  # one step straight to the target, the whole budget after it
            return {"steps": 0, "epochs_per_step": (a.steps + 1) * a.epochs_per_step}
        return {"steps": a.steps, "epochs_per_step": a.epochs_per_step}

    def crisp(self, label, kappa, schedule="iterative", **kw):
        a = self.w["args"]
        start = time.perf_counter()
        opts = dict(pattern="2:4", block=BLOCK[self.name], sparsity=kappa, saliency="taylor", method="crisp", seed=self.seed,
                    progress=False, warmup_epochs=a.warmup, **self.budget(schedule))
        if kw.get("method", "crisp") == "crisp":
            opts["lr"] = a.lr  # learned masks keep their own default (Adam, 0.05)
        opts.update(kw)
        try:
            pruned, hist = prune(self.model, self.train, classes=self.classes, **opts)
        except PatternError as exc:  # e.g. block-only cannot reach the target in this model: no row, said in the log
            print(f"{self.name} {label} at {kappa}: skipped ({exc})", flush=True)
            return None
        return self.record(label, kappa, pruned, hist.masks, start, {
            "allocation": hist.allocation, "schedule": schedule, "mask_change": [round(r.mask_change, 4) for r in hist.steps],
            "density": hist.density_distribution(), "layers": {n: v["density"] for n, v in hist.layers.items()}})

    def dense(self, schedule, label="dense_ft"):
        start = time.perf_counter()
        b, a = self.budget(schedule), self.w["args"]
        dense, masks, _ = dense_finetune(self.model, self.train, None, self.classes, steps=b["steps"], warmup=a.warmup,
                                         epochs=b["epochs_per_step"], seed=self.seed, lr=a.lr)
        return self.record(label, None, dense, masks, start, {"schedule": schedule})

    def unstructured(self, kappa, schedule, label="unstructured"):
        start = time.perf_counter()
        b, a = self.budget(schedule), self.w["args"]
        sched = sparsity_schedule(Pattern(2, 4, BLOCK[self.name]), kappa, b["steps"])  # CRISP's, from 2:4's 50 %
        pruned, masks, _ = unstructured(self.model, self.train, None, self.classes, self.w["prunable"][self.name], sched,
                                        warmup=a.warmup, epochs=b["epochs_per_step"], seed=self.seed, lr=a.lr)
        return self.record(label, kappa, pruned, masks, start, {"schedule": schedule})

    def filter(self, kappa, flops, schedule, label="filter"):
        start = time.perf_counter()
        b, a = self.budget(schedule), self.w["args"]
        pruned, masks, _ = filter_pruning(self.model, self.train, None, self.classes, flops, steps=b["steps"],
                                          warmup=a.warmup, epochs=b["epochs_per_step"], seed=self.seed,
                                          example=self.held.tensors[0][:1], chain=FILTER_CHAINS[self.name], lr=a.lr)
        return self.record(label, kappa, pruned, masks, start, {"flops_target": flops, "schedule": schedule})


def validation_runs(s: Scenario) -> None:
    """Under each schedule: every allocation rule with Taylor and magnitude, and the baselines that
    fine-tune (dense, unstructured, filter pruning at CRISP-Taylor's FLOPs, learned masks + blocks)."""
    for schedule in SCHEDULES:
        s.dense(schedule)
        for kappa in s.w["args"].val_sparsities:
            for allocation in ALLOCATIONS:
                row = s.crisp(f"crisp_taylor_{allocation}", kappa, schedule, allocation=allocation)
                s.crisp(f"crisp_magnitude_{allocation}", kappa, schedule, saliency="magnitude", allocation=allocation)
                if allocation == DEFAULT_ALLOCATION:
                    s.filter(kappa, row["flops_ratio"], schedule)
            s.unstructured(kappa, schedule)
            s.crisp("learned", kappa, schedule, method="learned")


def test_runs(s: Scenario) -> None:
    a, default, sched = s.w["args"], s.w["default"], s.w["schedules"]
    crisp_schedule = sched["crisp"]
    s.dense(sched["dense_ft"])
    frozen = dict(steps=1, epochs_per_step=0, warmup_epochs=0)
    s.crisp("magnitude_nm", 0.5, saliency="magnitude", **frozen)  # magnitude 2:4 on the frozen weights
    s.crisp("learned_nm", 0.5, method="learned", steps=1)  # learned 2:4 (the weights stay frozen)
    s.crisp("nm_only", 0.5, "one-shot")  # 2:4 with fine-tuning (N:M alone is one step under either schedule)
    for kappa in [kp for kp in a.sparsities if kp <= s.w["reach"][s.name]]:  # reachable with 1 block per row
        row = s.crisp("crisp_taylor", kappa, crisp_schedule, allocation=default)
        s.crisp("crisp_magnitude", kappa, crisp_schedule, saliency="magnitude", allocation=default)
        s.crisp("crisp_paper", kappa, crisp_schedule, allocation="paper")
        s.crisp("block_only", kappa, crisp_schedule, pattern="1:1", allocation=default)
        s.crisp("nm_only", kappa, "one-shot", pattern=nm_only_pattern(kappa, BLOCK[s.name]), block=None)
        s.crisp("learned", kappa, sched["learned"], method="learned", allocation=default)
        s.unstructured(kappa, sched["unstructured"])
        s.filter(kappa, row["flops_ratio"], sched["filter"])


_WORKER: dict = {}


def _init_worker(states: dict, args: argparse.Namespace, default: str | None, schedules: dict | None) -> None:
    """One single-threaded process per core (two OpenMP threads on a shared 2-core host stall each other)."""
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # denormal floats slowed CPU training 2x here; results are unaffected
    w = {"args": args, "default": default, "schedules": schedules, "models": {}, "pretrain": {}, "held": {}, "fold": {}, "shapes": {},
         "positions": {}, "prunable": {}, "reach": {}}
    for name, state in states.items():
        pre, held, fold = benchmark_split(INPUT_SIZE[name])
        model = build(name)
        model.load_state_dict(state)
        model.eval()
        w["models"][name], w["pretrain"][name], w["held"][name], w["fold"][name] = model, pre, held, fold
        w["shapes"][name] = weight_shapes(model)
        w["positions"][name] = out_positions(model, held.tensors[0][:1])
        targets = [t for t in find_prunable(model, Pattern(2, 4, BLOCK[name]), (), held.tensors[0][:1]) if t.prunable]
        w["prunable"][name] = [t.weight_name for t in targets]
        w["reach"][name] = max_reachable_sparsity(targets, Pattern(2, 4, BLOCK[name]))
    _WORKER.update(w)


def _run_job(job):
    phase, name, k, seed, classes = job
    start = time.perf_counter()
    s = Scenario(_WORKER, name, k, seed, classes, phase)
    (validation_runs if phase == "val" else test_runs)(s)
    return job, s.rows, time.perf_counter() - start


def cross_fit(scores: dict[str, list[float]]) -> dict:
    """Per fold f the candidate with the best validation accuracy on fold 1 - f (ties: the first in
    ``scores``); ``chosen`` is that candidate when both folds agree, else the best over both folds."""
    names = list(scores)
    by_fold = [max(names, key=lambda c: (scores[c][1 - f], -names.index(c))) for f in (0, 1)]
    overall = max(names, key=lambda c: (sum(scores[c]), -names.index(c)))
    return {"val_fold_accuracy": scores, "by_fold": by_fold, "overall": overall,
            "chosen": by_fold[0] if by_fold[0] == by_fold[1] else overall}


def _fold_means(rows: list[dict]) -> list[float]:
    return [100 * statistics.fmean(r["fold_accuracy"][f] for r in rows) for f in (0, 1)]


def choose_default(val_rows: list[dict]) -> dict:
    """The allocation and schedule of CRISP, chosen together on the CRISP-Taylor validation runs."""
    scores = {}
    for allocation in ALLOCATIONS:
        for schedule in SCHEDULES:
            sel = [r for r in val_rows if r["method"] == f"crisp_taylor_{allocation}" and r.get("schedule", "iterative") == schedule]
            if sel:
                scores[f"{allocation}, {schedule}"] = _fold_means(sel)
    choice = cross_fit(scores)
    choice["allocation"], choice["schedule"] = choice["chosen"].split(", ")
    return choice


def choose_schedules(val_rows: list[dict], crisp_schedule: str) -> dict:
    """Each fine-tuning baseline's schedule, chosen on its own validation runs (CRISP's variants,
    block-only included, take CRISP's)."""
    out = {"crisp": {"chosen": crisp_schedule}}
    for method in ("dense_ft", "unstructured", "filter", "learned"):
        scores = {sch: _fold_means(sel) for sch in SCHEDULES
                  if (sel := [r for r in val_rows if r["method"] == method and r.get("schedule") == sch])}
        out[method] = cross_fit(scores) if scores else {"chosen": "iterative"}
    return out


def run_pool(jobs, states, args, default, schedules, log_prefix, t0, on_progress=None):
    rows = []
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(args.jobs, initializer=_init_worker, initargs=(states, args, default, schedules)) as pool:
        for job, new, took in pool.imap_unordered(_run_job, jobs):
            rows += new
            print(f"{log_prefix} {job[1]} {job[2]} classes seed {job[3]} {job[4]}: {len(new)} runs ({took:.0f}s, "
                  f"total {(time.perf_counter() - t0) / 60:.1f} min)", flush=True)
            if on_progress is not None:
                on_progress(rows)
    return rows


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one scenario per model (2 classes, 1 seed, 90%%) as a smoke test")
    p.add_argument("--models", nargs="+", default=["small_cnn", "residual_cnn"], choices=sorted(INPUT_SIZE))
    p.add_argument("--sizes", type=int, nargs="+", default=[2, 3, 5])
    p.add_argument("--seeds", type=int, default=5, help="test seeds per class count (default 5)")
    p.add_argument("--deep-seeds", type=int, default=None, help="test seeds for residual_cnn (default: --seeds)")
    p.add_argument("--val-seeds", type=int, default=2, help="validation seeds per class count for the allocation choice")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.8, 0.9, 0.95])
    p.add_argument("--val-sparsities", type=float, nargs="+", default=[0.9])
    p.add_argument("--val-sizes", type=int, nargs="+", default=None, help="class counts of the validation runs (default: --sizes)")
    # the budget of crisp.prune's defaults (1 warm-up + DEFAULT_FINETUNE_EPOCHS = 8 shared among the steps);
    # lr chosen on validation class sets (README: Accuracy on digits)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--epochs-per-step", type=int, default=DEFAULT_FINETUNE_EPOCHS // 2)
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate of every weight-training method")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--pretrain-epochs", type=int, default=15)
    p.add_argument("--jobs", type=int, default=2, help="parallel single-threaded worker processes (default 2)")
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--render-only", action="store_true", help="rewrite the .md from the existing .json")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.seeds, args.val_seeds, args.sparsities = [2], 1, 1, [0.9]
    return args


def main(argv=None):
    args = parse_args(argv)
    json_path, md_path = os.path.join(args.out, "accuracy_digits.json"), os.path.join(args.out, "accuracy_digits.md")
    if args.render_only:
        with open(json_path) as fh:
            result = json.load(fh)
        atomic_write_text(md_path, markdown(result), parents=True)
        print(markdown(result))
        return 0
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    t0 = time.perf_counter()
    states, pre_acc = {}, {}
    for name in args.models:
        pre, held, _ = benchmark_split(INPUT_SIZE[name])
        model = pretrain(build(name), pre, epochs=args.pretrain_epochs, seed=0)
        with torch.no_grad():
            pre_acc[name] = float((model(held.tensors[0]).argmax(1) == held.tensors[1]).float().mean())
        states[name] = model.state_dict()
        print(f"pretrained {name}: held-out accuracy on all digits {100 * pre_acc[name]:.2f}%", flush=True)
    val_jobs = [("val", m, k, VAL_SEED0 + s, c) for m in args.models for k, s, c in class_sets(args.val_sizes or args.sizes, range(args.val_seeds))]
    val_rows = run_pool(val_jobs, states, args, None, None, "validation", t0)
    choice = choose_default(val_rows)
    default = choice["allocation"]
    schedule_choice = choose_schedules(val_rows, choice["schedule"])
    schedules = {m: c["chosen"] for m, c in schedule_choice.items()}
    print(f"by validation: allocation {default}, schedules {schedules} ({choice})", flush=True)
    seeds = {m: args.seeds if m == "small_cnn" or args.deep_seeds is None else args.deep_seeds for m in args.models}
    jobs = [("test", m, k, s, c) for m in args.models for k, s, c in class_sets(args.sizes, range(seeds[m]))]

    def write(rows, complete=False):
        rows.sort(key=lambda r: (r["model"], r["k"], r["seed"], r["method"], r["sparsity"] or 0))
        result = _result(args, seeds, pre_acc, choice, default, schedule_choice, val_rows, rows, time.perf_counter() - t0, complete)
        atomic_write_text(json_path, json.dumps(result, indent=2), parents=True)
        atomic_write_text(md_path, markdown(result), parents=True)
        return result

    rows = run_pool(sorted(jobs, key=lambda j: (j[1] != "residual_cnn", -j[2])), states, args, default, schedules, "test", t0, write)
    print(markdown(write(rows, complete=True)))
    return 0


def _result(args, seeds, pre_acc, choice, default, schedule_choice, val_rows, rows, seconds, complete) -> dict:
    return {
        "config": dict(vars(args), seeds_per_model=seeds),
        "machine": f"{platform.machine()} CPU, {args.jobs} single-threaded worker processes on a {os.cpu_count()}-core host "
                   f"shared with other jobs (load average {LOAD_AT_START:.1f} at the start), torch {torch.__version__}",
        "pretrained_heldout_accuracy": pre_acc, "allocation_choice": choice, "default_allocation": default,
        "schedule_choice": schedule_choice,
        "summary": summarize(rows), "targets": check_targets(rows, args.models, args.sizes, args.sparsities),
        "validation_runs": val_rows, "runs": rows, "seconds": seconds, "complete": complete,
    }


if __name__ == "__main__":
    sys.exit(main())
