"""Discretisation error of the deterministic diffusion samplers on saved models: the distance
of each sampler's samples to those of the converged probability-flow ODE from the same noise.

    python benchmarks/diffusion_solver_error.py --models DIR [--suffix _diffusion_120s]
        [--data rings,moons] [--n 4000] [--nfes 10,15,20] [--threads 1] [--quick]

DIR holds saved Diffusion folders DIR/{toy}{suffix} (`benchmarks/iterative_toys.py --save DIR`
writes DIR/{toy}_diffusion_120s; `diffusion_quality_vs_steps.py --save DIR` the same names).
Every sampler starts from the noise of seed 0 (--n points), so without sampling noise the
distance |x - x_ode| (data units; median and root mean square over the points) is the
sampler's own error. x_ode: DPM-Solver++ 3M with 500 steps on the log-SNR grid, ending at
t = 1 / T like every grid here. Compared at each NFE: ddim, dpm++ 2M / 3M, unipc 2 / 3 (NFE
steps) and heun (NFE / 2 steps), on every time grid. This separates the solver's error from
the model's: a sampler close to x_ode whose MMD² (`diffusion_quality_vs_steps.py`) is still
worse than ddpm's is limited by the probability-flow ODE of the learned denoiser, not by its
steps. --quick: a 300-step moons model trained here, n = 500, NFE 10 (< 1 min).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import genlab
from genlab.data import load_dataset
from genlab.models import Diffusion
from genlab.models.diffusion import GRIDS

SAMPLERS = {  # label -> (method, options, evaluations per step)
    "ddim": ("ddim", {}, 1),
    "dpm++ 2M": ("dpm++", {"order": 2, "eta": 0.0}, 1),
    "dpm++ 3M": ("dpm++", {"order": 3, "eta": 0.0}, 1),
    "unipc 2": ("unipc", {"order": 2}, 1),
    "unipc 3": ("unipc", {"order": 3}, 1),
    "heun": ("heun", {}, 2),
}


def distances(x: torch.Tensor, ref: torch.Tensor) -> str:
    d = (x - ref).flatten(1).norm(dim=1)
    return f"{d.median():.4f} / {d.square().mean().sqrt():.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=None)
    parser.add_argument("--suffix", default="_diffusion_120s")
    parser.add_argument("--data", default="rings,moons,pinwheel,8gaussians")
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--nfes", default="10,15,20")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    if args.quick:
        args.data, args.n, args.nfes = "moons", 500, "10"
    elif not args.models:
        parser.error("--models DIR is needed (or --quick)")
    print("| data | sampler | grid | NFE | median / rms distance to the converged ODE |")
    print("|---|---|---|---|---|")
    for name in args.data.split(","):
        if args.quick:
            model = Diffusion(max_steps=300, hidden=64, seed=0)
            with torch.enable_grad():
                model.fit(load_dataset(name, n=5000, seed=0), progress=False)
        else:
            model = genlab.load(Path(args.models) / f"{name}{args.suffix}")
        ref = model.sample(args.n, seed=0, method="dpm++", steps=500, grid="logsnr", eta=0.0)
        for nfe in map(int, args.nfes.split(",")):
            for label, (method, options, per_step) in SAMPLERS.items():
                for grid in GRIDS:
                    if nfe % per_step:
                        continue
                    x = model.sample(args.n, seed=0, method=method, steps=nfe // per_step,
                                     grid=grid, **options)  # fmt: skip
                    print(f"| {name} | {label} | {grid} | {model.nfe_} | {distances(x, ref)} |",
                          flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
