"""Flow matching on the 8 x 8 digits: test bits/dim after a fixed step budget, and a sample grid.

    python benchmarks/flow_digits.py [--max-steps 2000] [--coupling ot] [--threads 1] [--quick]

A FlowMatching model (linear path, UNet with --base-channels) trains for --max-steps
optimisation steps (a budget that does not depend on the machine's load) on the 1,437
training digits, dequantised afresh in every batch ((k + u) / 17, the model's own
`dequantize`). The 360 test digits are dequantised once with a fixed seed, so every run is
scored on the same points (as `genlab eval` does it: `genlab.metrics.dequantize` with a
seeded generator), and the test NLL is that of the continuous density there:

    bits/dim = (NLL + D ln 17) / (D ln 2),   D = 64

(`genlab.metrics.discrete_bits_per_dim`: in expectation an upper bound on the discrete
digits' bits/dim; a uniform density gives log2 17 = 4.09). log_prob integrates the ODE with
Hutchinson's estimator (64 > exact_trace_max_dim dimensions; --probes Rademacher probes,
fixed along the path) and --nll-method (dopri5 at --tol, or a fixed-step solver with
--nll-steps). The script also reports sample quality (MMD² and SW2 of --n-samples samples
against the 360 dequantised test digits, at Heun with --sample-steps) and writes a grid of 64
samples to --out.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from genlab import metrics, plots
from genlab.data import load_dataset
from genlab.models import FlowMatching

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=2000, help="training steps")
    parser.add_argument("--coupling", choices=["independent", "ot"], default="ot")
    parser.add_argument("--path", choices=["linear", "vp"], default="linear")
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--probes", type=int, default=1, help="Hutchinson probes per row")
    parser.add_argument("--nll-method", default="dopri5")
    parser.add_argument("--nll-steps", type=int, default=None, help="fixed-step solvers only")
    parser.add_argument("--tol", type=float, default=1e-5, help="dopri5 rtol = atol")
    parser.add_argument("--n-test", type=int, default=360)
    parser.add_argument("--sample-steps", type=int, default=25, help="Heun steps of samples")
    parser.add_argument("--n-samples", type=int, default=360)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "flow_digits.png")
    parser.add_argument("--quick", action="store_true", help="200 steps, 60 test digits, rk4 10")
    args = parser.parse_args()
    if args.quick:
        args.max_steps, args.n_test, args.n_samples = 200, 60, 100
        args.nll_method, args.nll_steps, args.sample_steps = "rk4", 10, 10
    torch.set_num_threads(args.threads)
    train = load_dataset("digits", split="train")
    test = load_dataset("digits", split="test", n=args.n_test)
    x_test = metrics.dequantize(test.x, test.levels, generator=torch.Generator().manual_seed(0))

    model = FlowMatching(args.path, coupling=args.coupling, base_channels=args.base_channels,
                         batch_size=args.batch_size, lr=args.lr, warmup_steps=50,
                         max_steps=args.max_steps, hutchinson_probes=args.probes,
                         seed=0)  # fmt: skip
    start = time.perf_counter()
    model.fit(train, progress=False)
    train_s = time.perf_counter() - start
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s)")  # fmt: skip
    print(f"trained {model.train_result_.steps} steps ({args.coupling}, {args.path}, UNet "
          f"{args.base_channels}) in {train_s:.1f} s")  # fmt: skip

    start = time.perf_counter()
    tol = {"rtol": args.tol, "atol": args.tol}
    log_p = model.log_prob(x_test, method=args.nll_method, steps=args.nll_steps, **tol)
    bpd = metrics.discrete_bits_per_dim(log_p, test.dim, test.levels)
    print(f"test bits/dim {bpd:.4f} on {len(x_test)} digits ({model.log_prob_estimator_}, "
          f"{args.nll_method}, {model.log_prob_nfe_} NFE, "
          f"{time.perf_counter() - start:.1f} s)")  # fmt: skip

    start = time.perf_counter()
    samples = model.sample(args.n_samples, seed=0, method="heun", steps=args.sample_steps)
    sample_s = time.perf_counter() - start
    quality = metrics.sample_metrics(samples, x_test, seed=0)
    print(f"{args.n_samples} samples (heun, {model.nfe_} NFE) in {sample_s:.1f} s: "
          f"MMD² {quality['mmd']:.3e}, SW2 {quality['sliced_wasserstein']:.4f}")  # fmt: skip
    grid = model.sample(64, seed=1, method="heun", steps=args.sample_steps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    title = f"flow matching on digits: {bpd:.3f} bits/dim"
    print(f"wrote {plots.sample_grid(grid.clamp(0, 1), args.out, title=title)}")


if __name__ == "__main__":
    main()
