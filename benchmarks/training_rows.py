"""What a model that reproduced its training rows would score on the toy benchmark.

    python benchmarks/training_rows.py [--toys moons,rings] [--seeds 3] [--floor-draws 48]

`iterative_toys.py` fits every family on a toy's 9,500 training rows and scores 4,000 samples
against a held-out reference. This draws 4,000 of those training rows (with replacement, one
draw per seed) instead of model samples and scores them the same way: the mean MMD² of
--seeds draws against the p95 of the mean of as many data draws. A ratio above 1 means that
memorising the training set fails the target: the unbiased MMD² of a sample that repeats its
points carries about (1 - E k(x, x')) / 9,500 of their coincidences.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import iterative_toys as toys

from genlab import metrics
from genlab.data import TOYS, load_dataset

TRAIN_ROWS = 9_500  # 10,000 less the 5% a budgeted fit holds out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--toys", default=",".join(TOYS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--floor-draws", type=int, default=48)
    p.add_argument("--n", type=int, default=4000)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"training rows ({TRAIN_ROWS}) resampled, n = {args.n}, {args.seeds} seeds, 1 thread")
    print("| toy | training rows (mean) | p95 (mean of draws) | / p95 |\n|---|---|---|---|")
    for toy in args.toys.split(","):
        ref, bandwidths = toys.reference(toy, args.n)
        rows = load_dataset(toy, split="train").x[:TRAIN_ROWS]
        values = []
        for seed in range(args.seeds):
            g = torch.Generator().manual_seed(seed)
            pick = torch.randint(0, len(rows), (args.n,), generator=g)
            values.append(metrics.mmd(rows[pick], ref, bandwidths))
        floor = toys.floor_of_means(toys.floor(toy, args.n, args.floor_draws), args.seeds)
        p95 = toys.percentile(floor, 95)
        mean = statistics.mean(values)
        print(f"| {toy} | {mean:.3e} | {p95:.3e} | {mean / p95:.2f} |", flush=True)


if __name__ == "__main__":
    main()
