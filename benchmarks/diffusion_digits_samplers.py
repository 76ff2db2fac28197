"""Diffusion on digits: compare's Fréchet distance of each few-step sampler, on the same models.

    python benchmarks/diffusion_digits_samplers.py [--steps 1500] [--seeds 0,1]
        [--noise-seeds 0,1] [--nfes 10,15,20] [--n 1000] [--threads 1] [--json FILE]
        [--samplers "dpm++ 2M uniform,dpm++ 2M power"] [--no-ddpm]

The digits rows of the quality-vs-NFE table, for choosing DPM-Solver++'s default order and grid
(`genlab.models.diffusion.DEFAULT_GRID`) with the 8 toys' rows (BENCHMARKS.md). Each model seed
trains one `Diffusion` with the small-image recipe for --steps optimisation steps (fixed steps,
so the budget does not depend on the machine's load; 1,500 is about the main job's 20 s on a
quiet core) by `fit_for_budget`, as compare fits it. Every sampler then draws --n samples from
the same noise seeds, put on the 17 grey levels as compare does, and is scored by compare's
Fréchet distance in its cached feature classifier's features against the 360 test digits
(`genlab.evaluation.feature_classifier`). Rows: dpm++ 3M and 2M and unipc 2 on the quadratic
and uniform grids and dpm++ 2M on the power grid, at each NFE (--samplers: a subset); DDPM at
1,000 steps (unless --no-ddpm), the reference of issue 17's "within 10%"; and the floor, 1,000
train digits against the same test digits. The table is the mean over model and noise seeds,
with the per-model means in brackets.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from genlab import metrics
from genlab.data import load_dataset
from genlab.evaluation import feature_classifier
from genlab.models import Diffusion
from genlab.models.base import Budget

SAMPLERS = {  # label -> sample() options besides steps
    "dpm++ 3M quadratic": {"method": "dpm++", "order": 3, "grid": "quadratic"},
    "dpm++ 3M uniform": {"method": "dpm++", "order": 3, "grid": "uniform"},
    "dpm++ 2M quadratic": {"method": "dpm++", "order": 2, "grid": "quadratic"},
    "dpm++ 2M uniform": {"method": "dpm++", "order": 2, "grid": "uniform"},
    "dpm++ 2M power": {"method": "dpm++", "order": 2, "grid": "power"},
    "unipc 2 quadratic": {"method": "unipc", "order": 2, "grid": "quadratic"},
    "unipc 2 uniform": {"method": "unipc", "order": 2, "grid": "uniform"},
}


def frechet(samples: torch.Tensor, classifier, test_features: torch.Tensor, levels: int) -> float:
    """compare's Fréchet distance of image samples put on the data's grey levels."""
    samples = metrics.quantize(samples.detach().cpu().float(), levels)
    feats, _ = classifier.features_and_labels(samples)
    return metrics.frechet_distance(test_features, feats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seeds", default="0,1", help="model seeds")
    p.add_argument("--noise-seeds", default="0,1")
    p.add_argument("--nfes", default="10,15,20")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    p.add_argument("--samplers", default=",".join(SAMPLERS), help="comma-separated labels")
    p.add_argument("--no-ddpm", action="store_true", help="skip the 1,000-step DDPM row")
    args = p.parse_args()
    chosen = [s.strip() for s in args.samplers.split(",")]
    if unknown := [s for s in chosen if s not in SAMPLERS]:
        p.error(f"unknown samplers {unknown}; choose from {list(SAMPLERS)}")
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    noise = [int(s) for s in args.noise_seeds.split(",")]
    nfes = [int(s) for s in args.nfes.split(",")]
    print(f"# diffusion_digits_samplers {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {args.steps} "
          f"steps, model seeds {seeds}, noise seeds {noise}, n {args.n}, "
          f"threads {args.threads}")  # fmt: skip
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    classifier = feature_classifier(train, test)
    test_features, _ = classifier.features_and_labels(test.x.float())
    g = torch.Generator().manual_seed(0)
    floor = frechet(train.x[torch.randperm(len(train), generator=g)[: args.n]].float(),
                    classifier, test_features, train.levels)  # fmt: skip
    print(f"floor (train digits against test): {floor:.2f}")
    scores: dict[str, list[list[float]]] = {}  # row -> per model seed, per noise seed
    start = time.perf_counter()
    for seed in seeds:
        t0 = time.perf_counter()
        model, details = Diffusion.fit_for_budget(train, Budget(steps=args.steps, seed=seed))
        print(f"model seed {seed}: {details['steps']} steps in {time.perf_counter() - t0:.0f} s, "
              f"{details.get('recipe', '-')}")  # fmt: skip
        rows = [(f"{label} @ {nfe}", {**opts, "steps": nfe})
                for nfe in nfes for label, opts in SAMPLERS.items() if label in chosen]  # fmt: skip
        if not args.no_ddpm:
            rows.append(("ddpm 1000", {"method": "ddpm", "steps": 1000}))
        for label, opts in rows:
            with torch.no_grad():
                fd = [frechet(model.sample(args.n, seed=s, progress=False, **opts), classifier,
                              test_features, train.levels) for s in noise]  # fmt: skip
            scores.setdefault(label, []).append(fd)
            print(f"  {label}: {', '.join(f'{v:.2f}' for v in fd)} (NFE {model.nfe_})", flush=True)
    ref = statistics.mean(v for per in scores.get("ddpm 1000", [[math.nan]]) for v in per)
    print(f"\nFréchet distance on digits (floor {floor:.2f}), mean over {len(seeds)} models x "
          f"{len(noise)} noise seeds [per model]; ratio to ddpm 1000 ({ref:.2f})")  # fmt: skip
    print("| sampler | Fréchet | per model | / ddpm 1000 |\n|---|---|---|---|")
    for label, per in scores.items():
        mean = statistics.mean(v for fd in per for v in fd)
        each = ", ".join(f"{statistics.mean(fd):.2f}" for fd in per)
        print(f"| {label} | {mean:.2f} | {each} | {mean / ref:.2f} |")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"floor": floor, "scores": scores}, indent=1))


if __name__ == "__main__":
    main()
