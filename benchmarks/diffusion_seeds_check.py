"""Many noise seeds on one saved diffusion model: is DPM-Solver++ at 15 NFE within 10% of
DDPM at 1,000 steps, once the seed-to-seed noise is small enough to tell?

    python benchmarks/diffusion_seeds_check.py --model DIR/circles_diffusion_120s --toy circles
        [--seeds 24] [--floor-draws 120] [--n 4000] [--threads 1] [--json FILE] [--quick]
        [--extra '{"dpm++ 15 logsnr": {"method": "dpm++", "steps": 15, "grid": "logsnr"}}']
        [--skip "ddpm 1000,heun 25 churn"]

DIR is a `benchmarks/iterative_toys.py --save DIR` folder; the reference draw, kernel widths
and floor draws are that script's (`reference`, `floor`), so the figures are on its scale.
Each sampler of SAMPLERS draws --n points from noise seeds 0 .. --seeds - 1. Printed per
sampler: the mean MMD² over the k = --seeds draws with its standard error (sd / sqrt k), its
excess over the floor's mean (the MMD² that data draws score against the same reference: the
reference's own offset, which every sampler shares), and whether the k-seed mean is below the
p95 of the mean of k data draws (`k_mean_p95`: means of k floor draws drawn with replacement,
the bootstrap distribution of a k-draw mean). Then dpm++ 15 against ddpm 1000:
- "ok (below the floor)": dpm++ 15's k-seed mean is below that p95 (indistinguishable from
  data at k draws, as the benchmark's verdict asks);
- "ok (within 10%)": its excess is at most 1.1 x ddpm 1000's;
- "NO": neither, and the difference of the means exceeds 10% of ddpm's excess by more than
  two Welch standard errors; "unresolved" otherwise (more seeds needed).
--extra adds samplers (label -> `sample` options) and --skip drops some (a screen of solver
settings needs neither ddpm nor the SDEs); the verdict needs ddpm 1000 and dpm++ 15, the paired
table dpm++ 50. Then the deterministic samplers (extra ones included) paired to dpm++ 50
(`PAIRED_TO`): their solver cost, with a standard error ~20 x smaller than the means' because
the noise seed is shared.
Why: with 3 seeds one outlier draw decides circles' verdict (BENCHMARKS.md, "Diffusion's
points recipe"); a verdict worth the name needs the standard error beside the difference.

Cost (one thread, 2026-12-04's machine, 4,000 points of the points recipe's 128-wide MLP):
about 1.4 s a floor draw and, a seed, ~2 s for dpm++ 15, ~5 s for heun 25 and ~16 s for
ddpm 1,000 (24 seeds and 120 floor draws: ~15 min). --quick: 3 seeds, 8 floor draws,
n = 1,000, ddpm at 100 steps (a smoke run, no verdict worth reading).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from iterative_toys import CHURN, floor, percentile, reference

import genlab
from genlab import metrics

SAMPLERS = {
    "ddpm 1000": {"method": "ddpm", "steps": 1000},
    "dpm++ 15": {"method": "dpm++", "steps": 15},
    "dpm++ 50": {"method": "dpm++", "steps": 50},
    "dpm++ 15 quadratic": {"method": "dpm++", "steps": 15, "grid": "quadratic"},
    "unipc 15": {"method": "unipc", "steps": 15},  # order 3 on the quadratic grid
    "dpm++ 15 sde": {"method": "dpm++", "steps": 15, "eta": 1.0},
    "heun 25": {"method": "heun", "steps": 25},
    "heun 25 churn": CHURN,
}
PAIRED_TO = "dpm++ 50"
"""The deterministic samplers' paired differences are taken to this one (about the converged
ODE: heun 25 is within 3e-6 of it on circles): the same noise seed starts both, so the
difference is the solver's own cost, free of the draw-to-draw noise that the means carry."""

BOOTSTRAP = 20_000


def k_mean_p95(floors: list[float], k: int, seed: int = 0) -> float:
    """p95 of the mean of k data draws: the bootstrap (k floor draws with replacement)."""
    rng = random.Random(seed)
    return percentile([statistics.fmean(rng.choices(floors, k=k)) for _ in range(BOOTSTRAP)], 95)


def welch_se(a: list[float], b: list[float]) -> float:
    """Standard error of mean(a) - mean(b) for independent draws."""
    return (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5


def is_deterministic(kwargs: dict) -> bool:
    """Whether the sampler's draw is a function of its starting noise alone."""
    return (
        kwargs.get("method") not in ("ddpm", None)
        and not kwargs.get("eta")
        and not kwargs.get("churn")
    )


def chosen_samplers(extra: str | None, skip: str | None) -> dict[str, dict]:
    """SAMPLERS with --extra's added and --skip's removed."""
    samplers = dict(SAMPLERS)
    added = json.loads(extra) if extra else {}
    if not isinstance(added, dict) or not all(isinstance(v, dict) for v in added.values()):
        raise SystemExit('--extra must be a JSON object {"label": {sample options}}')
    samplers.update(added)
    for label in skip.split(",") if skip else []:
        if label.strip() not in samplers:
            raise SystemExit(
                f"--skip: no sampler {label.strip()!r}; the samplers: {list(samplers)}"
            )
        del samplers[label.strip()]
    return samplers


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """(mean, standard error) of a_i - b_i over paired draws."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    return statistics.fmean(d), statistics.stdev(d) / len(d) ** 0.5


def dpm_verdict(dpm: list[float], ddpm: list[float], floor_mean: float, p95: float) -> str:
    """dpm++ 15 against ddpm 1000 (module docstring)."""
    mean_dpm, mean_ddpm = statistics.fmean(dpm), statistics.fmean(ddpm)
    excess_dpm, excess_ddpm = mean_dpm - floor_mean, mean_ddpm - floor_mean
    diff, se = mean_dpm - mean_ddpm, welch_se(dpm, ddpm)
    ratio = (
        f"excess ratio {excess_dpm / excess_ddpm:.2f}" if excess_ddpm > 0 else "ddpm excess <= 0"
    )
    detail = f"difference {diff:.2e} ± {se:.2e}, {ratio}"
    if mean_dpm < p95:
        return f"ok (below the floor); {detail}"
    if excess_ddpm > 0 and excess_dpm <= 1.1 * excess_ddpm:
        return f"ok (within 10%); {detail}"
    if diff - 0.1 * max(excess_ddpm, 0.0) > 2 * se:
        return f"NO; {detail}"
    return f"unresolved (more seeds); {detail}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a saved diffusion folder")
    p.add_argument("--toy", required=True)
    p.add_argument("--seeds", type=int, default=24)
    p.add_argument("--floor-draws", type=int, default=120)
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    p.add_argument("--extra", default=None, help="JSON {label: sample options} to add")
    p.add_argument("--skip", default=None, help="comma-separated sampler labels to leave out")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    samplers = chosen_samplers(args.extra, args.skip)
    if args.quick:
        args.seeds, args.floor_draws, args.n = 3, 8, 1000
        if "ddpm 1000" in samplers:
            samplers["ddpm 1000"] = {"method": "ddpm", "steps": 100}
    print(f"# diffusion_seeds_check {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {args.model}, "
          f"{args.toy}, n = {args.n}, seeds 0-{args.seeds - 1}, {args.floor_draws} floor draws, "
          f"threads {args.threads}", flush=True)  # fmt: skip
    model = genlab.load(args.model)
    ref, bandwidths = reference(args.toy, args.n)
    start = time.perf_counter()
    floors = floor(args.toy, args.n, args.floor_draws)
    floor_mean, p95 = statistics.fmean(floors), k_mean_p95(floors, args.seeds)
    print(f"floor: mean {floor_mean:.2e}, sd {statistics.stdev(floors):.2e}, single-draw p95 "
          f"{percentile(floors, 95):.2e}, p95 of the mean of {args.seeds} draws {p95:.2e} "
          f"({time.perf_counter() - start:.0f} s)\n")  # fmt: skip
    print(f"| sampler | NFE | mean of {args.seeds} | SE | excess over the floor mean | "
          f"below the {args.seeds}-draw p95 | seconds |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    per_seed = {}
    for label, kwargs in samplers.items():
        start = time.perf_counter()
        values = [metrics.mmd(model.sample(args.n, seed=s, **kwargs).detach().float().cpu(),
                              ref, bandwidths) for s in range(args.seeds)]  # fmt: skip
        per_seed[label] = values
        mean = statistics.fmean(values)
        print(f"| {label} | {model.nfe_} | {mean:.2e} | "
              f"{statistics.stdev(values) / len(values) ** 0.5:.2e} | {mean - floor_mean:.2e} | "
              f"{'yes' if mean < p95 else 'NO'} | {time.perf_counter() - start:.0f} |",
              flush=True)  # fmt: skip
    if PAIRED_TO in per_seed:
        print(f"\nPaired to {PAIRED_TO} (the same noise seeds; mean ± SE of the difference):")
        for label, kwargs in samplers.items():
            if label != PAIRED_TO and is_deterministic(kwargs):
                mean, se = paired(per_seed[label], per_seed[PAIRED_TO])
                print(f"  {label} - {PAIRED_TO}: {mean:.2e} ± {se:.2e}")
    verdict = None
    if "dpm++ 15" in per_seed and "ddpm 1000" in per_seed:
        verdict = dpm_verdict(per_seed["dpm++ 15"], per_seed["ddpm 1000"], floor_mean, p95)
        print(f"\ndpm++ 15 against ddpm 1000: {verdict}")
    if args.json:
        record = {"model": args.model, "toy": args.toy, "samplers": samplers, "floors": floors,
                  "per_seed": per_seed, "verdict": verdict}  # fmt: skip
        Path(args.json).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
