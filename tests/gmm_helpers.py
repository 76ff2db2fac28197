"""Data and starting points shared by the GaussianMixture tests (test_gmm.py, test_gmm_paths.py)."""

import warnings

import numpy as np
from sklearn.mixture import GaussianMixture as SklearnGMM


def overlapping_clusters(
    n_per: int = 300, d: int = 4, k: int = 4, seed: int = 1, offset: float = 50.0
) -> np.ndarray:
    """k correlated, overlapping clusters of n_per rows in d dimensions, `offset` from the
    origin: EM needs many iterations, a real trajectory to compare."""
    rng = np.random.default_rng(seed)
    parts = [
        rng.normal(size=(n_per, d)) @ rng.normal(size=(d, d)) * 0.7 + rng.normal(size=d) * 2
        for _ in range(k)
    ]
    return np.concatenate(parts) + offset


def sklearn_start(x: np.ndarray, k: int, cov: str) -> dict:
    """A deliberately poor common starting point, taken from sklearn's random init."""
    sk = SklearnGMM(k, covariance_type=cov, init_params="random", max_iter=1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk.fit(x)
    return {"weights_init": sk.weights_, "means_init": sk.means_, "precisions_init": sk.precisions_}


def flat_far_component() -> tuple[np.ndarray, np.ndarray]:
    """(x (600, 3), means_init (2, 3)): a round cluster at the origin and one of zero spread
    along its last axis, far from the centre, so float32 second moments S2/N - mu^2 of that
    component are not positive definite (the passes' float64 fallback)."""
    rng = np.random.default_rng(0)
    flat = np.column_stack([rng.normal(size=(300, 2)) + 40, np.full(300, 3001.37)])
    x = np.concatenate([rng.normal(size=(300, 3)), flat])
    return x, np.array([[0.0, 0.0, 0.0], [40.0, 40.0, 3001.37]])
