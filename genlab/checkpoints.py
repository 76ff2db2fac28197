"""Training checkpoints (torch.save, read back with weights_only=True) and the run's log.jsonl.

A checkpoint holds the raw weights, the optimizer, the EMA, the step, the seconds spent, the
position in the data order, every process's RNG states and the training config; `restore`
puts all of it back, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from genlab.distributed import rank_and_world
from genlab.io import atomic_write

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "log.jsonl"
CHECKPOINT_FORMAT = 1
CHECKPOINT_KEYS = frozenset(
    ("format", "model", "optimizer", "ema", "step", "seconds", "data", "rng", "config")
)
RESUMABLE_CHANGES = ("max_steps", "max_time")  # the config fields a resumed run may change


@dataclasses.dataclass
class RunState:
    """Where a run stands: what a checkpoint stores besides the model and the optimizer."""

    step: int = 0  # optimisation steps done
    seconds: float = 0.0  # wall-clock seconds spent, across resumes
    data: tuple[int, int] = (0, 0)  # (epoch, batch index) of the next batch
    ema: dict[str, torch.Tensor] | None = None  # floating state_dict entries


def rng_state() -> dict[str, Any]:
    """Every global RNG of this process as tensors and numbers (loadable with weights_only)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": [version, torch.tensor(internal, dtype=torch.int64), gauss_next],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal.tolist()), gauss_next))


def config_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as plain JSON values (tuples become lists), as stored."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save(state) to path atomically."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path, config: Any) -> dict[str, Any]:
    """Read a checkpoint (weights_only) and check that `config` may continue it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"{path}: corrupt checkpoint ({type(e).__name__}: {e}); delete it to start afresh"
        ) from None
    if not isinstance(state, dict) or not set(state) >= CHECKPOINT_KEYS:
        raise ValueError(f"{path}: not a genlab training checkpoint")
    if state["format"] > CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: written by a newer genlab (format {state['format']})")
    old, new = state["config"], config_dict(config)
    keys = (old.keys() | new.keys()) - set(RESUMABLE_CHANGES)
    changed = sorted(k for k in keys if old.get(k) != new.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise ValueError(
            f"{path} was written with another config ({diffs}); only {RESUMABLE_CHANGES} may "
            "change on resume: restore the config, or pass resume=False to start afresh"
        )
    return state


def read_log(path: Path, upto: float = math.inf) -> list[dict[str, float]]:
    """The rows of log.jsonl with step <= upto (later rows and a torn last line are dropped)."""
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and row.get("step", math.inf) <= upto:
                rows.append(row)
    return rows


def checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, run: RunState, config: Any
) -> None:
    """Gather every process's RNG states (all processes call this); rank 0 saves them with the
    raw weights, optimizer, EMA, step, seconds, data position and config."""
    rank, world = rank_and_world()
    rngs = [rng_state()]
    if world > 1:
        rngs = [None] * world
        dist.all_gather_object(rngs, rng_state())
    if rank == 0:
        save_checkpoint(path, {
            "format": CHECKPOINT_FORMAT, "step": run.step, "seconds": run.seconds,
            "data": list(run.data), "rng": rngs, "config": config_dict(config),
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "ema": None if run.ema is None else {k: v.cpu() for k, v in run.ema.items()},
        })  # fmt: skip


def restore(
    ckpt: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device
) -> RunState:
    """Load a checkpoint into the model and optimizer (and this process's RNGs)."""
    rank, world = rank_and_world()
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if len(ckpt["rng"]) == world:  # else the world size changed: keep the fresh seeds
        set_rng_state(ckpt["rng"][rank])
    ema = None if ckpt["ema"] is None else {k: v.to(device) for k, v in ckpt["ema"].items()}
    return RunState(ckpt["step"], ckpt["seconds"], tuple(ckpt["data"]), ema)
