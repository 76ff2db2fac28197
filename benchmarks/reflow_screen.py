"""Reflow variants on toys at a budget: 1- and 2-NFE MMD² and the student's 100-NFE Heun.

    python benchmarks/reflow_screen.py TOYS VARIANTS SECONDS
    python benchmarks/reflow_screen.py moons,circles \
        '{"base": {"reflow_end_share": 0}, "end50": {}}' 120

Each (toy, variant) is fitted as `benchmarks/onestep.py` fits reflow (compare's
`fit_for_budget`, 10,000 training rows, one thread, two fits at a time) with the variant's
options, and scored against onestep's reference (n = 4,000, the same kernels), the mean over
noise seeds 0, 1, 2. One JSON line per fit.
"""

from __future__ import annotations

import json
import statistics
import sys
from multiprocessing import get_context

import onestep
import torch

from genlab import metrics
from genlab.data import load_dataset

SEEDS = 3


def run(job: tuple[str, str, dict, float]) -> dict:
    toy, name, options, seconds = job
    torch.set_num_threads(1)
    train = load_dataset(toy, split="train", n=10_000)
    ref, widths = onestep.reference(toy, 4000)
    model, fit_seconds = onestep.fit(
        train, {"seconds": seconds}, {"objective": "reflow", **options}
    )

    def mean_mmd(**kw) -> float:
        return statistics.mean(
            metrics.mmd(model.sample(4000, seed=s, **kw).detach().float(), ref, widths)
            for s in range(SEEDS)
        )

    row = {"toy": toy, "name": name, "seconds": fit_seconds, "reflow": model.reflow_,
           "nfe1": mean_mmd(steps=1), "nfe2": mean_mmd(steps=2),
           "student100": mean_mmd(method="heun", steps=50)}  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    toys, variants, seconds = sys.argv[1].split(","), json.loads(sys.argv[2]), float(sys.argv[3])
    jobs = [(t, n, o, seconds) for t in toys for n, o in variants.items()]
    with get_context("spawn").Pool(2) as pool:
        pool.map(run, jobs, chunksize=1)
