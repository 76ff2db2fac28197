"""Sampling with the shared-time MLP path against the per-row path, side by side.

    OMP_NUM_THREADS=1 python benchmarks/shared_time.py [--n 4000] [--rounds 7] [--threads 1]

A sampler calls the network with one time for every row (an expanded scalar, stride 0); the
MLP then embeds that time and computes its FiLM scale and shift once and broadcasts them
(`genlab.nets.mlp.shared_time`) instead of once per row. This times the same sampling calls
with that path on and with it off (`shared_time` patched to False: what every call did before),
alternating within one run (the machine is noisy, PERF.md), on the points recipes' nets of flow
and diffusion (fitted for a few steps on moons: the weights do not change the cost): diffusion's
DPM-Solver++ 15 and DDPM 200, the flow's Heun ODE 25 (49 NFE). Printed: seconds per call of
each and the median over rounds of the per-round ratio off / on. The two paths' samples are
checked equal to round-off first, on one evaluation of each net (a whole sampling run is not a
fair check on these barely trained nets: their ODE carries a 1e-6 change of the starting noise
to 1e-1 in a few rows after 25 Heun steps, measured, so float32 round-off shows there too).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from genlab.data import load_dataset
from genlab.models import Diffusion, FlowMatching
from genlab.nets import mlp


def timed(call: Callable[[], torch.Tensor]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def per_row(call: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """`call` with the shared-time path switched off."""

    def run() -> torch.Tensor:
        original = mlp.shared_time
        mlp.shared_time = lambda t: False
        try:
            return call()
        finally:
            mlp.shared_time = original

    return run


def check_one_evaluation(net: torch.nn.Module, n: int) -> None:
    """The shared-time forward equals the per-row one (a fresh tensor of the same times)."""
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    for value in (1.0, 0.5, 0.02):
        t = torch.tensor(value).expand(n)
        with torch.no_grad():
            torch.testing.assert_close(net(x, t), net(x, t.clone()), rtol=1e-5, atol=1e-5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("moons", "train")
    flow = FlowMatching(max_steps=5, seed=0).fit(data, progress=False)
    diffusion = Diffusion(max_steps=5, seed=0).fit(data, progress=False)
    calls = {
        "diffusion dpm++ 15": lambda: diffusion.sample(args.n, seed=0, method="dpm++", steps=15,
                                                       progress=False),
        "diffusion ddpm 200": lambda: diffusion.sample(args.n, seed=0, method="ddpm", steps=200,
                                                       progress=False),
        "flow heun 25": lambda: flow.sample(args.n, seed=0, steps=25, progress=False),
    }  # fmt: skip
    for model in (flow, diffusion):
        check_one_evaluation(model.net, args.n)
    print(f"# shared_time: n {args.n}, {args.rounds} rounds, threads {args.threads}; nets: "
          f"diffusion {diffusion.config.hidden}, flow {flow.config.hidden} hidden")  # fmt: skip
    print("| sampling call | shared (s) | per row (s) | per row / shared (median) |")
    print("|---|---|---|---|")
    for label, call in calls.items():
        shared, rows, ratios = [], [], []
        for _ in range(args.rounds):
            s, r = timed(call), timed(per_row(call))
            shared.append(s)
            rows.append(r)
            ratios.append(r / s)
        print(f"| {label} | {statistics.median(shared):.3f} | {statistics.median(rows):.3f} | "
              f"{statistics.median(ratios):.2f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
