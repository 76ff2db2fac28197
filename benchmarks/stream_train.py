"""Train a flow straight from a .npy file bigger than one would hold: bounded memory, and
the cost of streaming batches against training in memory.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/stream_train.py [--rows 50000000]
        [--path /tmp/genlab_stream.npy] [--steps 300] [--batch-size 1024]

1. Uses the (rows x 16) float32 .npy that benchmarks/gmm_stream.py writes (3.2 GB at 50M
   rows), writing it (same function, same file) only when it is absent; when another process
   is writing it (its .tmp exists) this waits for it instead of writing a second copy.
2. In a child process, fits FlowMatching (MLP hidden 64, depth 2) for --steps steps straight
   from the file (genlab.data.NpyArray; loc/scale from one streamed pass, batches of windows
   of 64 contiguous rows read with one pread per window) and reports the child's peak RSS,
   the set-up seconds (the streamed moments) and the training steps/s.
3. In another child, the same fit on the first 1M rows held in memory as a tensor (default
   data order: single rows), for the steps/s and peak RSS of the in-memory path.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from gmm_stream import D, write_npy

from genlab.data import NpyArray
from genlab.models import FlowMatching

SLICE_ROWS = 1_000_000


def child(path: str, mode: str, steps: int, batch_size: int) -> None:
    """One fit (streamed from the file, or on its first SLICE_ROWS rows in memory); print
    JSON with the seconds, steps/s and this process's peak RSS."""
    torch.set_num_threads(1)
    x = NpyArray(path)
    if mode == "memory":
        x = x[:SLICE_ROWS]  # a float32 tensor of 64 MB
    model = FlowMatching(hidden=64, depth=2, max_steps=steps, batch_size=batch_size, seed=0,
                         ema_decay=None, device="cpu")  # fmt: skip
    t = time.perf_counter()
    model.fit(x, progress=False)
    total = time.perf_counter() - t
    result = model.train_result_
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"rows": len(x), "steps": result.steps, "train_seconds": result.seconds,
                      "total_seconds": total, "peak_rss": peak,
                      "loss": result.history[-1]["loss"]}))  # fmt: skip


def ensure_file(path: Path, rows: int) -> None:
    """The benchmark file: wait for a writer already at work, else write it if absent."""
    tmp, start = path.with_suffix(".tmp"), time.perf_counter()
    if tmp.exists():
        while tmp.exists():  # write_npy renames the .tmp onto the path when it is done
            time.sleep(10)
        print(f"waited {time.perf_counter() - start:.0f} s for another writer of {path}")
    if not path.exists() or NpyArray(path).shape != (rows, D):
        t = time.perf_counter()
        write_npy(path, rows)
        print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in "
              f"{time.perf_counter() - t:.0f} s")  # fmt: skip


def run_child(args: argparse.Namespace, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--path", str(args.path),
           "--steps", str(args.steps), "--batch-size", str(args.batch_size)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=50_000_000)
    p.add_argument("--path", type=Path, default=Path("/tmp/genlab_stream.npy"))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--child", choices=("streamed", "memory"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(str(args.path), args.child, args.steps, args.batch_size)
    ensure_file(args.path, args.rows)
    size = args.path.stat().st_size
    results = {mode: run_child(args, mode) for mode in ("streamed", "memory")}
    for mode, r in results.items():
        where = (f"streamed from {args.path} ({r['rows']:,} rows, {size / 1e9:.2f} GB)"
                 if mode == "streamed" else f"in memory, first {r['rows']:,} rows")  # fmt: skip
        setup = r["total_seconds"] - r["train_seconds"]
        print(f"{mode:8s}: {where}: {r['steps']} steps of {args.batch_size} in "
              f"{r['train_seconds']:.1f} s = {r['steps'] / r['train_seconds']:.1f} steps/s; "
              f"set-up and checks {setup:.1f} s; peak RSS {r['peak_rss'] / 1e9:.2f} GB; "
              f"final loss {r['loss']:.4f}")  # fmt: skip
    s, m = results["streamed"], results["memory"]
    ratio = (s["steps"] / s["train_seconds"]) / (m["steps"] / m["train_seconds"])
    print(f"streamed / in-memory steps/s = {ratio:.2f}; streamed peak RSS = "
          f"{s['peak_rss'] / size:.1%} of the file (target < 1.5 GB)")  # fmt: skip


if __name__ == "__main__":
    main()
