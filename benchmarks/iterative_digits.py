"""Digits at the main job's budget: flow, diffusion and the GMM by compare's Fréchet distance.

    python benchmarks/iterative_digits.py [--seconds 20] [--out runs/iter-digits]
        [--families gmm,flow,diffusion] [--flow-options '{"hidden": 512}']
        [--diffusion-options '{}'] [--seeds 0] [--threads 1] [--quick]
        [--steps 5000] [--families diffusion,diffusion:rect
         --variant-options '{"diffusion:rect": {"schedule": "rectified"}}']

Issue 17's target: at 20 s (what `genlab compare --data digits --budget 20s` gives each
family), flow and diffusion both have a lower Fréchet distance than the GMM, and their samples
look like digits. This runs `genlab.compare.compare` itself on digits (the fixed 1,437 / 360
split), so every number is compare's: each family fitted by its `fit_for_budget` (its recipe
for small images, `genlab.models.recipes`, plus `--<family>-options`), 1,000 samples put on
the 17 grey levels, the Fréchet distance in the features of compare's cached classifier
("frechet_classifier", not Inception's), precision/recall, class entropy, and the
quality-vs-NFE curve. The sample grids are compare's PNGs:
OUT/seed{s}/figures/digits/{family}-samples.png (and data-test.png, the real digits).

With --seeds 0,1,2 each seed is a separate compare (seeds of the models and samplers); the
table gives each seed and the mean. Cost: about --seconds per family per seed for training,
plus ~10 s of measuring per family, plus the classifier once (cached in $GENLAB_CACHE).
--quick: 5 s, one seed. `--steps N`: every neural family trains N optimisation steps instead of
--seconds (the screen at equal steps: N = the steps a quiet core reaches in 20 s); a label
"family:name" runs the family again with its --variant-options (compare's variant labels).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from genlab.compare import Settings, compare

FAMILIES = ("gmm", "flow", "diffusion")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--out", default="runs/iter-digits")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--seeds", default="0")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--steps", type=int, default=None, help="train N steps instead of --seconds")
    p.add_argument(
        "--nll-points",
        type=int,
        default=None,
        help="test points of the NLL (default: all 360; fewer for a quick screen)",
    )
    p.add_argument(
        "--variant-options",
        default="{}",
        help='JSON {"family:name": {options}} for variant labels in --families',
    )
    for family in ("gmm", "flow", "diffusion", "vae", "autoregressive"):
        p.add_argument(f"--{family}-options", default="{}", help="JSON constructor options")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.quick:
        args.seconds, seeds = 5.0, seeds[:1]
    families = [f for f in args.families.split(",") if f]
    variants = json.loads(args.variant_options)
    options = {f: {**json.loads(getattr(args, f"{f.split(':')[0]}_options")),
                   **variants.get(f, {})} for f in families}  # fmt: skip
    print(f"# iterative_digits {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {args.seconds:g} s per "
          f"family, seeds {seeds}, threads {args.threads}, options {options}")  # fmt: skip
    table: dict[str, list[dict]] = {f: [] for f in families}
    start = time.perf_counter()
    for seed in seeds:
        out = Path(args.out) / f"seed{seed}"
        budget = {"budget_steps": args.steps} if args.steps else {"budget_seconds": args.seconds}
        records = compare("digits", families, **budget, out=out, seed=seed, options=options,
                          settings=Settings(max_nll_points=args.nll_points),
                          progress=False)  # fmt: skip
        floor = next(r for r in records if r["family"] == "data")
        print(f"seed {seed}: data floor Fréchet {floor['frechet_classifier']:.2f}; grids in "
              f"{out / 'figures' / 'digits'}")  # fmt: skip
        for r in records:
            if r["family"] in table:
                table[r["family"]].append(r)
    print("\n| family | Fréchet (per seed) | mean | precision | recall | steps | recipe |")
    print("|---|---|---|---|---|---|---|")
    for family, rows in table.items():
        fd = [r["frechet_classifier"] for r in rows if r["frechet_classifier"] is not None]
        each = ", ".join(f"{v:.1f}" for v in fd) or "-"
        mean = f"{statistics.mean(fd):.1f}" if fd else "-"
        last = rows[-1]
        details = last.get("details") or {}
        size = details.get("n_components") if family.startswith("gmm") else last.get("train_steps")
        prec = "-" if last["precision"] is None else f"{last['precision']:.2f}"
        rec = "-" if last["recall"] is None else f"{last['recall']:.2f}"
        print(
            f"| {family} | {each} | {mean} | {prec} | {rec} | {size} | "
            f"{details.get('recipe', '-')} |"
        )
        if last["status"] != "ok":
            print(f"  {family}: {last['status']}: {last['error']}")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
