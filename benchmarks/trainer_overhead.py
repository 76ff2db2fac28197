"""The trainer's steps/s against a bare PyTorch loop of the same network and optimiser.

    OMP_NUM_THREADS=1 python benchmarks/trainer_overhead.py [--steps 1500] [--rounds 7]

Flow matching on moons (the family's default MLP, batch 128), one thread. The bare loop is
what one would write by hand: a shuffled batch, `model.loss`, backward, global-norm clipping,
the same AdamW (`train.make_optimizer`) with the learning rate set each step and the same EMA
(`torch._foreach_lerp_`). The trainer is `genlab.train.fit` with validation on (1,000 held-out
rows every `eval_every` = 250 steps), logging every 50 steps, no progress bar. The two
alternate within one run (the machine is noisy, PERF.md); the ratio of each round's pair and
their median are printed. Target: trainer / bare >= 0.95.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time

import torch

from genlab import train
from genlab.data import load_dataset
from genlab.models.base import TrainingData
from genlab.models.flow import FlowMatching


def fresh_model(data: TrainingData, seed: int = 0) -> tuple[FlowMatching, torch.Tensor]:
    model = FlowMatching(seed=seed, device="cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        x, _ = model._setup(data)
    return model, x


def bare_loop(data: TrainingData, steps: int) -> tuple[float, float]:
    """Steps per wall-clock second and per CPU second of a hand-written loop doing the
    trainer's work per step."""
    model, x = fresh_model(data)
    config = model.config
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = train.make_optimizer(params, config)
    state = model.state_dict()
    ema = {k: v.detach().clone() for k, v in state.items() if v.is_floating_point()}
    averages, weights = list(ema.values()), [state[k] for k in ema]
    model.train()
    n, b = len(x), config.batch_size
    order = torch.randperm(n)
    start, cpu = time.perf_counter(), time.process_time()
    for step in range(steps):
        i = step % (n // b)
        if i == 0:
            order = torch.randperm(n)
        rows = order[i * b : (i + 1) * b]
        for group in optimizer.param_groups:
            group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = model.loss((x[rows],), step)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch._foreach_lerp_(averages, weights, 1 - config.ema_decay)
    float(loss.detach())  # the last step done
    return steps / (time.perf_counter() - start), steps / (time.process_time() - cpu)


def trainer_loop(data: TrainingData, val: torch.Tensor, steps: int) -> tuple[float, float]:
    """Steps per wall-clock second and per CPU second of the whole `train.fit` call."""
    model, x = fresh_model(data)
    config = dataclasses.replace(model.config, max_steps=steps)
    start, cpu = time.perf_counter(), time.process_time()
    result = train.fit(model, x, None, config, val=(val, None), progress=False, device="cpu")
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert result.best_step is not None
    return steps / wall, steps / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = TrainingData.from_input(load_dataset("moons", n=10_000, seed=0))
    val = load_dataset("moons", split="test", n=1000, seed=0).x
    bare_loop(data, 100), trainer_loop(data, val, 100)  # warm caches and allocators
    wall_ratios, cpu_ratios = [], []
    print(f"flow matching on moons, batch 128, {args.steps} steps per run, 1 thread")
    print("round  steps/s bare (wall / cpu)  trainer (wall / cpu)  ratio (wall / cpu)")
    for r in range(args.rounds):
        if r % 2:  # alternate which side goes first
            trainer = trainer_loop(data, val, args.steps)
            bare = bare_loop(data, args.steps)
        else:
            bare = bare_loop(data, args.steps)
            trainer = trainer_loop(data, val, args.steps)
        wall_ratios.append(trainer[0] / bare[0])
        cpu_ratios.append(trainer[1] / bare[1])
        print(f"{r:5d}  {bare[0]:10.0f} / {bare[1]:5.0f}  {trainer[0]:10.0f} / {trainer[1]:5.0f}"
              f"   {wall_ratios[-1]:.3f} / {cpu_ratios[-1]:.3f}")  # fmt: skip
    print(f"median ratio trainer / bare: {statistics.median(wall_ratios):.3f} (wall clock), "
          f"{statistics.median(cpu_ratios):.3f} (CPU time); target >= 0.95")  # fmt: skip


if __name__ == "__main__":
    main()
