"""AdamW's three PyTorch kernels in the one trainer: per-tensor loop, foreach, fused.

    OMP_NUM_THREADS=1 python benchmarks/adamw_kernels.py [--steps 1000] [--rounds 3]

Flow matching on the 8x8 digits with its small-image recipe (MLP hidden 128, batch 128; the
main job's flow), `FlowMatching.fit` for --steps steps, one thread, the optimiser built by
`genlab.train.make_optimizer` with each kernel in turn (`foreach=False`, `foreach=True`,
`fused=True`; the trainer uses foreach: bit for bit the loop, while fused rounds
differently). The three alternate within each round (the machine is noisy, PERF.md);
printed: seconds per run, and each kernel's median ratio of steps/s to the per-tensor loop's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from genlab import train
from genlab.data import load_dataset
from genlab.models import FlowMatching

KERNELS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def optimizer_with(kernel: dict):
    def make(params, config):
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, **kernel)

    return make


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("digits", split="train")
    seconds: dict[str, list[float]] = {k: [] for k in KERNELS}
    built = train.make_optimizer
    try:
        for r in range(args.rounds):
            for name, kernel in KERNELS.items():
                train.make_optimizer = optimizer_with(kernel)
                start = time.perf_counter()
                FlowMatching(max_steps=args.steps, seed=r).fit(data, progress=False)
                seconds[name].append(time.perf_counter() - start)
                print(f"round {r} {name:8s} {seconds[name][-1]:.2f} s", flush=True)
    finally:
        train.make_optimizer = built
    print(f"digits flow, {args.steps} steps per run, {args.threads} thread(s)")
    for name in KERNELS:
        ratios = [a / b for a, b in zip(seconds["loop"], seconds[name], strict=True)]
        print(f"{name:8s} median {statistics.median(seconds[name]):.2f} s, "
              f"steps/s over the loop's: {statistics.median(ratios):.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
