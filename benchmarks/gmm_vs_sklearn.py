"""Time per EM iteration: genlab's batched GaussianMixture against scikit-learn (and pomegranate).

    python benchmarks/gmm_vs_sklearn.py [--scale 0.1] [--iters 8] [--repeats 2]

For each configuration every implementation starts from the same parameters (K random rows as
means, uniform weights, the data's variance as covariance) and runs `--iters` EM iterations
(tol=0; pomegranate: -inf). Each iteration is timed inside the run (between the starts of
consecutive E-steps, so an iteration is one E-step plus one M-step) and the median over
iterations and repeats is reported: on this shared machine single runs stall for seconds at
random, and a median within a run is robust to that. The implementations alternate in one
run. The mean log-likelihood (nats) of each final model on the data shows that they computed
the same EM (sklearn and genlab fp64 agree to round-off).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from iteration_clock import IterationClock
from sklearn.mixture import GaussianMixture as SklearnGMM

from genlab.models import GaussianMixture
from genlab.models.gmm import n_features

CONFIGS = [  # (n, d, K, covariance_type)
    (200_000, 16, 32, "full"),
    (50_000, 64, 64, "full"),
    (1_000_000, 8, 16, "full"),
    (200_000, 16, 32, "diag"),
]
TARGET_F32 = {0: 10, 1: 4, 2: 10, 3: 5}  # the targets (speed-up over sklearn)
TARGET_F64 = 3


def make_data(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 3
    scales = rng.uniform(0.5, 1.5, size=(k, d))
    labels = rng.integers(k, size=n)
    return (centres[labels] + rng.normal(size=(n, d)) * scales[labels]).astype(np.float32)


def common_start(x: np.ndarray, k: int, cov: str, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    d = x.shape[1]
    var = x.var(0).astype(np.float64)
    precision = {
        "full": np.broadcast_to(np.diag(1 / var), (k, d, d)).copy(),
        "tied": np.diag(1 / var),
        "diag": np.broadcast_to(1 / var, (k, d)).copy(),
        "spherical": np.full(k, 1 / var.mean()),
    }[cov]
    return {
        "weights_init": np.full(k, 1.0 / k),
        "means_init": x[rng.choice(len(x), k, replace=False)].astype(np.float64),
        "precisions_init": precision,
    }


def fit_sklearn(x64, k, cov, iters, start):
    with IterationClock(SklearnGMM, "_e_step") as clock:
        m = SklearnGMM(k, covariance_type=cov, max_iter=iters, tol=0, **start).fit(x64)
    return clock.iteration_seconds(), m.score(x64)


def fit_genlab(xt, k, cov, iters, start, dtype):
    with IterationClock(GaussianMixture, "_em_step") as clock:
        m = GaussianMixture(k, covariance_type=cov, max_iter=iters, tol=0, dtype=dtype, **start)
        m.fit(xt)
    return clock.iteration_seconds(), m.score(xt)


def fit_pomegranate(xt, k, cov, iters, start):
    from pomegranate.distributions import Normal
    from pomegranate.gmm import GeneralMixtureModel

    prec = start["precisions_init"]
    dists = [
        Normal(
            means=start["means_init"][j].astype(np.float32),
            covs=(np.linalg.inv(prec[j]) if cov == "full" else 1 / prec[j]).astype(np.float32),
            covariance_type=cov,
        )
        for j in range(k)
    ]
    m = GeneralMixtureModel(
        dists, priors=start["weights_init"].astype(np.float32), max_iter=iters, tol=-np.inf
    )
    with IterationClock(GeneralMixtureModel, "summarize") as clock:
        m.fit(xt)
    return clock.iteration_seconds(), float(m.log_probability(xt).mean())


def per_iteration(fit, iters: int, repeats: int) -> tuple[float, float]:
    """Median seconds per EM iteration over all timed iterations of all repeats, and the
    final model's mean log-likelihood."""
    seconds, loglik = [], np.nan
    for _ in range(repeats):
        times, loglik = fit(iters)
        seconds += times
    return float(np.median(seconds)), loglik


def matmul_peak() -> float:
    """float32 GFLOP/s of a 4096^2 matrix product on this machine (best of 5)."""
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    a @ b
    best = np.inf
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * 4096**3 / best / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scale", type=float, default=1.0, help="multiply every n (smoke runs)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--iters", type=int, default=8, help="EM iterations per run")
    p.add_argument("--no-pomegranate", action="store_true")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    try:
        import pomegranate  # noqa: F401

        have_pom = not args.no_pomegranate
    except ImportError:
        have_pom = False
    peak = matmul_peak()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"float32 matmul peak {peak:.0f} GFLOP/s")  # fmt: skip
    header = f"{'config':<22}{'impl':<18}{'s/iter':>9}{'speed-up':>10}{'target':>8}{'loglik':>14}"
    print(header)
    print("-" * len(header))
    for i, (n, d, k, cov) in enumerate(CONFIGS):
        n = max(int(n * args.scale), 10 * k)
        x = make_data(n, d, k)
        xt, x64 = torch.from_numpy(x), x.astype(np.float64)
        start = common_start(x, k, cov)
        impls = {
            "sklearn (fp64)": lambda it, x64=x64, k=k, cov=cov, s=start: fit_sklearn(
                x64, k, cov, it, s
            ),
            "genlab fp32": lambda it, xt=xt, k=k, cov=cov, s=start: fit_genlab(
                xt, k, cov, it, s, "float32"
            ),
            "genlab fp64": lambda it, xt=xt, k=k, cov=cov, s=start: fit_genlab(
                xt, k, cov, it, s, "float64"
            ),
        }
        if have_pom:
            impls["pomegranate fp32"] = lambda it, xt=xt, k=k, cov=cov, s=start: fit_pomegranate(
                xt, k, cov, it, s
            )
        results, failed = {}, {}
        for name, fit in impls.items():
            try:
                results[name] = per_iteration(fit, args.iters, args.repeats)
            except Exception as e:  # pomegranate's float32 Cholesky can fail on this data
                failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:70]}"
        base = results["sklearn (fp64)"][0]
        label = f"n={n} d={d} K={k} {cov}"
        for name, why in failed.items():
            print(f"{label:<22}{name:<18} failed: {why}")
            label = ""
        for name, (sec, bound) in results.items():
            target = (
                f"{TARGET_F32[i]}x" if name == "genlab fp32"
                else f"{TARGET_F64}x" if name == "genlab fp64" else ""
            )  # fmt: skip
            print(f"{label:<22}{name:<18}{sec:>9.4f}{base / sec:>9.1f}x{target:>8}{bound:>14.6f}")
            label = ""
        flops = 4 * n * n_features(cov, d) * k  # E-step phi Theta + M-step R^T phi
        for name in ("genlab fp32", "genlab fp64"):
            rate = flops / results[name][0] / 1e9
            print(f"{'':<22}{name:<18} {rate:.0f} GFLOP/s = {rate / peak:.0%} of fp32 peak")
    print("speed-up = sklearn s/iter / impl s/iter, measured in this run")


if __name__ == "__main__":
    main()
