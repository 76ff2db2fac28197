"""Time per EM iteration: genlab's batched GaussianMixture against scikit-learn (and pomegranate).

    python benchmarks/gmm_vs_sklearn.py [--threads 1,2] [--scale 0.1] [--iters 8] [--repeats 2]

For each configuration every implementation starts from the same parameters (K random rows as
means, uniform weights, the data's variance as covariance) and runs `--iters` EM iterations
(tol=0; pomegranate: -inf). Each iteration is timed inside the run (between the starts of
consecutive E-steps, so an iteration is one E-step plus one M-step) and the median over
iterations and repeats is reported: on this shared machine single runs stall for seconds at
random, and a median within a run is robust to that. The implementations alternate in one
run, at each thread count of --threads in turn (torch and the BLAS of numpy both limited).
The mean log-likelihood (nats) of each final model on the data shows that they computed
the same EM (sklearn and genlab fp64 agree to round-off). Each genlab line names the E/M path
the cost model chose ("features" phi(x) or "residuals") and its rate as a fraction of a
4096^2 matrix product's peak measured in the same run at the same threads (float32 peak for
fp32, float64 peak for fp64 and scikit-learn; flops counted for the products each does).
Configurations marked "fit" also time one whole fit (tol=1e-3, at most 100 iterations) from
the same start.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from iteration_clock import IterationClock
from sklearn.mixture import GaussianMixture as SklearnGMM
from threadpoolctl import threadpool_limits

from genlab.models import GaussianMixture
from genlab.models.gmm_maths import n_features, triangle_fraction

CONFIGS = [  # (n, d, K, covariance_type, genlab fp32 target speed-up, time a whole fit)
    (200_000, 16, 32, "full", 10, False),
    (50_000, 64, 64, "full", 5, False),
    (1_000_000, 8, 16, "full", 10, False),
    (200_000, 16, 32, "diag", 5, False),
    (10_000, 256, 10, "full", 3, False),
    (5_000, 784, 4, "full", 3, True),
]
TARGET_F64 = 3  # the first issue's target for genlab fp64 on the first four configurations


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


def fit_sklearn(x64, k, cov, iters, start, tol=0.0):
    with IterationClock(SklearnGMM, "_e_step") as clock:
        m = SklearnGMM(k, covariance_type=cov, max_iter=iters, tol=tol, **start).fit(x64)
    return clock.iteration_seconds(), m.score(x64)


def fit_genlab(xt, k, cov, iters, start, dtype, tol=0.0):
    with IterationClock(GaussianMixture, "_em_step") as clock:
        m = GaussianMixture(k, covariance_type=cov, max_iter=iters, tol=tol, dtype=dtype, **start)
        m.fit(xt)
    fit_genlab.path = m.estep_
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


def matmul_peak(dtype: torch.dtype) -> float:
    """GFLOP/s of a 4096^2 matrix product in `dtype` at the current threads (best of 5)."""
    a, b = torch.randn(4096, 4096, dtype=dtype), torch.randn(4096, 4096, dtype=dtype)
    a @ b
    best = np.inf
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * 4096**3 / best / 1e9


def em_flops(path: str, n: int, d: int, k: int, cov: str) -> float:
    """Flops of the matrix products of one EM iteration: sklearn's per-component products
    (4 n K D^2 for full), genlab's phi products (4 n K p) or residual products (full:
    4 n K D^2 times the triangle fraction; tied: 4 n D^2 f)."""
    if path == "features":
        return 4.0 * n * k * n_features(cov, d)
    if path == "sklearn":
        return 4.0 * n * k * (d * d if cov in ("full", "tied") else d)
    if cov == "full":
        return 4.0 * n * k * d * d * triangle_fraction(d)
    return 4.0 * n * d * d * triangle_fraction(d) if cov == "tied" else 6.0 * n * k * d


def whole_fit_seconds(fit) -> float:
    t = time.perf_counter()
    fit()
    return time.perf_counter() - t


def run_config(config, args, have_pom: bool, peaks: dict[str, float]) -> None:
    n, d, k, cov, target32, time_fit = config
    n = max(int(n * args.scale), 10 * k)
    x = make_data(n, d, k)
    xt, x64 = torch.from_numpy(x), x.astype(np.float64)
    start = common_start(x, k, cov)
    impls = {
        "sklearn (fp64)": lambda it, tol=0.0: fit_sklearn(x64, k, cov, it, start, tol),
        "genlab fp32": lambda it, tol=0.0: fit_genlab(xt, k, cov, it, start, "float32", tol),
        "genlab fp64": lambda it, tol=0.0: fit_genlab(xt, k, cov, it, start, "float64", tol),
    }
    if have_pom:
        impls["pomegranate fp32"] = lambda it: fit_pomegranate(xt, k, cov, it, start)
    results, failed, paths, fits = {}, {}, {}, {}
    for name, fit in impls.items():
        try:
            results[name] = per_iteration(fit, args.iters, args.repeats)
            paths[name] = fit_genlab.path if name.startswith("genlab") else "sklearn"
            if time_fit and not name.startswith("pomegranate"):
                fits[name] = whole_fit_seconds(lambda fit=fit: fit(100, 1e-3))
        except Exception as e:  # pomegranate's float32 Cholesky can fail on this data
            failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:70]}"
    base = results["sklearn (fp64)"][0]
    label = f"n={n} d={d} K={k} {cov}"
    for name, why in failed.items():
        print(f"{label:<24}{name:<18} failed: {why}")
        label = ""
    for name, (sec, bound) in results.items():
        target = (
            f"{target32}x" if name == "genlab fp32"
            else f"{TARGET_F64}x" if name == "genlab fp64" and d <= 64 else ""
        )  # fmt: skip
        path = paths.get(name, "")
        peak = peaks["fp32" if name.endswith("fp32") else "fp64"]
        frac = em_flops(path, n, d, k, cov) / sec / 1e9 / peak if path else float("nan")
        fit = f"{fits[name]:8.2f}" if name in fits else ""
        print(f"{label:<24}{name:<18}{path:<10}{sec:>9.4f}{base / sec:>9.1f}x{target:>7}"
              f"{frac:>7.0%}{bound:>14.6f}{fit}")  # fmt: skip
        label = ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scale", type=float, default=1.0, help="multiply every n (smoke runs)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--iters", type=int, default=8, help="EM iterations per run")
    p.add_argument("--threads", default="1,2", help="thread counts, run in turn: '1', '2', '1,2'")
    p.add_argument("--configs", default=None, help="indices into CONFIGS to run, e.g. '4,5'")
    p.add_argument("--no-pomegranate", action="store_true")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    try:
        import pomegranate  # noqa: F401

        have_pom = not args.no_pomegranate
    except ImportError:
        have_pom = False
    chosen = range(len(CONFIGS)) if args.configs is None else map(int, args.configs.split(","))
    configs = [CONFIGS[i] for i in chosen]
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        with threadpool_limits(limits=threads):
            peaks = {"fp32": matmul_peak(torch.float32), "fp64": matmul_peak(torch.float64)}
            print(f"\ntorch {torch.__version__}, {threads} thread(s); matmul peak float32 "
                  f"{peaks['fp32']:.0f}, float64 {peaks['fp64']:.0f} GFLOP/s")  # fmt: skip
            header = (f"{'config':<24}{'impl':<18}{'path':<10}{'s/iter':>9}{'speed-up':>10}"
                      f"{'target':>7}{'peak':>7}{'loglik':>14}{'fit s':>8}")  # fmt: skip
            print(header)
            print("-" * len(header))
            for config in configs:
                run_config(config, args, have_pom, peaks)
    print("speed-up = sklearn s/iter / impl s/iter, measured in this run; peak = the products'")
    print("flops per second as a fraction of the matmul peak of the same dtype and threads;")
    print("fit s = one whole fit (tol=1e-3, max_iter=100) from the same start")


if __name__ == "__main__":
    main()
