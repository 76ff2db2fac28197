"""One- and two-step flows (MeanFlow, reflow) against the standard flow's 100-NFE sampler.

    python benchmarks/onestep.py --seconds 120 [--toys moons,rings] [--reference /tmp/iter_models]
        [--objectives meanflow,reflow] [--digits-seconds 20] [--no-digits] [--steps N]
        [--meanflow-options '{"hidden": 256}'] [--reflow-options '{}'] [--json out.json]
        [--threads 1] [--quick]

Issue 17's target (item 3): the 1-NFE MMD² of a one-step objective within 1.5x of the standard
flow's 100-NFE sampler on every toy, and a 1-2 NFE digit Fréchet distance within 1.5x of 50 NFE.

Each model is fitted exactly as `genlab compare` fits it (`fit_for_budget`: max_time =
--seconds, or max_steps = --steps; 5% of the 10,000 training points held out, the last
EMA weights; the flow's recipe, plus `--<objective>-options`), on one thread. The
standard flow is loaded from `--reference DIR` (DIR/{toy}_flow_{seconds}s, saved by
`benchmarks/iterative_toys.py --save DIR`) when that folder exists, else trained here with the
same budget. Reflow spends half its budget on its standard flow, draws its 10,000 pairs (heun,
10 steps; their seconds count in max_time) and retrains on them (`genlab.models.flow`).

Scores, per toy, against ONE reference (the toy's test split, n = --n = 4,000 points, seed 3000,
Gaussian kernels at (0.25, 0.5, 1, 2, 4) x its median pairwise distance: the same reference and
kernels as `benchmarks/iterative_toys.py`), every score the mean over noise seeds 0 ..
--seeds - 1 (default 3; --jobs toys at a time, one process each):
- standard: heun 50 steps (100 NFE, the family's default), euler 1 and 2 NFE;
- meanflow / reflow: their own 1-step and 2-step samplers (1 and 2 NFE);
- floor: the 95th percentile of the mean MMD² of --seeds data draws (of --floor-draws, 48,
  further draws, `iterative_toys.floor_of_means`) against the reference: a model below it
  is indistinguishable from data at this n;
- ratio = MMD²(1 NFE) / MMD²(standard 100 NFE); "ok" when <= 1.5 or when the 1-NFE MMD² is
  below the floor (the ratio of two values within noise of 0 says nothing).
Digits (the fixed 1,437 / 360 split, --digits-seconds): 1,000 samples put on the 17 grey
levels, Fréchet distance in the features of compare's cached classifier; standard at heun 25
steps (50 NFE), the one-step objectives at 1 and 2 NFE; ratio against the 50-NFE value.

MeanFlow on points takes `genlab.models.flow.MEANFLOW_POINTS` (time features of t * 1, 75% of
pairs with r < t); --meanflow-options '{"time_embed_scale": 1000, "meanflow_ratio": 0.25}' gives
the earlier defaults (moons 1-NFE 0.15 at 120 s). The printed rows give each model's steps.

Cost: per toy (1 + len(objectives)) x --seconds of training (standard: 0 with --reference), plus
~45 s of sampling and scoring at 3 seeds; 8 toys at 120 s, reflow only, no --reference,
--jobs 2: ~27 min on an idle 2-core machine; digits at 20 s: ~2 min (the classifier cached).
--quick: moons at 300 steps, digits at 100 steps, 2,000 points (< 1 min).

Measured (one thread, a loaded 2-core machine), digits at 20 s: standard 50 NFE 33.1,
standard euler 1 NFE 85.8; meanflow 1 NFE 52.6, 2 NFE 42.6 (ratio 1.29); reflow 1 NFE 60.4,
2 NFE 49.4 (ratio 1.49). 2026-12-02, idle, means of 3 seeds, reflow with its noise-end rows
(`reflow_end_share` 0.5): standard 50 NFE 20.06; reflow 1 / 2 NFE 26.83 / 25.30 (ratio 1.26).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from iterative_toys import floor_of_means

import genlab
from genlab import metrics
from genlab.data import TOYS, load_dataset
from genlab.evaluation import feature_classifier
from genlab.models import FlowMatching
from genlab.models.base import Budget

SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)
REFERENCE_SEED, FLOOR_SEED, NOISE_SEED = 3000, 4000, 0
OBJECTIVES = ("meanflow", "reflow")
TARGET = 1.5


def reference(toy: str, n: int) -> tuple[torch.Tensor, list[float]]:
    """The reference draw (n, 2) and its kernel widths (as iterative_toys.py)."""
    ref = load_dataset(toy, split="test", n=n, seed=REFERENCE_SEED).x
    median = metrics.median_distance(ref, ref)
    return ref, [s * median for s in SCALES]


def floor_p95(
    toy: str, n: int, draws: int, ref: torch.Tensor, widths: list[float], seeds: int = 1
) -> float:
    """The p95 of the mean MMD² of `seeds` data draws (`iterative_toys.floor_of_means` over
    `draws` draws): the floor of a score averaged over that many noise seeds."""
    values = [
        metrics.mmd(load_dataset(toy, split="test", n=n, seed=FLOOR_SEED + i).x, ref, widths)
        for i in range(draws)
    ]
    means = sorted(floor_of_means(values, min(seeds, draws)))
    return statistics.quantiles(means, n=20, method="inclusive")[-1] if len(means) > 1 else means[0]


def fit(data, budget: dict, options: dict) -> tuple[FlowMatching, float]:
    start = time.perf_counter()
    model, _ = FlowMatching.fit_for_budget(
        data, Budget(**budget, seed=0, device="cpu", options=options)
    )
    return model, time.perf_counter() - start


def standard_flow(toy: str, data, args, budget: dict) -> tuple[FlowMatching, float, str]:
    if args.reference and args.seconds is not None:
        folder = Path(args.reference) / f"{toy}_flow_{args.seconds:g}s"
        if folder.is_dir():
            return genlab.load(folder), 0.0, f"loaded {folder}"
    model, seconds = fit(data, budget, json.loads(args.standard_options))
    return model, seconds, "trained"


def score_toy(toy: str, args, budget: dict) -> dict:
    train = load_dataset(toy, split="train", n=args.n_train)
    ref, widths = reference(toy, args.n)
    torch.set_num_threads(args.threads)
    floor = floor_p95(toy, args.n, args.floor_draws, ref, widths, args.seeds)
    row = {"toy": toy, "floor_p95": floor}

    def mmd(model, **kw) -> tuple[float, int]:
        """The mean MMD² over noise seeds NOISE_SEED .. + args.seeds - 1, and the NFE."""
        values = [
            metrics.mmd(model.sample(args.n, seed=NOISE_SEED + k, **kw).detach().float(), ref,
                        widths)
            for k in range(args.seeds)
        ]  # fmt: skip
        return statistics.mean(values), model.nfe_

    flow, seconds, how = standard_flow(toy, train, args, budget)
    row["standard"] = {"how": how, "train_seconds": seconds,
                       "100": mmd(flow, method="heun", steps=50),
                       "1": mmd(flow, method="euler", steps=1),
                       "2": mmd(flow, method="euler", steps=2)}  # fmt: skip
    for objective in args.objectives:
        options = {"objective": objective, **json.loads(getattr(args, f"{objective}_options"))}
        model, seconds = fit(train, budget, options)
        row[objective] = {"train_seconds": seconds, "steps": model.train_result_.steps,
                          "1": mmd(model, steps=1), "2": mmd(model, steps=2)}  # fmt: skip
        if objective == "reflow":
            row[objective]["reflow"] = model.reflow_
    return row


def score_toy_job(job: tuple) -> dict:
    return score_toy(*job)


def score_digits(args, budget: dict) -> dict:
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    classifier = feature_classifier(train, test, seed=0, device="cpu")
    test_features, _ = classifier.features_and_labels(test.x.float())

    def frechet(model, **kw) -> tuple[float, int]:
        """The mean Fréchet distance over the noise seeds, and the NFE."""
        values = []
        for k in range(args.seeds):
            s = model.sample(1000, seed=NOISE_SEED + k, **kw).float()
            feats, _ = classifier.features_and_labels(metrics.quantize(s, train.levels))
            values.append(metrics.frechet_distance(test_features, feats))
        return statistics.mean(values), model.nfe_

    row = {"toy": "digits"}
    flow, seconds = fit(train, budget, json.loads(args.standard_options))
    row["standard"] = {"train_seconds": seconds, "50": frechet(flow, method="heun", steps=25),
                       "1": frechet(flow, method="euler", steps=1),
                       "2": frechet(flow, method="euler", steps=2)}  # fmt: skip
    for objective in args.objectives:
        options = {"objective": objective, **json.loads(getattr(args, f"{objective}_options"))}
        model, seconds = fit(train, budget, options)
        row[objective] = {"train_seconds": seconds, "steps": model.train_result_.steps,
                          "1": frechet(model, steps=1), "2": frechet(model, steps=2)}  # fmt: skip
    return row


def print_toy(row: dict, objectives: list[str]) -> None:
    base = row["standard"]["100"][0]
    p95 = row["floor_p95"]
    cells = [f"{row['toy']:<14} std100 {base:9.2e}  std1 {row['standard']['1'][0]:9.2e}"]
    for objective in objectives:
        one, two = row[objective]["1"][0], row[objective]["2"][0]
        ok = one <= TARGET * base or one <= p95
        ratio = one / base if base > 0 else float("inf")
        cells.append(f"{objective} 1: {one:9.2e} 2: {two:9.2e} ratio {ratio:6.2f} "
                     f"{'ok' if ok else 'NO'} ({row[objective]['steps']} steps)")  # fmt: skip
    print(" | ".join(cells) + f" | floor p95 {p95:.2e}", flush=True)


def print_digits(row: dict, objectives: list[str]) -> None:
    base = row["standard"]["50"][0]
    cells = [f"{'digits':<14} std50 {base:7.2f}  std1 {row['standard']['1'][0]:7.2f}"]
    for objective in objectives:
        one, two = row[objective]["1"][0], row[objective]["2"][0]
        ok = min(one, two) <= TARGET * base
        cells.append(f"{objective} 1: {one:7.2f} 2: {two:7.2f} ratio {min(one, two) / base:5.2f} "
                     f"{'ok' if ok else 'NO'} ({row[objective]['steps']} steps)")  # fmt: skip
    print(" | ".join(cells), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--steps", type=int, default=None, help="max_steps instead of --seconds")
    p.add_argument("--toys", default=",".join(TOYS))
    p.add_argument("--objectives", default=",".join(OBJECTIVES))
    p.add_argument("--reference", default=None, help="DIR of {toy}_flow_{seconds}s folders")
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--n-train", type=int, default=10_000)
    p.add_argument("--floor-draws", type=int, default=48)
    p.add_argument("--seeds", type=int, default=3, help="noise seeds a score is averaged over")
    p.add_argument("--jobs", type=int, default=1, help="toys scored at a time (processes)")
    p.add_argument("--digits-seconds", type=float, default=20.0)
    p.add_argument("--digits-steps", type=int, default=None)
    p.add_argument("--no-digits", action="store_true")
    p.add_argument("--standard-options", default="{}")
    p.add_argument("--meanflow-options", default="{}")
    p.add_argument("--reflow-options", default="{}")
    p.add_argument("--json", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.objectives = [o for o in args.objectives.split(",") if o]
    toys = [t for t in args.toys.split(",") if t]
    if args.quick:
        toys, args.steps, args.digits_steps = ["moons"], 300, 100
        args.n, args.n_train, args.floor_draws = 2000, 2000, 4
    budget = {"steps": args.steps} if args.steps else {"seconds": args.seconds}
    if args.steps:
        args.seconds = None
    digits_budget = (
        {"steps": args.digits_steps} if args.digits_steps else {"seconds": args.digits_seconds}
    )
    print(f"# onestep {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, budget {budget}, "
          f"threads {args.threads}, objectives {args.objectives}", flush=True)  # fmt: skip
    rows = []
    jobs = [(toy, args, budget) for toy in toys]
    if args.jobs == 1:
        scored = map(score_toy_job, jobs)
    else:
        pool = multiprocessing.get_context("spawn").Pool(args.jobs)
        scored = pool.imap(score_toy_job, jobs)
    for row in scored:
        rows.append(row)
        print_toy(row, args.objectives)
    if args.jobs != 1:
        pool.close()
        pool.join()
    if not args.no_digits:
        rows.append(score_digits(args, digits_budget))
        print_digits(rows[-1], args.objectives)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
