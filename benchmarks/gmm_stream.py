"""EM on a .npy file larger than this machine would like to hold: streamed, not mapped whole.

    python benchmarks/gmm_stream.py [--rows 50000000] [--path /tmp/genlab_stream.npy]

1. Writes an (rows x 16) float32 .npy (3.2 GB at 50M rows) in chunks, unless it exists.
2. In a child process, fits GaussianMixture(K=32, full, float32) for 5 EM iterations straight
   from the file (genlab.data.NpyArray: rows read with pread, chunk by chunk) and reports the
   child's peak RSS and the median time per EM iteration (timed inside the run).
3. Fits the first 1M rows twice, in memory and streamed from the file, and prints both
   log-likelihood trajectories: they must agree.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from iteration_clock import IterationClock

from genlab.data import NpyArray
from genlab.models import GaussianMixture

D, K, ITERS = 16, 32, 5


def write_npy(path: Path, rows: int, chunk: int = 1_000_000, seed: int = 0) -> None:
    """Write a K-cluster mixture as float32 rows without holding the array in memory."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(K, D)) * 3
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        header = {"descr": "<f4", "fortran_order": False, "shape": (rows, D)}
        np.lib.format.write_array_header_1_0(f, header)
        for start in range(0, rows, chunk):
            m = min(chunk, rows - start)
            x = centres[rng.integers(K, size=m)] + rng.normal(size=(m, D))
            f.write(x.astype(np.float32).tobytes())
    os.replace(tmp, path)


def fit(x, **kw) -> tuple[GaussianMixture, float, list[float]]:
    """Fit; return the model, the total seconds and the seconds of each EM iteration."""
    warnings.simplefilter("ignore")
    t = time.perf_counter()
    with IterationClock(GaussianMixture, "_em_step") as clock:
        m = GaussianMixture(K, max_iter=ITERS, tol=0, dtype="float32", seed=0, **kw).fit(x)
    return m, time.perf_counter() - t, clock.iteration_seconds()


def child(path: str) -> None:
    """Fit from the file; print JSON with the times and this process's peak RSS."""
    m, total, iterations = fit(NpyArray(path))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"total": total, "iterations": iterations, "peak_rss": peak,
                      "lower_bounds": m.lower_bounds_}))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=50_000_000)
    p.add_argument("--path", type=Path, default=Path("/tmp/genlab_stream.npy"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(str(args.path))
    if not args.path.exists() or NpyArray(args.path).shape != (args.rows, D):
        t = time.perf_counter()
        write_npy(args.path, args.rows)
        print(f"wrote {args.path} ({args.path.stat().st_size / 1e9:.2f} GB) "
              f"in {time.perf_counter() - t:.0f} s")  # fmt: skip
    size = args.path.stat().st_size
    cmd = [sys.executable, __file__, "--child", "--rows", str(args.rows), "--path", str(args.path)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    res = json.loads(out.strip().splitlines()[-1])
    per_iter = float(np.median(res["iterations"]))
    print(
        f"streamed fit: {args.rows} x {D} float32 ({size / 1e9:.2f} GB), K={K} full: "
        f"{ITERS} EM iterations, {per_iter:.1f} s per iteration "
        f"(median of iterations 2-{ITERS - 1}), "
        f"{res['total']:.0f} s in all with the data scan and the init sample; "
        f"peak RSS {res['peak_rss'] / 1e9:.2f} GB = {res['peak_rss'] / size:.0%} of the file"
    )
    print(f"  lower bounds: {[round(v, 6) for v in res['lower_bounds']]}")

    n = min(1_000_000, args.rows)
    lazy = NpyArray(args.path).rows(0, n)
    in_memory, t_mem, _ = fit(torch.from_numpy(np.load(args.path, mmap_mode="r")[:n].copy()))
    streamed, t_str, _ = fit(lazy)
    diff = np.abs(np.array(in_memory.lower_bounds_) - np.array(streamed.lower_bounds_)).max()
    for name, m, t in [("in memory", in_memory, t_mem), ("streamed ", streamed, t_str)]:
        print(f"first {n} rows, {name} ({t:.1f} s): {[round(v, 8) for v in m.lower_bounds_]}")
    print(f"  max |difference| = {diff:.2e} nats")


if __name__ == "__main__":
    main()
