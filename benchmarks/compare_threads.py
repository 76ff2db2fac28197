"""Threads for compare's small networks: training steps per second at 1 and 2 torch threads.

    python benchmarks/compare_threads.py [--seconds 10] [--rounds 2] [--quick]
        [--cases flow-digits,diffusion-digits,flow-moons,diffusion-moons]

What `genlab compare --data digits,moons --budget 20s` trains, each family with its recipe
(`genlab.models.recipes`: flow digits MLP 128 / batch 128, diffusion digits 256 / 128, flow
points 256 / 256, diffusion points 128 / 256), is trained for --seconds of `max_time` in a
fresh process (torch's thread pool cannot be raised again within one, `genlab.cli.common`),
three ways, alternating within each round so that drifts of the machine hit every side:

    1 thread       one process, torch.set_num_threads(1)
    2 threads      one process, torch.set_num_threads(2)
    2 x 1 thread   two processes at once, one thread each (two families in parallel)

and prints the optimisation steps each reached, and the ratios: 1 thread / 2 threads (> 1:
one thread is faster for this net) and the summed steps of 2 x 1 thread / 2 threads (> 1: two
single-thread families side by side beat one two-thread family at a time). Run it on a quiet
machine: a busy core makes any 2-thread job spin-wait (docs: PERF.md, "Threads"), so on a
loaded machine the 1-thread side wins for every net. --quick: 3 s, one round, two cases.
Cost: 3 x --seconds per case and round, plus process start-up (~5 s each).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import time
from datetime import UTC, datetime

CASES = {
    "flow-digits": ("flow", "digits"),
    "diffusion-digits": ("diffusion", "digits"),
    "flow-moons": ("flow", "moons"),
    "diffusion-moons": ("diffusion", "moons"),
}


def train_steps(job: dict) -> int:
    """Steps one family reaches on one data set in job["seconds"] (in a worker process)."""
    import torch

    torch.set_num_threads(job["threads"])
    from genlab.data import load_dataset
    from genlab.models import FAMILIES
    from genlab.models.base import Budget

    family, data = CASES[job["case"]]
    train = load_dataset(data, split="train")
    _, details = FAMILIES[family].fit_for_budget(
        train, Budget(seconds=job["seconds"], seed=0, device="cpu")
    )
    return int(details["steps"])


def run_side(case: str, seconds: float, threads: int, processes: int) -> list[int]:
    """Steps of `processes` simultaneous fits of `case`, each with `threads` threads."""
    ctx = mp.get_context("spawn")
    jobs = [{"case": case, "seconds": seconds, "threads": threads}] * processes
    # the workers' torch must start at `threads`: raising its count after it started lower
    # (OMP_NUM_THREADS=1 inherited) hangs MKL (genlab.cli.common.torch_threads)
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update({k: str(threads) for k in saved})
    try:
        with ctx.Pool(processes) as pool:
            return pool.map(train_steps, jobs)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--threads", type=int, default=1, help="unused: every side sets its own")
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    if args.quick:
        args.seconds, args.rounds, cases = 3.0, 1, cases[:2]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown cases {unknown}: choose from {', '.join(CASES)}")
    print(f"# compare_threads {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {args.seconds:g} s per "
          f"fit, {args.rounds} rounds")  # fmt: skip
    start = time.perf_counter()
    results: dict[str, dict[str, list[float]]] = {}
    for case in cases:
        sides: dict[str, list[float]] = {"1": [], "2": [], "2x1": []}
        for r in range(args.rounds):
            order = [("1", 1, 1), ("2", 2, 1), ("2x1", 1, 2)]
            for label, threads, procs in order if r % 2 == 0 else order[::-1]:
                steps = run_side(case, args.seconds, threads, procs)
                sides[label].append(float(sum(steps)))
                print(json.dumps({"case": case, "round": r, "side": label, "steps": steps}),
                      flush=True)  # fmt: skip
        results[case] = sides
    print("\n| case | 1 thread | 2 threads | 2 x 1 thread (sum) | 1 / 2 threads | "
          "2 x 1 / 2 threads |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for case, sides in results.items():
        one, two, par = (statistics.mean(sides[k]) for k in ("1", "2", "2x1"))
        print(f"| {case} | {one:.0f} | {two:.0f} | {par:.0f} | {one / two:.2f} | "
              f"{par / two:.2f} |")  # fmt: skip
    print(f"\ntotal {time.perf_counter() - start:.0f} s (steps in {args.seconds:g} s per fit)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
