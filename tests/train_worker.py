"""A tiny regression trained by `genlab.train.fit` in a subprocess, for test_train.py.

    python tests/train_worker.py OUT --steps N [--checkpoint-every K] [--resume] [--noise]
        [--sleep SECONDS] [--batch-size B] [--rows N [N ...]] [--accum K [K ...]] [--val]
        [--kill-at STEP] [--reference]

One run per number of rows and of micro-batches per step (grad_accum_steps K), in
OUT/rows{N} (K = 1) or OUT/rows{N}_accum{K} (checkpoint.pt, log.jsonl and final.pt, the final
EMA weights written by rank 0). Under torchrun (RANK set) it joins a gloo process group
first. `--sleep` slows each step (inside the loss) so that the test can kill it mid-run;
`--kill-at STEP` makes every process SIGKILL itself after that optimisation step (from a
callback, before that step's evaluation and checkpoint), a kill at a known step without
polling; `--reference` first trains each run uninterrupted (no kill) into OUT/reference/.
"""

import argparse
import os
import random
import signal
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from genlab.train import TrainConfig, fit


def make_data(n: int = 96, d: int = 4, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """y = x a + 0.5 + noise: x (n, d), y (n,)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    a = torch.linspace(-1.0, 2.0, d)
    return x, x @ a + 0.5 + 0.1 * torch.randn(n, generator=g)


class Regressor(nn.Module):
    """A linear or 2-layer MLP regressor whose loss is the mean squared error.

    With `noise`, the inputs are jittered using the torch, NumPy and Python RNGs, so the loss
    is random and an exact resume needs every RNG state restored.
    """

    def __init__(self, d: int = 4, hidden: int | None = None, noise: bool = False, sleep=0.0):
        super().__init__()
        if hidden is None:
            self.net = nn.Linear(d, 1)
        else:
            self.net = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.noise, self.sleep = noise, sleep

    def loss(self, batch: tuple[torch.Tensor, ...], step: int) -> dict[str, torch.Tensor]:
        x, y = batch
        if self.sleep:
            time.sleep(self.sleep)
        if self.noise:
            scale = 0.1 * (1 + float(np.random.rand()) + random.random())
            x = x + scale * torch.randn_like(x)
        mse = (self.net(x).squeeze(-1) - y).square().mean()
        return {"loss": mse, "mse": mse.detach()}


def config(steps: int, batch_size: int = 32, accum: int = 1, val: bool = False) -> TrainConfig:
    """The worker's config; `val`: hold out a fifth of the rows, evaluated every 5 steps."""
    validation = {"val_fraction": 0.2, "eval_every": 5} if val else {}
    return TrainConfig(max_steps=steps, batch_size=batch_size, lr=3e-2, warmup_steps=5,
                       ema_decay=0.9, seed=7, grad_accum_steps=accum, **validation)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--noise", action="store_true")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--rows", type=int, nargs="+", default=[96])
    parser.add_argument("--accum", type=int, nargs="+", default=[1])
    parser.add_argument("--val", action="store_true")
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--reference", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if "RANK" in os.environ:
        dist.init_process_group("gloo")

    def kill(step: int, model: nn.Module) -> None:
        if step == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    roots = [(os.path.join(args.out, "reference"), False)] if args.reference else []
    for root, killed in [*roots, (args.out, args.kill_at is not None)]:
        for rows in args.rows:
            for accum in args.accum:
                name = f"rows{rows}" + (f"_accum{accum}" if accum > 1 else "")
                out = os.path.join(root, name)
                torch.manual_seed(0)
                model = Regressor(hidden=8, noise=args.noise, sleep=args.sleep)
                x, y = make_data(rows)
                hook = {"callback": kill, "callback_every": 1} if killed else {}
                fit(model, x, y, config(args.steps, args.batch_size, accum, args.val), out=out,
                    resume=args.resume, checkpoint_every=args.checkpoint_every, log_every=1,
                    progress=False, **hook)  # fmt: skip
                if not dist.is_initialized() or dist.get_rank() == 0:
                    torch.save(model.state_dict(), os.path.join(out, "final.pt"))
    if dist.is_initialized():
        dist.barrier()  # gloo aborts if one rank tears down while another still runs
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
