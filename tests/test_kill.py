"""SIGKILL `genlab fit` at seeded random instants (start-up, training, a checkpoint write, the
final save, the save over a finished model) and check after each kill that the folder keeps
its promises: a model in it loads (the old one or the new one), checkpoint.pt loads with
weights_only, and `--resume` continues to a model that loads."""

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import genlab

# The child is `python -m genlab` with a slow disk (each fsync takes 20 ms more), so that
# checkpoint writes and saves last long enough to be killed in the middle of.
SLOW_DISK = (
    "import os, runpy, sys, time; real = os.fsync; "
    "os.fsync = lambda fd: (time.sleep(0.02), real(fd))[1]; "
    "runpy.run_module('genlab', run_name='__main__', alter_sys=True)"
)
ARGS = ["fit", "flow", "--data", "moons", "--n", "300", "--checkpoint-every", "20",
        "--no-progress", "--hidden", "16", "--depth", "1", "--batch-size", "32"]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def logged_steps(folder: Path) -> list[int]:
    steps = []
    path = folder / "log.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(json.JSONDecodeError, KeyError):  # a row being written
            row = json.loads(line)
            if "loss" in row:  # training rows (a validation row repeats its step)
                steps.append(row["step"])
    return steps


def checkpoint_temps(folder: Path) -> set[str]:
    return {p.name for p in folder.glob(".checkpoint.pt.*.tmp")}


def launch(folder: Path, steps: int, trigger=None, delay: float = 0.0) -> bool:
    """Run genlab fit (with --resume) into folder; when trigger(folder) first holds, wait
    `delay` seconds and SIGKILL it. Returns whether it was killed (False: it finished)."""
    cmd = [sys.executable, "-c", SLOW_DISK, *ARGS, "--max-steps", str(steps), "--out",
           str(folder), "--resume"]  # fmt: skip
    child = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while child.poll() is None and trigger is not None and not trigger(folder):
        assert time.monotonic() < deadline, "genlab fit made no progress"
        time.sleep(0.001)
    if child.poll() is None and trigger is not None:
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
    stderr = child.communicate(timeout=120)[1].decode()
    if child.returncode == -signal.SIGKILL:
        return True
    assert child.returncode == 0, stderr[-3000:]
    return False


def check_folder(folder: Path, tmp: Path, models: tuple[int, ...]) -> int | None:
    """The promises after a kill; returns the max_steps of the model it holds (or None).
    The model is loaded from a copy, so the next run sees the folder as the kill left it."""
    if (folder / "checkpoint.pt").exists():
        ckpt = torch.load(folder / "checkpoint.pt", weights_only=True)
        assert 0 < ckpt["step"] <= max(models)
    shutil.rmtree(tmp, ignore_errors=True)
    if not folder.exists():
        return None
    shutil.copytree(folder, tmp)
    if not ((tmp / "config.json").exists() or (tmp / ".pending" / "COMPLETE").exists()):
        return None  # no model yet (an interrupted first save leaves none)
    model = genlab.load(tmp)
    assert model.config.max_steps in models and torch.isfinite(model.sample(5, seed=0)).all()
    return model.config.max_steps


@pytest.mark.slow
def test_sigkill_at_random_instants_never_loses_the_model_or_the_run(tmp_path):
    rng = random.Random(14)
    folder, scratch = tmp_path / "run", tmp_path / "copy"
    plan = [  # (max_steps, trigger, delay after it)
        (400, lambda f: True, rng.uniform(0.3, 1.5)),  # during start-up
        (400, lambda f: max(logged_steps(f), default=0) >= 100, rng.uniform(0, 0.3)),
        # inside a checkpoint write (not the temp file the previous kill left)
        (400, lambda f: checkpoint_temps(f) - stale, rng.uniform(0, 0.015)),
        (400, lambda f: (f / ".pending").exists(), rng.uniform(0, 0.1)),  # the final save
        (400, None, 0.0),  # finishes: the first model
        (440, lambda f: (f / ".pending").exists(), rng.uniform(0, 0.1)),  # saving over it
    ]
    kills, held = 0, []
    for steps, trigger, delay in plan:
        stale = checkpoint_temps(folder) if folder.exists() else set()
        kills += launch(folder, steps, trigger, delay)
        held.append(check_folder(folder, scratch, (400, 440)))
    assert kills >= 4, f"only {kills} of the kills landed before the run ended"
    assert held[4] == 400 and held[5] in (400, 440)  # the old model, or the new one
    assert not launch(folder, 440)  # resumes to the end
    assert check_folder(folder, scratch, (440,)) == 440
    steps = logged_steps(folder)
    assert steps == sorted(set(steps)) and steps[-1] == 440  # resumed, never restarted
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["step"] == 440
    assert not list(folder.glob(".*.tmp")) and not (folder / ".pending").exists()
