"""More seeds for one toy of a `diffusion_quality_vs_steps.py --save DIR` run: the target
samplers' MMD² against the same reference, to resolve differences the run's 4 seeds cannot.

    python benchmarks/diffusion_seeds_check.py --models DIR --data 8gaussians --seeds 16

Loads DIR/NAME (saved by the main script), draws --n samples per seed with ddpm 1000, dpm++ 15,
ddim 50, dpm++ 50 (the converged ODE) and ddim 100, and prints per sampler the mean and sd of
MMD² over seeds 0 .. --seeds - 1, the floor (--floor-draws data-vs-data draws) and the verdict
of the main script (excess over the floor within 10% of DDPM 1000's, Welch standard error).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusion_quality_vs_steps import difference_se, toy_floors, toy_reference, verdict

import genlab
from genlab import metrics

SAMPLERS = {
    "ddpm 1000": {"method": "ddpm", "steps": 1000},
    "dpm++ 15": {"method": "dpm++", "steps": 15},
    "ddim 50": {"method": "ddim", "steps": 50},
    "dpm++ 50": {"method": "dpm++", "steps": 50},
    "ddim 100": {"method": "ddim", "steps": 100},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", required=True, help="the --save folder of the main script")
    parser.add_argument("--data", default="8gaussians")
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--floor-draws", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = genlab.load(f"{args.models}/{args.data}")
    reference, bandwidths = toy_reference(args.data, args.n)
    floors = toy_floors(args.data, args.n, args.floor_draws)
    floor = statistics.fmean(floors)
    print(f"{args.data}: floor {floor:.6f} ± {statistics.stdev(floors):.6f} "
          f"({args.floor_draws} draws), n = {args.n}, seeds 0-{args.seeds - 1}")  # fmt: skip
    row = {"per_seed": {}}
    for label, options in SAMPLERS.items():
        start = time.perf_counter()
        row["per_seed"][label] = [
            metrics.mmd(model.sample(args.n, seed=s, **options).cpu(), reference, bandwidths)
            for s in range(args.seeds)
        ]
        values = row["per_seed"][label]
        print(f"| {label} | {statistics.fmean(values):.6f} | {statistics.stdev(values):.6f} | "
              f"{time.perf_counter() - start:.0f} s |", flush=True)  # fmt: skip
    ref = statistics.fmean(row["per_seed"]["ddpm 1000"])
    for label in ("dpm++ 15", "ddim 50"):
        score = statistics.fmean(row["per_seed"][label])
        se = difference_se(row, label, args.seeds)
        print(f"{label}: {verdict(score, ref, floor, se, ratio_only=False)}")


if __name__ == "__main__":
    main()
