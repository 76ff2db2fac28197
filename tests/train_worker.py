"""A tiny regression trained by `genlab.train.fit` in a subprocess, for test_train.py.

    python tests/train_worker.py OUT --steps N [--checkpoint-every K] [--resume] [--noise]
        [--sleep SECONDS] [--batch-size B] [--rows N [N ...]]

One run per number of rows, in OUT/rows{N} (checkpoint.pt, log.jsonl and final.pt, the final
EMA weights written by rank 0). Under torchrun (RANK set) it joins a gloo process group
first. `--sleep` slows each step (inside the loss) so that the test can kill it mid-run.
"""

import argparse
import os
import random
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


def config(steps: int, batch_size: int = 32) -> TrainConfig:
    return TrainConfig(max_steps=steps, batch_size=batch_size, lr=3e-2, warmup_steps=5,
                       ema_decay=0.9, seed=7)  # fmt: skip


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
    args = parser.parse_args()
    torch.set_num_threads(1)
    if "RANK" in os.environ:
        dist.init_process_group("gloo")
    for rows in args.rows:
        out = os.path.join(args.out, f"rows{rows}")
        torch.manual_seed(0)
        model = Regressor(hidden=8, noise=args.noise, sleep=args.sleep)
        x, y = make_data(rows)
        fit(model, x, y, config(args.steps, args.batch_size), out=out, resume=args.resume,
            checkpoint_every=args.checkpoint_every, log_every=1, progress=False)  # fmt: skip
        if not dist.is_initialized() or dist.get_rank() == 0:
            torch.save(model.state_dict(), os.path.join(out, "final.pt"))
    if dist.is_initialized():
        dist.barrier()  # gloo aborts if one rank tears down while another still runs
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
