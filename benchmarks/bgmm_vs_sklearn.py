"""Seconds per variational iteration: genlab's BayesianGaussianMixture against scikit-learn's.

Both start from the same responsibilities (scikit-learn's own "random" draws from
random_state=0, given to genlab as `resp_init`), run with tol=0, and each iteration is timed as
(time of a fit with 1 + m iterations - time of a fit with 1 iteration) / m, alternating the two
sides. It also checks that the lower bounds agree (relative difference). One thread by default.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/bgmm_vs_sklearn.py            # n=50k d=16 K=32
    python benchmarks/bgmm_vs_sklearn.py --n 20000 --d 8 --k 16 --covariance diag --threads 2
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from sklearn.mixture import BayesianGaussianMixture as SklearnBGMM

from genlab.models import BayesianGaussianMixture


def data(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    """n points from k well-separated Gaussian blobs in d dimensions."""
    rng = np.random.RandomState(seed)
    centres = rng.randn(k, d) * 4
    labels = rng.randint(k, size=n)
    return centres[labels] + rng.randn(n, d) * rng.uniform(0.5, 1.5, size=(k, 1))[labels]


def sklearn_fit(x: np.ndarray, k: int, ct: str, iters: int) -> tuple[float, float]:
    start = time.perf_counter()
    m = SklearnBGMM(n_components=k, covariance_type=ct, init_params="random", random_state=0,
                    max_iter=iters, tol=0.0).fit(x)  # fmt: skip
    return time.perf_counter() - start, float(np.ravel(m.lower_bounds_)[-1]), "-"


def genlab_fit(x: torch.Tensor, resp: np.ndarray, k: int, ct: str, iters: int, dtype: str,
               estep: str):  # fmt: skip
    start = time.perf_counter()
    m = BayesianGaussianMixture(k, covariance_type=ct, max_iter=iters, tol=0.0, dtype=dtype,
                                estep=estep, device="cpu").fit(x, resp_init=resp)  # fmt: skip
    return time.perf_counter() - start, m.lower_bounds_[-1], m.estep_


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--d", type=int, default=16)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--covariance", default="full")
    p.add_argument("--iters", type=int, default=5, help="timed iterations m")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--estep", default="auto", choices=["auto", "features", "residuals"])
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    warnings.simplefilter("ignore")
    x = data(a.n, a.d, a.k)
    xt = torch.from_numpy(x)
    rs = np.random.RandomState(0)  # scikit-learn's "random" start for random_state=0
    resp = rs.uniform(size=(a.n, a.k))
    resp /= resp.sum(1, keepdims=True)
    print(f"n={a.n} d={a.d} K={a.k} {a.covariance}, {a.threads} thread(s), torch "
          f"{torch.__version__}, {a.iters} timed iterations")  # fmt: skip
    rows = {}
    sides = {
        "scikit-learn": lambda it: sklearn_fit(x, a.k, a.covariance, it),
        "genlab float64": lambda it: genlab_fit(
            xt, resp, a.k, a.covariance, it, "float64", a.estep
        ),
        "genlab float32": lambda it: genlab_fit(
            xt, resp, a.k, a.covariance, it, "float32", a.estep
        ),
    }
    for name, fit in sides.items():  # first (1-iteration) fits of every side, then the long ones
        rows[name] = [fit(1)]
    for name, fit in sides.items():
        rows[name].append(fit(1 + a.iters))
    ref = rows["scikit-learn"][1][1]
    base = (rows["scikit-learn"][1][0] - rows["scikit-learn"][0][0]) / a.iters
    print(f"{'':16} {'path':>9} {'s / iteration':>14} {'speed-up':>9} {'lower bound':>16} "
          f"{'rel. diff':>10}")  # fmt: skip
    for name, ((t1, _, _), (t2, bound, path)) in rows.items():
        per = (t2 - t1) / a.iters
        print(f"{name:16} {path:>9} {per:14.4f} {base / per:8.1f}x {bound:16.6f} "
              f"{abs(bound - ref) / abs(ref):10.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
