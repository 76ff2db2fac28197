"""`genlab compare` on MNIST: every family, the same budget, the same metrics.

    python benchmarks/compare_mnist.py [--budget 10m] [--families gmm,vae,...] [--threads 1]
    python benchmarks/compare_mnist.py --families vae,latent-gmm,latent-diffusion  # issue 18
    python benchmarks/compare_mnist.py --quick        # a few training steps: proves it runs

Data: the 10,000 MNIST *test* images (the shared data folder has no training images), read
with `genlab.data.load_dataset("mnist", split="test", root=...)`; the first 9,000 are the
train split of the comparison, the last 1,000 its test split. Images are 28 x 28 with 256
grey levels, stored as k / 255.

Each family trains for --budget (default 10 minutes of wall clock; "500steps" gives a step
budget instead) and is measured by `genlab.compare.compare`: test NLL in bits/dim of the
discrete data (exact / bound / estimate as each family's log_prob says), MMD and sliced W2 of
the pixels, the Fréchet distance, k-NN precision/recall and class entropy in the features of
a small classifier trained on the 9,000 train images (cached in $GENLAB_CACHE or
~/.cache/genlab), training time, sampling time per 1,000 samples, NFE and parameters. The
report (report.html, report.md, figures) goes to --out; the table is printed in Markdown.

Latent families (`genlab.models.Latent`, issue 18): latent-gmm, latent-flow, latent-diffusion
(a KL autoencoder, then the prior on its codes) and latent-autoregressive (an FSQ autoencoder,
then a transformer on its tokens), each with the same budget for the pair: the autoencoder
trains on `autoencoder_share` of it, the prior on the rest (LATENT_OPTIONS). Their bits/dim are
bounds (ELBO with the prior, or the prior's bits on the tokens plus the decoder's); the report
and the printout give the split of time between the stages and the reconstruction error
(MSE on 256 test images).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from pathlib import Path

import torch

from genlab.compare import DEFAULT_FAMILIES, Settings, compare, parse_budget
from genlab.data import load_dataset
from genlab.report import markdown_table

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "mnist"
N_TRAIN = 9000

FULL = Settings(n_samples=1000, nfe_samples=500, gmm_study_seconds=120.0, max_nll_points=500,
                ode_tolerance=1e-3)  # fmt: skip
"""The full run: 1,000 samples per family; the NLL of the first 500 test images, with dopri5 at
rtol = atol = 1e-3 (the flow and diffusion log-likelihoods solve an ODE through the UNet: the
quick run took ~0.1 s per image after 10 training steps at 1e-2; trained fields need more)."""
QUICK = Settings(n_samples=100, nfe_steps=(2, 5), nfe_samples=100, gmm_components=(1, 2),
                 gmm_study_dims=(2, 16), gmm_study_seconds=10.0, max_nll_points=100,
                 ode_tolerance=1e-2, classifier_epochs=2)  # fmt: skip
"""--quick measures less: 100 samples and test points, a loose ODE tolerance, two mixtures
(diagonal ones), smaller nets."""

LATENT_FAMILIES = ("latent-gmm", "latent-flow", "latent-diffusion", "latent-autoregressive")
LATENT_AE = {"net": "mlp", "hidden": 512, "latent_shape": "32"}
"""The latent families' autoencoder: an MLP (width 512, two residual blocks) to a 32-number
code. The default conv autoencoder (residual blocks at full resolution) costs ~35x more per
step on this CPU (12 vs 0.33 s per step of batch 128, one contended core): within 10 minutes
it would take a few hundred steps. At 600 steps on a busy machine (570 for the autoencoder),
latent-gmm with this one reached Fréchet 292 and reconstruction MSE 0.019."""
LATENT_OPTIONS = {
    # EM on 32-number codes takes well under a minute: most of the budget trains the autoencoder
    "latent-gmm": {"autoencoder_share": 0.9, "autoencoder_options": LATENT_AE},
    "latent-flow": {"autoencoder_share": 0.7, "autoencoder_options": LATENT_AE,
                    "prior_options": {"hidden": 512}},
    "latent-diffusion": {"autoencoder_share": 0.7, "autoencoder_options": LATENT_AE,
                         "prior_options": {"hidden": 512}},
    "latent-autoregressive": {"autoencoder_share": 0.7,
                              "autoencoder_options": {**LATENT_AE, "latent": "fsq",
                                                      "latent_shape": "4,8",
                                                      "levels": "8,5,5,5"}},
}  # fmt: skip
"""The latent families' options (the autoencoder's and the prior's defaults otherwise)."""
QUICK_LATENT = {"hidden": 64, "depth": 1}

QUICK_NETS = {
    "gmm": {"covariance_type": "diag"},  # full 784 x 784 ones: K = 1, 2, 4 in ~70 s (one core)
    "vae": {"hidden": 128},
    "flow": {"base_channels": 16},
    "diffusion": {"base_channels": 16},
    "autoregressive": {"n_layer": 2, "n_embd": 64},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="10m", help="per family: '10m', '600s', '500steps'")
    parser.add_argument("--families", default=",".join((*DEFAULT_FAMILIES, *LATENT_FAMILIES)))
    parser.add_argument("--quick", action="store_true", help="10 training steps, few samples")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=DATA, help="folder of the MNIST files")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "compare_mnist")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    budget = parse_budget("10steps" if args.quick else args.budget)

    data = load_dataset("mnist", split="test", root=args.root)
    n_test = 200 if args.quick else len(data) - N_TRAIN
    train = dataclasses.replace(data, x=data.x[:N_TRAIN], y=data.y[:N_TRAIN])
    test = dataclasses.replace(data, x=data.x[N_TRAIN:][:n_test], y=data.y[N_TRAIN:][:n_test])
    print(f"MNIST (the 10,000 test images): {len(train)} train / {len(test)} test; budget "
          f"{budget} per family; threads={torch.get_num_threads()}; {platform.machine()}",
          flush=True)  # fmt: skip
    start = time.perf_counter()
    records = compare(train, args.families.split(","), test=test, budget_seconds=budget.seconds,
                      budget_steps=budget.steps, out=args.out, seed=args.seed,
                      settings=QUICK if args.quick else FULL,
                      options=family_options(args.quick))  # fmt: skip
    print(f"\n{markdown_table(records)}\n")
    for r in records:
        split, mse = r["details"].get("split"), r["details"].get("reconstruction_mse")
        if split:
            print(f"{r['family']}: autoencoder {split['autoencoder_seconds']:.0f} s "
                  f"({split['autoencoder_steps']} steps), encoding {split['encode_seconds']:.0f} "
                  f"s, prior {split['prior_seconds']:.0f} s ({split['prior_steps']} steps); "
                  f"latent {split['latent_kind']} {tuple(split['latent_shape'])}")  # fmt: skip
        if mse is not None:
            print(f"{r['family']}: reconstruction MSE {mse:.4f}; bits/dim {r['bits_per_dim']} "
                  f"({r['log_prob_kind']})")  # fmt: skip
    print(f"total {time.perf_counter() - start:.0f} s; command: python {' '.join(sys.argv)}")
    print(f"wrote {args.out / 'report.html'}")


def family_options(quick: bool) -> dict[str, dict]:
    """Per-family options: LATENT_OPTIONS, and with --quick the small nets (QUICK_NETS; the
    latent families' autoencoders and priors small too)."""
    if not quick:
        return dict(LATENT_OPTIONS)
    options = {k: dict(v) for k, v in LATENT_OPTIONS.items()}
    for name, o in options.items():
        prior = name.removeprefix("latent-")
        o["autoencoder_options"] = {**o.get("autoencoder_options", {}), **QUICK_LATENT}
        o["prior_options"] = {**o.get("prior_options", {}),
                              **{k: v for k, v in QUICK_NETS.get(prior, {}).items()
                                 if k not in ("base_channels",)}}  # fmt: skip
        if prior in ("flow", "diffusion"):
            o["prior_options"]["hidden"] = 64
        if prior == "gmm":  # as the quick run's GMM: diagonal, K = 1 or 2
            o["prior_options"]["components"] = [1, 2]
    return {**QUICK_NETS, **options}


if __name__ == "__main__":
    main()
