"""Penguins through `genlab compare`: every family that applies, on a real mixed-type table.

    OMP_NUM_THREADS=1 python benchmarks/compare_tables.py --budget 3000steps --seeds 0,1,2
    OMP_NUM_THREADS=1 python benchmarks/compare_tables.py --budget 60s --out runs/tables
    python benchmarks/compare_tables.py --quick          # a few training steps: proves it runs

Data: the penguins table of the `palmerpenguins` package (a dev/benchmark dependency: 344 rows;
species, island and sex are categories, sex with 11 missing cells; four measurements, two
missing each; year an integer 2007-2009). The rows are ordered by species, so they are
shuffled (--seeds) before the split: the first 70% train, the rest test (--test-fraction;
a test row missing a cell of a column that is complete in train moves to train, since the
transform learns its missing-cell indicators from the train rows).
The `genlab.data.tables.TableTransform` is fitted on the train rows and encodes both splits.

Each family gets the same budget through `genlab.compare.compare` (families that cannot model
the encoded rows are reported "not applicable"), and each family's samples (as many as the
train rows, as the floor's) are scored by `genlab.table_metrics` against the real test rows:
column fidelity (mean KS of numbers, mean total variation of categories, column score = 1 −
their mean), dependence (mean |difference| of the association matrices), ML efficacy
(a random forest predicting --target, trained on synthetic rows vs on real train rows,
macro F1 on the test rows) and the DCR privacy test (median distance to the closest train
record over the holdout's; share of rows closer to train than to test, against n_train /
(n_train + n_test)). Also the NLL in bits/dim of the encoded rows and the costs.

The "data" row is real train rows scored the same way: the floor of fidelity and ML efficacy
(and the worst case of privacy: they are the train rows). The table printed last gives each
family's metrics side by side, as the mean (± sd) over --seeds (each seed: its own shuffle,
split, transform and fits), fidelity and dependence also as ratios to the floor of the seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from genlab.compare import Settings, compare, known_family, parse_budget
from genlab.data.tables import TableTransform, table_dataset
from genlab.models import FAMILIES  # noqa: F401  (imports every family: registers them)
from genlab.report import markdown_table

FAMILY_ORDER = ("gmm", "bgmm", "vae", "flow", "diffusion", "autoregressive", "masked_diffusion")
"""The families tried (those registered; the others are reported not applicable)."""

COLUMNS = (
    ("column_score", "column score"),
    ("ks_mean", "KS"),
    ("tv_mean", "TV"),
    ("association_difference", "assoc. diff"),
    ("ml_efficacy", "ML efficacy"),
    ("dcr_ratio", "DCR ratio"),
    ("share_closer_to_train", "closer to train"),
    ("bits_per_dim", "bits/dim"),
    ("train_steps", "steps"),
    ("train_seconds", "train s"),
)
RATIOS = ("ks_mean", "tv_mean", "association_difference")
"""Printed as ratios to the floor row (1: as close to the test rows as real train rows are)."""


def penguins(seed: int, test_fraction: float):
    """(train frame, test frame) of the shuffled penguins table."""
    from palmerpenguins import load_penguins

    frame = load_penguins()
    order = np.random.default_rng(seed).permutation(len(frame))
    frame = frame.iloc[order].reset_index(drop=True)
    cut = round(len(frame) * (1 - test_fraction))
    train, test = frame.iloc[:cut], frame.iloc[cut:]
    # a test row missing a cell of a column complete in train cannot be encoded (the
    # transform learns missing-cell indicators from train): such rows move to train
    complete = train.columns[train.notna().all().to_numpy()]
    move = test[complete].isna().any(axis=1)
    train, test = pd.concat([train, test[move]]), test[~move]
    return train.reset_index(drop=True), test.reset_index(drop=True)


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def run_seed(seed: int, args: argparse.Namespace, families: list[str]) -> list[dict]:
    """compare on the split of `seed` (shuffle, transform, models and samplers all seeded)."""
    budget = parse_budget("20steps" if args.quick else args.budget)
    train_frame, test_frame = penguins(seed, args.test_fraction)
    transform = TableTransform(seed=seed).fit(train_frame, "penguins (train)")
    train = table_dataset(train_frame, transform, name="penguins", seed=seed)
    test = table_dataset(test_frame, transform, name="penguins", seed=seed + 1)
    settings = Settings(
        n_samples=len(train),
        nfe_steps=(1, 5, 20, 50),
        nfe_samples=len(train),
        gmm_study_dims=(2, 4),
        gmm_study_seconds=10.0,
        table_target=args.target,
    )
    if args.quick:  # less measured: a loose ODE tolerance, fewer mixtures and step counts
        settings = dataclasses.replace(settings, nfe_steps=(2,), gmm_components=(1, 2, 4),
                                       gmm_extend=False, gmm_study_seconds=2.0,
                                       max_nll_points=50, ode_tolerance=1e-2)  # fmt: skip
    print(
        f"penguins, seed {seed}: {len(train)} train / {len(test)} test rows, "
        f"{train_frame.shape[1]} columns encoded as {transform.width} numbers; budget {budget} "
        f"per family; threads {args.threads}; {platform.processor() or platform.machine()}",
        file=sys.stderr,
    )
    out = None if args.out is None else args.out / f"seed{seed}"
    return compare(
        train, families, test=test, budget_seconds=budget.seconds, budget_steps=budget.steps,
        seed=seed, settings=settings, out=out, progress=not args.quick,
    )  # fmt: skip


def print_side_by_side(runs: list[list[dict]]) -> None:
    """Each family's metrics (mean ± sd over the seeds), the fidelity and dependence also as
    ratios to the floor row of the same seed."""
    seeds = len(runs)
    heads = ["family", "status", *(h for _, h in COLUMNS)]
    print(f"\nMean over {seeds} seed(s)" + (" (± sd)" if seeds > 1 else "") + ":\n")
    print("| " + " | ".join(heads) + " |")
    print("|" + "---|" * len(heads))
    for i, first in enumerate(runs[0]):
        rows = [records[i] for records in runs]
        floors = [next(r for r in records if r["family"] == "data") for records in runs]
        cells = [first["family"], "/".join(sorted({r["status"] for r in rows}))]
        for key, _ in COLUMNS:
            values = [r.get(key) for r in rows]
            if any(v is None for v in values):
                cells.append("–")
                continue
            spec = ".4g" if all(isinstance(v, int) for v in values) else ".3g"  # steps
            text = f"{np.mean(values):{spec}}" + (f" ± {np.std(values):.2g}" if seeds > 1 else "")
            if key == "share_closer_to_train":
                expected = rows[0]["details"]["table_metrics"]["share_expected"]
                text += f" (expected {expected:.3g})"
            elif key in RATIOS and first["family"] != "data" and all(f.get(key) for f in floors):
                ratio = np.mean([v / f[key] for v, f in zip(values, floors, strict=True)])
                text += f" ({ratio:.2f}x floor)"
            cells.append(text)
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="3000steps", help="per family: '60s', '3000steps'")
    parser.add_argument("--families", default=",".join(FAMILY_ORDER))
    parser.add_argument("--target", default="species", help="the column ML efficacy predicts")
    parser.add_argument("--test-fraction", type=float, default=0.3)
    parser.add_argument("--seeds", default="0", help="comma-separated: one split and fit each")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="report folder (one per seed)")
    parser.add_argument("--quick", action="store_true", help="20 steps per family (< 1 min)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    families = [f for f in args.families.split(",") if known_family(f)]
    skipped = [f for f in args.families.split(",") if f not in families]
    if skipped:
        print(f"not registered here, skipped: {', '.join(skipped)}", file=sys.stderr)
    start = time.perf_counter()
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        runs.append(run_seed(seed, args, families))
        print(f"\nseed {seed}:\n\n{markdown_table(runs[-1])}")
    print_side_by_side(runs)
    print(f"\n{time.perf_counter() - start:.0f} s in all", file=sys.stderr)


if __name__ == "__main__":
    main()
