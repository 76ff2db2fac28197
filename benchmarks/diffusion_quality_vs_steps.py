"""Diffusion: sample quality against network evaluations (NFE) for every sampler and grid.

    python benchmarks/diffusion_quality_vs_steps.py [--quick] [--data moons,rings,...]
        [--models DIR] [--steps 4000] [--seeds 2] [--json FILE] [--threads 1]

Models: with --models DIR, each toy's trained Diffusion is loaded from DIR/{toy}{--suffix}
(default suffix "_diffusion_120s": the folders `benchmarks/iterative_toys.py --save DIR`
writes, e.g. /tmp/iter_models/rings_diffusion_120s); a toy without a folder there is trained.
Otherwise a `Diffusion` with the library's defaults trains for --steps optimisation steps
(fixed steps, so the budget does not depend on the machine's load) on 10,000 points, seed 0.

Samplers (rows), each at NFE budgets 1, 2, 5, 10, 15, 20, 50, 100, 200 and 1000 (columns;
`NFES`): ddpm (respaced chain), ddim (eta 0), dpm++ 3M and 2M, heun (EDM, churn 0) and
heun with churn (S_churn = 10), unipc 2 and 3, and the probability-flow ode (solver heun),
each on its default grid (`genlab.models.diffusion.DEFAULT_GRID`; dpm++ on the model's
config.dpm_grid, "power" for a points model trained after 2026-12-04); plus, at 15 NFE, every
sampler but ddpm, the ode and heun with churn on every other grid (uniform, quadratic, power,
logsnr, karras; dpm++ on all of them, by name). A sampler takes
`steps = NFE` (ddpm, ddim, dpm++, unipc) or NFE / 2 (heun, ode: 2 evaluations a step on a
grid ending at t_min; an odd budget: (NFE + 1) / 2 heun steps whose last one goes to t = 0,
2 S - 1 evaluations), and the measured `nfe_` is what the table prints. Budgets above 100
run only for ddpm, ddim and the ode (--max-nfe-others).

Quality: MMD² (unbiased, `genlab.metrics.mmd`) at n = --n (4,000) against one fixed
reference draw of the toy (test split, seed 3000), Gaussian kernels at (0.25, 0.5, 1, 2, 4) x
its median distance; every sampler starts from the same noise seeds 0 .. --seeds - 1 and the
table prints the mean over the seeds. "floor" is the mean (± sd) MMD² of --floor-draws fresh
draws of the data against the same reference: what a perfect sampler scores.

Target (issue 17): dpm++ (the default, 15 NFE) within 10% of ddpm at 1,000 steps: the ratio
of their MMD² and, less noisy, of their excesses over the floor, (score - floor) / (ddpm -
floor), with the Welch standard error of score - ddpm over the seeds.

Findings of 2026-12-01 (default recipe, 4,000 training steps on 10,000 points, n = 4,000, noise
seeds 0-1, MMD² x 1e4; floor about -0.5): rings: ddpm 1000 4.4; the deterministic dpm++ at 15
NFE 9.8 (3M quadratic, the old default), 7.2 (2M), 10.2 (3M logsnr), 8.1 (3M uniform, ending at
t = 0), and 8.0 even at 100 NFE: the learned probability-flow ODE itself is twice as far from
the data as DDPM, so no grid, order or final step could close the gap. SDE-DPM-Solver++ 2M
(eta 1) at 15 NFE: 4.6 (quadratic), 4.0 (logsnr), 2.8 (uniform, the new default), 15.8
(karras). heun at 15 NFE (8 steps, the last to t = 0): 5.4 (uniform), 139 (karras), 111
(logsnr); unipc 3 at 15: 8.2 (quadratic), 7.3 (uniform). rings with v-prediction: ddpm
4.5, ODE 3M 6.9, SDE uniform 3.2, logsnr 5.6. moons (per-seed spread ±1.5): ddpm 1.4,
ODE 3M 1.9, SDE quadratic 2.3, logsnr 2.8, uniform 4.8. pinwheel (floor 0.7): ddpm 2.4,
ODE 3M 4.3 (and 4.3 at 100 NFE), SDE uniform 4.4, quadratic
7.8, logsnr 7.6; heun uniform 7.7. No setting met "within 10% of ddpm 1000" on every toy.

Cost (one thread, a quiet core, 256-wide MLP models): about 2-3 minutes per toy and seed to
sample and score; --quick (moons, 300 training steps of a 64-wide MLP, n = 1000, 1 seed, NFE
5, 15 and 100 (ddpm, ddim, ode), ddpm 100 as the reference) about 1 min.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

import genlab
from genlab import metrics
from genlab.data import TOYS, load_dataset
from genlab.models import Diffusion
from genlab.models.diffusion import DEFAULT_GRID, GRIDS, sampling_times

NFES = (1, 2, 5, 10, 15, 20, 50, 100, 200, 1000)
TARGET_NFE = 15
SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)
REFERENCE_SEED, FLOOR_SEED = 3000, 4000
TARGET_RATIO = 1.10
CHURN = 10.0
# label -> (method, options, evaluations per step)
SAMPLERS: dict[str, tuple[str, dict, int]] = {
    "ddpm": ("ddpm", {}, 1),
    "ddim": ("ddim", {}, 1),
    "dpm++": ("dpm++", {}, 1),  # the default: the ODE 2M on the model's config.dpm_grid
    "dpm++ 3M ode": ("dpm++", {"order": 3, "eta": 0.0}, 1),
    "dpm++ 2M ode": ("dpm++", {"order": 2, "eta": 0.0}, 1),
    "heun": ("heun", {}, 2),
    f"heun churn {CHURN:g}": ("heun", {"churn": CHURN}, 2),
    "unipc 2": ("unipc", {"order": 2}, 1),
    "unipc 3": ("unipc", {"order": 3}, 1),
    "ode heun": ("ode", {"solver": "heun"}, 2),
}
LONG = ("ddpm", "ddim", "ode heun")  # the samplers run beyond --max-nfe-others


def cells(max_nfe_others: int, nfes: tuple[int, ...]) -> list[tuple[str, int, str, dict]]:
    """(row label, NFE budget, method, options) of every cell of the table."""
    out = []
    for label, (method, options, per_step) in SAMPLERS.items():
        for nfe in nfes:
            steps, rest = divmod(nfe, per_step)
            if method == "heun" and rest:  # 2 S - 1 NFE: S steps on a grid ending at t = 0
                steps, rest = (nfe + 1) // 2, 0
                options = {**options, "to_zero": True}
            if steps < 1 or rest or (nfe > max_nfe_others and label not in LONG):
                continue
            out.append((label, nfe, method, {**options, "steps": steps}))
            options = SAMPLERS[label][1]
    if TARGET_NFE in nfes:
        for label, (method, options, per_step) in SAMPLERS.items():
            if label in ("ddpm", "ode heun") or "churn" in label:
                continue
            for grid in GRIDS:
                if grid != DEFAULT_GRID[method] or method == "dpm++":  # dpm++: config.dpm_grid
                    steps = TARGET_NFE // per_step
                    extra = {"to_zero": True, "steps": steps + 1} if TARGET_NFE % per_step else {}
                    out.append((f"{label} {grid}", TARGET_NFE, method,
                                {**options, "steps": steps, "grid": grid, **extra}))  # fmt: skip
    return out


def as_times(model: Diffusion, method: str, options: dict) -> dict:
    """Options with "to_zero": the method's grid of steps - 1 steps to t = 1 / T, then t = 0
    (`times=`), so heun spends 2 steps - 1 evaluations (one Euler step to 0 at the end)."""
    if not options.pop("to_zero", False):
        return options
    steps, grid = options.pop("steps"), options.pop("grid", DEFAULT_GRID[method])
    if grid in ("uniform", "power"):  # these grids end at t = 0 already
        return {**options, "steps": steps, "grid": grid}
    T = model.config.timesteps
    head = (torch.ones(1, dtype=torch.float64) if steps == 1
            else sampling_times(model.schedule, T, steps - 1, grid))  # fmt: skip
    return {**options, "times": torch.cat([head, torch.zeros(1, dtype=torch.float64)])}


def toy_reference(name: str, n: int):
    reference = load_dataset(name, split="test", n=n, seed=REFERENCE_SEED).x
    return reference, [s * metrics.median_distance(reference, reference) for s in SCALES]


def get_model(name: str, args) -> tuple[Diffusion, str]:
    folder = Path(args.models or "") / f"{name}{args.suffix}"
    if args.models and folder.is_dir():
        return genlab.load(folder), f"loaded {folder}"
    start = time.perf_counter()
    model = Diffusion(max_steps=args.steps, seed=0, device=args.device)
    if args.quick:
        model = Diffusion(max_steps=args.steps, hidden=64, seed=0, device=args.device)
    model.fit(load_dataset(name, split="train", n=10_000, seed=0), progress=False)
    if args.save:
        model.save(Path(args.save) / f"{name}{args.suffix}")
    return model, f"trained {args.steps} steps in {time.perf_counter() - start:.0f} s"


def run_toy(name: str, args, nfes) -> dict:
    model, how = get_model(name, args)
    reference, bandwidths = toy_reference(name, args.n)
    floors = [metrics.mmd(load_dataset(name, split="test", n=args.n, seed=FLOOR_SEED + i).x,
                          reference, bandwidths) for i in range(args.floor_draws)]  # fmt: skip
    row = {"data": name, "model": how, "floor": statistics.fmean(floors),
           "floor_sd": statistics.stdev(floors) if len(floors) > 1 else 0.0,
           "cells": {}}  # fmt: skip
    start = time.perf_counter()
    for label, nfe, method, options in cells(args.max_nfe_others, nfes):
        options = as_times(model, method, options)
        values = [metrics.mmd(model.sample(args.n, seed=s, method=method, **options).cpu(),
                              reference, bandwidths) for s in range(args.seeds)]  # fmt: skip
        row["cells"][f"{label}@{nfe}"] = {"values": values, "nfe": model.nfe_}
        print(f"  {name} {label:22s} budget {nfe:4d} nfe {model.nfe_:4d} "
              f"mmd2 {statistics.fmean(values):.6f}", flush=True)  # fmt: skip
    row["sample_s"] = round(time.perf_counter() - start, 1)
    return row


def mean(row: dict, key: str) -> float | None:
    cell = row["cells"].get(key)
    return None if cell is None else statistics.fmean(cell["values"])


def print_tables(rows: list[dict], nfes: tuple[int, ...]) -> None:
    for r in rows:
        print(f"\n{r['data']} ({r['model']}), MMD² x 1e4 (mean of seeds); floor "
              f"{r['floor'] * 1e4:.2f} ± {r['floor_sd'] * 1e4:.2f}")  # fmt: skip
        labels = list(dict.fromkeys(k.split("@")[0] for k in r["cells"]))
        print("| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |")
        print("|---|" + "---|" * len(nfes))
        for label in labels:
            out = []
            for n in nfes:
                cell = r["cells"].get(f"{label}@{n}")
                out.append("-" if cell is None else
                           f"{statistics.fmean(cell['values']) * 1e4:.2f}"
                           + ("" if cell["nfe"] == n else f" ({cell['nfe']})"))  # fmt: skip
            print(f"| {label} | " + " | ".join(out) + " |")
    print(f"\n| data | sampler @ {TARGET_NFE} NFE | ddpm (most steps) | it | ratio | "
          "excess ratio | diff / se |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for r, label in ((r, k) for r in rows for k in ("dpm++", "dpm++ 3M ode")):
        ddpm = max((int(k.split("@")[1]) for k in r["cells"] if k.startswith("ddpm@")), default=0)
        ref, got = mean(r, f"ddpm@{ddpm}"), mean(r, f"{label}@{TARGET_NFE}")
        if ref is None or got is None:
            continue
        a, b = r["cells"][f"{label}@{TARGET_NFE}"]["values"], r["cells"][f"ddpm@{ddpm}"]["values"]
        se = ((statistics.variance(a) + statistics.variance(b)) / len(a)) ** 0.5 if len(a) > 1 \
            else float("nan")  # fmt: skip
        excess = (got - r["floor"]) / (ref - r["floor"]) if ref > r["floor"] else float("nan")
        print(f"| {r['data']} | {label} | {ref:.6f} | {got:.6f} | {got / ref:.3f} | {excess:.3f} | "
              f"{(got - ref) / se:+.1f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="moons, tiny budgets, < 1 min")
    parser.add_argument("--data", default=",".join(TOYS))
    parser.add_argument("--models", default=None, help="load DIR/{toy}{suffix} when present")
    parser.add_argument("--suffix", default="_diffusion_120s")
    parser.add_argument("--save", default=None, help="save trained models as SAVE/{toy}{suffix}")
    parser.add_argument("--steps", type=int, default=4000, help="training steps (no --models)")
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--floor-draws", type=int, default=10)
    parser.add_argument("--nfes", default=",".join(map(str, NFES)))
    parser.add_argument("--max-nfe-others", type=int, default=100)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    parser.add_argument("--from-json", default=None, help="only print the tables of a --json")
    args = parser.parse_args()
    nfes = tuple(int(v) for v in args.nfes.split(","))
    if args.from_json:
        print_tables(json.loads(Path(args.from_json).read_text()), nfes)
        return
    if args.quick:
        args.data, args.steps, args.n, args.seeds, args.floor_draws = "moons", 300, 1000, 1, 2
        nfes, args.max_nfe_others = (5, 15, 100), 15
    torch.set_num_threads(args.threads)
    print(f"# diffusion_quality_vs_steps {datetime.now(UTC):%Y-%m-%d %H:%M} UTC {vars(args)}",
          flush=True)  # fmt: skip
    rows = []
    for name in args.data.split(","):
        rows.append(run_toy(name, args, nfes))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    print_tables(rows, nfes)


if __name__ == "__main__":
    main()
