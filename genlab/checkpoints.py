"""Training checkpoints (torch.save, read back with weights_only=True) and the run's log.jsonl.

A checkpoint holds the raw weights, the optimizer, the EMA, the step, the seconds spent, the
position in the data order, every process's RNG states, the fp16 gradient scaler, the
validation state (the best evaluation's weights, step and loss, the evaluations since it, and
a fingerprint of the validation rows), the training config and a fingerprint of the data
(`data_fingerprint`); `restore` puts all of it back, so a resumed run continues bit for bit,
and `load_checkpoint` refuses a checkpoint that another config or other data wrote. Fields
added after format 1 ("scaler", "validation") are optional: older checkpoints still resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
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
RESUMABLE_CHANGES = ("max_steps", "max_time", "patience")  # what a resumed run may change
FINGERPRINT_ROWS = 4096  # rows of x and y hashed by data_fingerprint (evenly spaced)
AFRESH = "resume with the same data, or start afresh without --resume (resume=False)"


@dataclasses.dataclass
class RunState:
    """Where a run stands: what a checkpoint stores besides the model and the optimizer."""

    step: int = 0  # optimisation steps done
    seconds: float = 0.0  # wall-clock seconds spent, across resumes
    data: tuple[int, int] = (0, 0)  # (epoch, batch index) of the next batch
    ema: dict[str, torch.Tensor] | None = None  # floating state_dict entries
    best: dict[str, torch.Tensor] | None = None  # the best evaluation's (EMA) weights
    best_step: int | None = None  # the step of the best evaluation
    best_loss: float | None = None  # its validation loss
    bad_evals: int = 0  # evaluations since the best one (patience counts them)
    evaluated: int = -1  # the step of the last evaluation (-1: none yet)


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


def _sha256(t: torch.Tensor) -> str:
    flat = t.detach().cpu().contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()


def data_fingerprint(x: Any, y: torch.Tensor | None) -> dict[str, Any]:
    """What identifies the training data in a checkpoint: x's shape and dtype, and the
    sha256 of up to FINGERPRINT_ROWS evenly spaced rows of x and of y (cheap for any size;
    x is a tensor or a `genlab.data.NpyArray`, whose rows are read)."""
    n = len(x)
    rows = torch.linspace(0, n - 1, min(n, FINGERPRINT_ROWS)).round().long().unique()
    return {
        "shape": list(x.shape),
        "dtype": str(x.dtype).removeprefix("torch."),
        "x_sha256": _sha256(x[rows]),
        "y_sha256": None if y is None else _sha256(y[rows]),
    }


def check_fingerprint(path: Path, old: Any, new: dict[str, Any]) -> None:
    """Refuse to continue a checkpoint written for other data, saying what changed (a
    checkpoint written before fingerprints existed, old None, is trusted)."""
    if old is None or old == new:
        return
    if not isinstance(old, dict):
        raise ValueError(f"{path}: its data fingerprint is edited or corrupt; {AFRESH}")
    if old.get("shape") != new["shape"]:
        old_shape, new_shape = tuple(old.get("shape") or ()), tuple(new["shape"])
        change = f"data of shape {old_shape}; this data has shape {new_shape}"
    elif old.get("dtype") != new["dtype"]:
        change = f"data of dtype {old.get('dtype')}; this data has dtype {new['dtype']}"
    elif old.get("x_sha256") != new["x_sha256"]:
        change = (
            f"other data of the same shape {tuple(new['shape'])} (same shape, different values)"
        )
    else:
        labels = {True: "labels", False: "no labels"}
        was, now = old.get("y_sha256") is not None, new["y_sha256"] is not None
        change = (
            f"data with {labels[was]}; this data has {labels[now]}"
            if was != now
            else "the same x with other labels y (same shape, different values)"
        )
    raise ValueError(f"{path.name} was written for {change}: {AFRESH}")


def check_val_fingerprint(path: Path, ckpt: dict[str, Any], new: dict[str, Any] | None) -> None:
    """Refuse to continue a run's validation on other validation rows (its best loss would
    not compare): a checkpoint without validation state starts validating afresh."""
    old = (ckpt.get("validation") or {}).get("fingerprint")
    if old is not None and new is not None and old != new:
        raise ValueError(
            f"{path.name} was written with other validation data (val= or val_fraction): {AFRESH}"
        )


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save(state) to path atomically."""
    atomic_write(path, lambda f: torch.save(state, f))


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_fields(path: Path, state: dict[str, Any]) -> None:
    """The type of every field (an edited checkpoint is refused here, not deep in restore)."""

    def tensors(v: Any) -> bool:
        return isinstance(v, dict) and all(isinstance(t, torch.Tensor) for t in v.values())

    seconds = state["seconds"]
    rules = {
        "format": _is_count(state["format"]),
        "step": _is_count(state["step"]),
        "seconds": isinstance(seconds, int | float) and math.isfinite(seconds) and seconds >= 0,
        "data": isinstance(state["data"], list | tuple)
        and len(state["data"]) == 2
        and all(map(_is_count, state["data"])),
        "rng": isinstance(state["rng"], list) and all(isinstance(r, dict) for r in state["rng"]),
        "config": isinstance(state["config"], dict),
        "model": tensors(state["model"]),
        "ema": state["ema"] is None or tensors(state["ema"]),
        "optimizer": isinstance(state["optimizer"], dict),
        "scaler": state.get("scaler") is None or isinstance(state.get("scaler"), dict),
        "validation": _valid_validation(state.get("validation"), tensors),
    }
    broken = [name for name, ok in rules.items() if not ok]
    if broken:
        raise ValueError(
            f"{path}: the checkpoint is edited or corrupt (field {', '.join(broken)}); delete "
            "it to start afresh"
        )


def _valid_validation(v: Any, tensors: Any) -> bool:
    if v is None:
        return True
    if not isinstance(v, dict):
        return False
    step, loss = v.get("best_step"), v.get("best_loss")
    return (
        (v.get("best") is None or tensors(v.get("best")))
        and (step is None or _is_count(step))
        and (loss is None or isinstance(loss, int | float))
        and _is_count(v.get("bad_evals"))
        and isinstance(v.get("evaluated"), int)
    )


def load_checkpoint(path: Path, config: Any, fingerprint: dict[str, Any] | None = None) -> dict:
    """Read a checkpoint (weights_only) and check that `config` (and the data whose
    `data_fingerprint` is given) may continue it.

    Raises:
        ValueError: a corrupt or edited checkpoint, or one written with another config or
            for other data (the message says what changed).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"{path}: corrupt checkpoint ({type(e).__name__}: {e}); delete it to start afresh"
        ) from None
    if not isinstance(state, dict) or not set(state) >= CHECKPOINT_KEYS:
        raise ValueError(f"{path}: not a genlab training checkpoint")
    _check_fields(path, state)
    if state["format"] > CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: written by a newer genlab (format {state['format']})")
    old, new = state["config"], config_dict(config)
    defaults = config_dict(type(config)()) if dataclasses.is_dataclass(config) else {}
    old = {**{k: v for k, v in defaults.items() if k not in old}, **old}  # fields added since
    keys = (old.keys() | new.keys()) - set(RESUMABLE_CHANGES)
    changed = sorted(k for k in keys if old.get(k) != new.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise ValueError(
            f"{path} was written with another config ({diffs}); only {RESUMABLE_CHANGES} may "
            "change on resume: restore the config, or pass resume=False to start afresh"
        )
    if fingerprint is not None:
        check_fingerprint(path, state.get("fingerprint"), fingerprint)
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


def _cpu(tensors: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    return None if tensors is None else {k: v.detach().cpu() for k, v in tensors.items()}


def checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, run: RunState, config: Any,
    fingerprint: dict[str, Any] | None = None, *, scaler: Any = None,
    val_fingerprint: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    """Gather every process's RNG states (all processes call this); rank 0 saves them with the
    raw weights, optimizer, EMA, step, seconds, data position, config, data fingerprint, the
    fp16 gradient scaler and the validation state."""
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
            "ema": _cpu(run.ema), "fingerprint": fingerprint,
            "scaler": None if scaler is None else scaler.state_dict(),
            "validation": {
                "best": _cpu(run.best), "best_step": run.best_step, "best_loss": run.best_loss,
                "bad_evals": run.bad_evals, "evaluated": run.evaluated,
                "fingerprint": val_fingerprint,
            },
        })  # fmt: skip


def restore(
    ckpt: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
    path: Path | str = CHECKPOINT_FILE, scaler: Any = None,
) -> RunState:  # fmt: skip
    """Load a checkpoint into the model and optimizer (and this process's RNGs, and the fp16
    gradient scaler when given and stored).

    Raises:
        ValueError: the checkpoint does not fit this model (other options or data): its
            state_dict, optimizer, EMA or RNG states cannot be loaded.
    """
    rank, world = rank_and_world()
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if not ckpt["rng"]:
            raise ValueError("it holds no RNG states")
        if len(ckpt["rng"]) == world:  # else the world size changed: keep the fresh seeds
            set_rng_state(ckpt["rng"][rank])
        state = model.state_dict()
        ema = None if ckpt["ema"] is None else {k: v.to(device) for k, v in ckpt["ema"].items()}
        for k, v in (ema or {}).items():
            if k not in state or state[k].shape != v.shape:
                raise KeyError(f"EMA entry {k!r} of shape {tuple(v.shape)} is not in the model")
        floating = {k for k, v in state.items() if v.is_floating_point()}
        if ema is not None and set(ema) != floating:
            raise ValueError(f"its EMA holds {len(ema)} of the model's {len(floating)} weights")
        val = ckpt.get("validation") or {}
        best = (
            None if val.get("best") is None else {k: v.to(device) for k, v in val["best"].items()}
        )
        if best is not None and any(k not in state or state[k].shape != v.shape
                                    for k, v in best.items()):  # fmt: skip
            raise ValueError("its best validation weights do not fit the model")
        if scaler is not None and ckpt.get("scaler") is not None:
            scaler.load_state_dict(ckpt["scaler"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        detail = " ".join(str(e).split())[:300]
        raise ValueError(f"{path} does not fit this model ({detail}): {AFRESH}") from None
    return RunState(ckpt["step"], ckpt["seconds"], tuple(ckpt["data"]), ema, best,
                    val.get("best_step"), val.get("best_loss"), val.get("bad_evals", 0),
                    val.get("evaluated", -1))  # fmt: skip
