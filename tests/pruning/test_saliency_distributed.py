"""Saliency and pruning under torch.distributed (gloo, CPU, 2 processes on this machine):
all-reduced saliency gives every rank, and a single process on the same data, the same masks."""

import os
import subprocess
import sys
import textwrap

import torch

COMMON = textwrap.dedent('''
    import torch
    from torch import nn

    def make_model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                             nn.Flatten(), nn.Linear(16 * 16, 4)).eval()

    def make_batches():
        gen = torch.Generator().manual_seed(1)
        return [(torch.randn(8, 4, 4, 4, generator=gen), torch.randint(0, 4, (8,), generator=gen)) for _ in range(6)]

    CLASSES = [0, 1, 3]
''')

WORKER = COMMON + textwrap.dedent('''
    import os, sys
    import torch.distributed as dist
    from crisp.sparsity.pattern import Pattern
    from crisp.pruning.prune import prune
    from crisp.pruning.loop import hybrid_select
    from crisp.pruning.saliency import taylor_saliency

    rank, world, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    dist.init_process_group("gloo", init_method="file://" + os.path.join(out, "store"), rank=rank, world_size=world)
    shard = make_batches()[rank::world]
    sal = taylor_saliency(make_model(), shard, CLASSES)
    masks, _ = hybrid_select(sal, Pattern(2, 4, 8), 0.7)
    pruned, history = prune(make_model(), shard, classes=CLASSES, pattern="2:4", block=8, sparsity=0.7,
                            steps=2, epochs_per_step=1, progress=False)
    torch.save({"saliency": sal, "masks": masks, "prune_masks": history.masks,
                "weights": {k: v.clone() for k, v in pruned.state_dict().items()}}, os.path.join(out, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()
    # Everything is saved and both ranks are past the barrier. Leave without interpreter teardown:
    # torch's gloo threads can still abort a finished process there ("terminate called without an
    # active exception", seen once in CI; pytorch/pytorch#190489), which is not what this test checks.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
''')


def test_two_ranks_agree_with_each_other_and_with_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), str(r), "2", str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(2)]
    outputs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(outputs)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))

    ns: dict = {}
    exec(COMMON, ns)
    from crisp.sparsity.pattern import Pattern
    from crisp.pruning.loop import hybrid_select
    from crisp.pruning.saliency import taylor_saliency

    single = taylor_saliency(ns["make_model"](), ns["make_batches"](), ns["CLASSES"])
    single_masks, _ = hybrid_select(single, Pattern(2, 4, 8), 0.7)
    for name in single:
        assert torch.equal(r0["saliency"][name], r1["saliency"][name])  # all-reduced: bitwise equal
        assert torch.allclose(r0["saliency"][name], single[name], rtol=1e-5, atol=1e-10)
        assert torch.equal(r0["masks"][name], single_masks[name])
        assert torch.equal(r1["masks"][name], single_masks[name])
    # the distributed prune (DDP fine-tuning, all-reduced saliency) ends with the same model on both ranks
    for name in r0["prune_masks"]:
        assert torch.equal(r0["prune_masks"][name], r1["prune_masks"][name])
    for key in r0["weights"]:
        assert torch.allclose(r0["weights"][key].float(), r1["weights"][key].float(), atol=1e-6), key
