"""Discretisation error of the deterministic diffusion samplers on saved models: the distance
of each sampler's samples to those of the converged probability-flow ODE from the same noise.

    python benchmarks/diffusion_solver_error.py --models DIR --data 8gaussians,moons

DIR is the --save folder of `diffusion_quality_vs_steps.py`. Every sampler starts from the
noise of seed 0 (--n points), so without sampling noise the distance |x - x_ode| (data units;
median and root mean square over the points) is the sampler's own error. x_ode: DPM-Solver++
3M with 500 steps. Compared: DDIM 50 on the three time grids; DPM-Solver++ 3M at 10/15/20
steps with the published coefficients (the library's) and with the Taylor-consistent weight
on the second divided difference (twice the published one; see `dpm_solver_pp_step`).
"""

from __future__ import annotations

import argparse
import math

import torch

import genlab
import genlab.models.diffusion as diffusion

PUBLISHED_STEP = diffusion.dpm_solver_pp_step


def taylor_step(x, history, lams, ab_t, ab_s, order):
    """`dpm_solver_pp_step` with twice the published weight on E_2 at order 3."""
    x_s = PUBLISHED_STEP(x, history, lams, ab_t, ab_s, order)
    h = diffusion.half_log_snr(ab_s) - lams[0]
    if order < 3 or not math.isfinite(h):
        return x_s
    r_0, r_1 = (lams[0] - lams[1]) / h, (lams[1] - lams[2]) / h
    f_0, f_1 = (history[0] - history[1]) / r_0, (history[1] - history[2]) / r_1
    phi_3 = (math.expm1(-h) / h + 1.0) / h - 0.5
    return x_s - math.sqrt(ab_s) * phi_3 * (f_0 - f_1) / (r_0 + r_1)


def distances(x: torch.Tensor, ref: torch.Tensor) -> str:
    d = (x - ref).flatten(1).norm(dim=1)
    return f"{d.median():.4f} / {d.square().mean().sqrt():.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", required=True)
    parser.add_argument("--data", default="8gaussians,pinwheel,circles,moons")
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    print("| data | sampler | median / rms distance to the converged ODE |\n|---|---|---|")
    for name in args.data.split(","):
        model = genlab.load(f"{args.models}/{name}")
        ref = model.sample(args.n, seed=0, method="dpm++", steps=500)
        for grid in ("uniform", "quadratic", "logsnr"):
            x = model.sample(args.n, seed=0, method="ddim", steps=50, grid=grid)
            print(f"| {name} | ddim 50 {grid} | {distances(x, ref)} |", flush=True)
        for steps in (10, 15, 20):
            for label, step in (("published", PUBLISHED_STEP), ("taylor E_2 x 2", taylor_step)):
                diffusion.dpm_solver_pp_step = step
                x = model.sample(args.n, seed=0, method="dpm++", steps=steps)
                diffusion.dpm_solver_pp_step = PUBLISHED_STEP
                print(f"| {name} | dpm++ 3M {steps} {label} | {distances(x, ref)} |", flush=True)


if __name__ == "__main__":
    main()
