"""Run by torchrun from test_gmm.py: each process fits its contiguous shard; rank 0 saves."""

import sys
import warnings

import numpy as np
import torch
import torch.distributed as dist

from genlab.models import GaussianMixture


def make_data() -> np.ndarray:
    rng = np.random.default_rng(11)
    parts = [rng.normal(size=(301, 3)) * s + c for s, c in [(0.5, 0), (1.0, 3), (0.7, -2)]]
    return np.concatenate(parts)


def fit_model(x: torch.Tensor, init: str) -> GaussianMixture:
    start = {}
    if init == "given":
        start = {"means_init": np.array([[0.0] * 3, [1.0] * 3, [-1.0] * 3, [2.0] * 3])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GaussianMixture(4, max_iter=25, tol=0, seed=5, chunk_size=64, **start).fit(x)


def main(out: str, init: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    x = make_data()
    bounds = np.linspace(0, len(x), world + 1).astype(int)
    shard = torch.from_numpy(x[bounds[rank] : bounds[rank + 1]])
    model = fit_model(shard, init)
    if rank == 0:
        np.savez(
            out,
            lower_bounds=np.array(model.lower_bounds_),
            means=model.means_.numpy(),
            covariances=model.covariances_.numpy(),
        )
    dist.barrier()  # gloo aborts if one rank tears down while another still runs
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
