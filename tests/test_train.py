"""genlab.train: the schedule and EMA against hand computations, least squares as an oracle,
exact resume after SIGKILL and torchrun against one process (both in subprocesses)."""

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from genlab import train
from genlab.train import (
    TrainConfig,
    ema_decay_at,
    fit,
    iterate_batches,
    lr_at,
    planned_steps,
)

WORKER = Path(__file__).parent / "train_worker.py"
sys.path.insert(0, str(WORKER.parent))
from train_worker import Regressor, make_data  # noqa: E402
from train_worker import config as worker_config  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**changes) -> TrainConfig:
    base = dict(max_steps=30, batch_size=32, lr=3e-2, warmup_steps=5, ema_decay=None, seed=1)
    return TrainConfig(**{**base, **changes})


def linear_model(seed: int = 0) -> Regressor:
    torch.manual_seed(seed)
    return Regressor()


# -- the maths --------------------------------------------------------------------------------
def test_lr_at_hand_computed():
    c = TrainConfig(max_steps=110, lr=2.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, c, 110) == pytest.approx(0.2)  # (0 + 1) / 10 of the peak
    assert lr_at(4, c, 110) == pytest.approx(1.0)
    assert lr_at(9, c, 110) == pytest.approx(2.0)  # the peak at the end of warm-up
    assert lr_at(10, c, 110) == pytest.approx(2.0)  # cosine starts at the peak, t = 0
    assert lr_at(60, c, 110) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))  # t = 1/2
    assert lr_at(35, c, 110) == pytest.approx(2.0 * (0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2))
    assert lr_at(110, c, 110) == pytest.approx(0.2)  # lr * min_lr_ratio at the end
    assert lr_at(500, c, 110) == pytest.approx(0.2)


def test_planned_steps_follow_the_limit_that_ends_first():
    steps_only = TrainConfig(max_steps=100)
    time_only = TrainConfig(max_steps=None, max_time=10.0)
    both = TrainConfig(max_steps=100, max_time=10.0)
    assert planned_steps(50, 5.0, steps_only) == 100
    assert planned_steps(50, 2.5, time_only) == pytest.approx(200)  # pace: 20 steps/s for 10 s
    assert planned_steps(50, 2.5, both) == 100
    assert planned_steps(50, 8.0, both) == pytest.approx(62.5)
    assert planned_steps(0, 0.0, time_only) == math.inf
    # with no warm-up, progress is seconds / max_time
    c = TrainConfig(max_steps=None, max_time=10.0, warmup_steps=0, lr=1.0, min_lr_ratio=0.0)
    assert lr_at(30, c, planned_steps(30, 5.0, c)) == pytest.approx(0.5)


def test_ema_decay_at_gives_bias_corrected_weights():
    d, thetas = 0.9, [3.0, -1.0, 4.0, 1.5, 9.0]
    ema = 0.0
    for t, theta in enumerate(thetas, start=1):
        decay = ema_decay_at(d, t)
        ema = decay * ema + (1 - decay) * theta
        weights = [d ** (t - i) for i in range(1, t + 1)]
        expected = sum(w * th for w, th in zip(weights, thetas, strict=False)) / sum(weights)
        assert ema == pytest.approx(expected, rel=1e-12)
    assert ema_decay_at(d, 1) == 0.0  # the first update copies
    assert ema_decay_at(d, 10_000) == pytest.approx(d)


def test_iterate_batches_cover_each_epoch_and_resume_from_a_position():
    it = iterate_batches(10, 3, seed=5)
    first = [next(it) for _ in range(7)]
    assert [(e, i) for e, i, _ in first] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)]
    epoch0 = torch.cat([rows for e, _, rows in first if e == 0])
    assert len(epoch0) == 9 and len(set(epoch0.tolist())) == 9  # the incomplete batch dropped
    epoch1 = torch.cat([rows for e, _, rows in first if e == 1])
    assert not torch.equal(epoch0, epoch1)  # a new order each epoch
    again = iterate_batches(10, 3, seed=5, epoch=1, index=2)
    for (e, i, rows), (e2, i2, rows2) in zip(first[5:], [next(again), next(again)], strict=True):
        assert (e, i) == (e2, i2) and torch.equal(rows, rows2)
    assert not torch.equal(next(iterate_batches(10, 3, seed=6))[2], first[0][2])
    small = [rows for _, _, rows in (next(it) for it in [iterate_batches(5, 8, 0)] * 2)]
    assert all(sorted(r.tolist()) == list(range(5)) for r in small)  # n < batch: all rows


# -- training ---------------------------------------------------------------------------------
def test_fit_reaches_the_least_squares_solution():
    x, y = make_data(n=256)
    model = linear_model()
    config = tiny(max_steps=300, batch_size=64, lr=5e-2, min_lr_ratio=0.01, grad_clip=None)
    result = fit(model, x, y, config, log_every=10, progress=False)
    design = torch.cat([x, torch.ones(len(x), 1)], dim=1).double()
    solution = torch.linalg.lstsq(design, y.double().unsqueeze(1)).solution.squeeze(1)
    got = torch.cat([model.net.weight.squeeze(0), model.net.bias]).double()
    torch.testing.assert_close(got, solution, atol=2e-2, rtol=0)
    assert result.steps == 300 and [r["step"] for r in result.history] == list(range(10, 301, 10))
    assert result.history[-1]["loss"] < result.history[0]["loss"] / 10
    assert not model.training and set(result.history[0]) == {"step", "loss", "mse", "lr", "seconds"}


def test_ema_weights_are_the_bias_corrected_average_of_the_trajectory():
    x, y = make_data()
    trajectory = []

    def record(step, model):
        trajectory.append({k: v.clone() for k, v in model.state_dict().items()})

    fit(linear_model(), x, y, tiny(), callback=record, callback_every=1, progress=False)
    decay = 0.8
    model = linear_model()
    fit(model, x, y, tiny(ema_decay=decay), progress=False)
    weights = [decay ** (len(trajectory) - i) for i in range(1, len(trajectory) + 1)]
    for name, value in model.state_dict().items():
        expected = sum(w * s[name] for w, s in zip(weights, trajectory, strict=True)) / sum(weights)
        torch.testing.assert_close(value, expected, atol=1e-6, rtol=1e-6)
        assert not torch.allclose(value, trajectory[-1][name], atol=1e-4)  # not the raw weights


def test_callback_sees_ema_weights_in_eval_mode_and_its_result_is_logged(tmp_path):
    x, y = make_data()
    seen = []

    def evaluate(step, model):
        seen.append((step, model.training, model.net.weight.detach().clone()))
        return {"val": float(step) * 2}

    model = linear_model()
    result = fit(model, x, y, tiny(ema_decay=0.5), out=tmp_path, callback=evaluate,
                 callback_every=10, log_every=5, progress=False)  # fmt: skip
    assert [(s, training) for s, training, _ in seen] == [(10, False), (20, False), (30, False)]
    torch.testing.assert_close(seen[-1][2], model.net.weight)  # the final (EMA) weights
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert not torch.equal(ckpt["model"]["net.weight"], seen[-1][2])  # raw weights differ
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert rows == result.history
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]
    assert [r.get("val") for r in rows] == [None, 20.0, None, 40.0, None, 60.0]


def test_max_time_stops_within_the_budget():
    x, y = make_data()
    config = tiny(max_steps=None, max_time=0.5, warmup_steps=0, min_lr_ratio=0.0)
    result = fit(linear_model(), x, y, config, log_every=1, progress=False)
    assert 0.5 <= result.seconds < 5.0
    assert result.steps == len(result.history) > 5
    assert result.history[-1]["lr"] < 0.2 * config.lr  # the cosine followed the clock to ~0


def test_x_only_batches_and_a_dataset_smaller_than_the_batch():
    sizes = []

    class Mean(nn.Module):
        def __init__(self):
            super().__init__()
            self.mu = nn.Parameter(torch.zeros(3))

        def loss(self, batch, step):
            (xb,) = batch
            sizes.append(len(xb))
            return {"loss": (xb - self.mu).square().sum(1).mean()}

    x = torch.randn(20, 3) + torch.tensor([1.0, -2.0, 3.0])
    model = Mean()
    fit(model, x, None, tiny(max_steps=400, batch_size=64, lr=0.1, ema_decay=0.9), progress=False)
    assert set(sizes) == {20}
    torch.testing.assert_close(model.mu.detach(), x.mean(0), atol=1e-3, rtol=0)


def test_bf16_autocast_runs_on_the_cpu_and_learns():
    x, y = make_data(n=256)
    result = fit(linear_model(), x, y, tiny(max_steps=100, precision="bf16"), log_every=10)
    assert result.history[-1]["loss"] < result.history[0]["loss"] / 5
    fp32 = fit(linear_model(), x, y, tiny(max_steps=100), log_every=10)
    assert result.history[0]["loss"] != fp32.history[0]["loss"]  # autocast changed the maths


def test_compile_wraps_the_loss(monkeypatch):
    compiled = []

    def fake_compile(fn):
        compiled.append(fn)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    x, y = make_data()
    model = linear_model()
    fit(model, x, y, tiny(max_steps=2, compile=True), progress=False)
    assert compiled == [model.loss]


def test_a_non_finite_loss_raises():
    class Broken(Regressor):
        def loss(self, batch, step):
            return {"loss": super().loss(batch, step)["loss"] * float("nan")}

    with pytest.raises(train.DivergedError, match=r"training diverged: .* step 2; lower the") as e:
        fit(Broken(), *make_data(), tiny(), log_every=2, progress=False)
    assert isinstance(e.value, FloatingPointError) and isinstance(e.value, ValueError)


# -- checkpoints and resume ---------------------------------------------------------------------
def test_checkpoint_is_atomic_and_weights_only_and_the_log_is_json(tmp_path):
    x, y = make_data()
    model = linear_model()
    fit(model, x, y, tiny(max_steps=12, ema_decay=0.9), out=tmp_path, checkpoint_every=5,
        log_every=2, progress=False)  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "log.jsonl"]
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 12 and ckpt["config"]["max_steps"] == 12 and ckpt["seconds"] > 0
    assert ckpt["data"] == [3, 3]  # 3 batches per epoch: 12 steps end after epoch 3's batch 2
    assert {"torch", "numpy", "python", "cuda"} <= set(ckpt["rng"][0])
    for name, value in model.state_dict().items():
        assert torch.equal(ckpt["ema"][name], value)
        assert not torch.equal(ckpt["model"][name], value)
    assert ckpt["optimizer"]["state"]  # AdamW moments
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10, 12]
    assert all(math.isfinite(r["loss"]) and r["lr"] > 0 for r in rows)


def test_resume_may_extend_max_steps_but_not_change_the_rest(tmp_path):
    x, y = make_data()
    fit(linear_model(), x, y, tiny(max_steps=10), out=tmp_path, log_every=1, progress=False)
    with pytest.raises(ValueError, match=r"lr: 0.03 -> 0.01"):
        fit(linear_model(), x, y, tiny(max_steps=20, lr=1e-2), out=tmp_path, resume=True)
    result = fit(linear_model(), x, y, tiny(max_steps=20), out=tmp_path, resume=True,
                 log_every=1, progress=False)  # fmt: skip
    assert result.steps == 20 and [r["step"] for r in result.history] == list(range(1, 21))
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 21))


def test_a_corrupt_checkpoint_raises_naming_the_file(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"checkpoint\.pt"):
        fit(linear_model(), *make_data(), tiny(), out=tmp_path, resume=True)
    torch.save({"step": 3}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"checkpoint\.pt: not a genlab training checkpoint"):
        fit(linear_model(), *make_data(), tiny(), out=tmp_path, resume=True)


def test_files_honour_the_umask_and_killed_writes_are_cleaned_up(tmp_path):
    x, y = make_data()
    stale = [tmp_path / ".checkpoint.pt.k1ll3d.tmp", tmp_path / ".log.jsonl.abc.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    (tmp_path / "notes.tmp").write_text("the user's")
    before = os.umask(0o002)
    try:
        fit(linear_model(), x, y, tiny(max_steps=2), out=tmp_path, progress=False)
    finally:
        os.umask(before)
    assert not any(p.exists() for p in stale) and (tmp_path / "notes.tmp").exists()
    for name in ("checkpoint.pt", "log.jsonl"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o664, name


def test_resume_refuses_other_data_saying_what_changed(tmp_path):
    x, y = make_data()
    fit(linear_model(), x, y, tiny(max_steps=4), out=tmp_path, progress=False)
    later = tiny(max_steps=8)
    cases = {
        r"data of shape \(96, 4\); this data has shape \(50, 4\)": make_data(50),
        r"same shape \(96, 4\) \(same shape, different values\)": make_data(seed=4),
        r"other labels y \(same shape, different values\)": (x, y + 1),
        "data of dtype float32; this data has dtype float64": (x.double(), y),
    }
    for message, data in cases.items():
        with pytest.raises(ValueError, match=message + ": resume with the same data, or start"):
            fit(linear_model(), *data, later, out=tmp_path, resume=True)
    assert fit(linear_model(), x, y, later, out=tmp_path, resume=True).steps == 8


def test_a_checkpoint_without_a_fingerprint_resumes_as_before(tmp_path):
    x, y = make_data()
    fit(linear_model(), x, y, tiny(max_steps=4), out=tmp_path, progress=False)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["fingerprint"]["shape"] == [96, 4]
    del ckpt["fingerprint"]
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    x2, y2 = make_data(seed=4)  # unknowable without a fingerprint: trusted
    assert fit(linear_model(), x2, y2, tiny(max_steps=6), out=tmp_path, resume=True).steps == 6


def test_a_checkpoint_of_another_model_or_edited_is_a_value_error(tmp_path):
    x, y = make_data()
    fit(linear_model(), x, y, tiny(max_steps=4), out=tmp_path, progress=False)
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=r"checkpoint\.pt does not fit this model \(.*: resume"):
        fit(Regressor(hidden=8), x, y, tiny(max_steps=8), out=tmp_path, resume=True)
    good = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    for field, value in [("step", "3"), ("step", -1), ("seconds", float("nan")), ("data", [1]),
                         ("model", [1, 2]), ("rng", 5), ("ema", {"a": 1})]:  # fmt: skip
        torch.save({**good, field: value}, tmp_path / "checkpoint.pt")
        with pytest.raises(ValueError, match=rf"edited or corrupt \(field {field}\); delete it"):
            fit(linear_model(), x, y, tiny(max_steps=8), out=tmp_path, resume=True)


def test_resume_without_a_checkpoint_starts_afresh(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"step": 1, "loss": 9.0}\n')  # a run killed early
    result = fit(linear_model(), *make_data(), tiny(max_steps=4), out=tmp_path, resume=True,
                 log_every=1, progress=False)  # fmt: skip
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4] and result.steps == 4


@pytest.mark.parametrize(
    "changes",
    [
        {"lr": -1.0},
        {"lr": float("nan")},
        {"max_steps": 0},
        {"max_steps": 2.5},
        {"max_time": -1.0},
        {"batch_size": 0},
        {"batch_size": True},
        {"weight_decay": -0.1},
        {"warmup_steps": -1},
        {"min_lr_ratio": 1.5},
        {"grad_clip": 0.0},
        {"ema_decay": 1.0},
        {"precision": "fp8"},
        {"grad_accum_steps": 0},
        {"eval_every": 0},
        {"patience": 0},
        {"val_fraction": 1.0},
        {"data_window": 0},
        {"compile": "yes"},
    ],
)
def test_bad_config_values_raise(changes):
    with pytest.raises(ValueError, match=next(iter(changes))):
        tiny(**changes)


def test_max_time_alone_is_the_whole_budget():
    """max_steps applies only when given; neither budget: DEFAULT_MAX_STEPS."""
    assert TrainConfig(max_time=5.0).step_limit is None
    assert TrainConfig().step_limit == train.DEFAULT_MAX_STEPS
    assert TrainConfig(max_steps=7, max_time=5.0).step_limit == 7
    run = train.RunState(step=10_000, seconds=1.0)
    assert not train.budget_spent(run, TrainConfig(max_time=5.0))
    assert train.budget_spent(train.RunState(step=3, seconds=6.0), TrainConfig(max_time=5.0))


def test_fit_leaves_the_callers_rng_alone():
    """fit draws its noise from its own seeded state and gives the caller's back."""
    import random

    import numpy as np

    x, y = make_data()
    model = Regressor(noise=True)
    torch.manual_seed(123), np.random.seed(5), random.seed(9)
    expected = (torch.rand(3), np.random.rand(), random.random())
    torch.manual_seed(123), np.random.seed(5), random.seed(9)
    fit(model, x, y, tiny(max_steps=3))
    got = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


def test_bad_fit_arguments_raise(tmp_path):
    x, y = make_data()
    with pytest.raises(ValueError, match="out folder"):
        fit(linear_model(), x, y, tiny(), resume=True)
    with pytest.raises(ValueError, match="together"):
        fit(linear_model(), x, y, tiny(), callback=lambda s, m: None)
    with pytest.raises(ValueError, match="log_every"):
        fit(linear_model(), x, y, tiny(), log_every=0)
    with pytest.raises(ValueError, match="rows"):
        fit(linear_model(), x, y[:5], tiny())
    with pytest.raises(TypeError, match="TrainConfig"):
        fit(linear_model(), x, y, {"max_steps": 3})


# -- subprocesses: SIGKILL + resume, torchrun -----------------------------------------------------
def worker(out: Path, *args: str) -> list[str]:
    return [sys.executable, str(WORKER), str(out), "--steps", "40", "--checkpoint-every", "10",
            "--noise", "--val", *args]  # fmt: skip


def logged_steps(path: Path) -> list[int]:
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a row being written
            steps.append(json.loads(line)["step"])
    return steps


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    reference = subprocess.Popen(worker(tmp_path / "ref"), env=ENV, stderr=subprocess.PIPE)
    victim = subprocess.Popen(worker(tmp_path / "run", "--sleep", "0.1"), env=ENV)
    ref, run = tmp_path / "ref" / "rows96", tmp_path / "run" / "rows96"
    deadline = time.monotonic() + 120
    while max(logged_steps(run / "log.jsonl"), default=0) < 14:  # past the step-10 checkpoint
        assert victim.poll() is None, "the worker ended before it could be killed"
        assert time.monotonic() < deadline, "the worker made no progress"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
    assert 10 <= killed_at < 40 and max(logged_steps(run / "log.jsonl")) > killed_at
    resumed = subprocess.run(
        worker(tmp_path / "run", "--resume"), env=ENV, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert reference.wait(timeout=120) == 0, reference.stderr.read().decode()[-3000:]

    a, b = (torch.load(p / "checkpoint.pt", weights_only=True) for p in (ref, run))
    assert a["step"] == b["step"] == 40
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    for slot, moments in a["optimizer"]["state"].items():
        assert torch.equal(moments["exp_avg_sq"], b["optimizer"]["state"][slot]["exp_avg_sq"])
    final_a, final_b = (torch.load(p / "final.pt", weights_only=True) for p in (ref, run))
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    assert logged_steps(run / "log.jsonl") == sorted([*range(1, 41), *range(5, 41, 5)])  # once
    for name in a["validation"]["best"]:  # the best weights and the patience count too
        assert torch.equal(a["validation"]["best"][name], b["validation"]["best"][name])
    assert a["validation"]["best_step"] == b["validation"]["best_step"]


def test_torchrun_two_processes_match_one(tmp_path):
    """A fifth of the rows held out for validation. 77 training rows: 2 batches of 32 per
    epoch, 16 rows per process. 25 rows < batch_size 32: every batch is all 25 rows, shared
    13 + 12, so the gradients must be weighted by share; with 2 micro-batches per step (DDP's
    no_sync on the first), 13 rows are 7 + 6. Validation gives the same curve."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    args = [str(WORKER), str(tmp_path), "--steps", "30", "--rows", "96", "31", "--accum", "1", "2",
            "--val"]  # fmt: skip
    done = subprocess.run([*cmd, *args], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for n, accum in [(96, 1), (31, 1), (96, 2), (31, 2)]:
        torch.manual_seed(0)  # as the worker builds its model
        single = Regressor(hidden=8)
        result = fit(single, *make_data(n), worker_config(30, accum=accum, val=True), log_every=1)
        folder = tmp_path / (f"rows{n}" + (f"_accum{accum}" if accum > 1 else ""))
        both = torch.load(folder / "final.pt", weights_only=True)
        for name, value in single.state_dict().items():
            torch.testing.assert_close(both[name], value, atol=1e-5, rtol=0)
        start = Regressor(hidden=8).state_dict()  # a different init: training moved the weights
        assert not torch.allclose(both["net.0.weight"], start["net.0.weight"], atol=1e-2)
        log = (folder / "log.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in log]
        steps = [r["step"] for r in rows if "loss" in r]
        assert steps == list(range(1, 31))  # rank 0 alone wrote the log
        assert [r["step"] for r in rows if "val_loss" in r] == list(range(5, 31, 5))
        for row, expected in zip(rows, result.history, strict=True):  # global means, not sums
            for key in ("loss", "mse", "grad_norm", "lr", "val_loss"):
                if key in expected:
                    assert row[key] == pytest.approx(expected[key], rel=1e-4), (n, row, key)


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def test_resume_under_torchrun_is_bit_identical(tmp_path):
    """2 processes (gloo) with per-process noise from torch, NumPy and Python RNGs, validation
    and 2 micro-batches per step: both SIGKILL themselves at step 15 (after the step-10
    checkpoint; the same launch first trains an uninterrupted reference), then a torchrun
    --resume must end bit for bit where the reference did: weights, EMA, AdamW moments, best
    validation state, both processes' RNG states and the logged numbers."""
    args = [str(WORKER), str(tmp_path), "--steps", "30", "--checkpoint-every", "10", "--noise",
            "--val", "--accum", "2"]  # fmt: skip
    killed = subprocess.run([*TORCHRUN, *args, "--kill-at", "15", "--reference"], env=ENV,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    ref, run = tmp_path / "reference" / "rows96_accum2", tmp_path / "rows96_accum2"
    assert (ref / "final.pt").exists(), killed.stderr[-3000:]
    assert killed.returncode != 0 and "SIGKILL" in killed.stderr, killed.stderr[-3000:]
    assert not (run / "final.pt").exists()
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 10
    assert max(logged_steps(run / "log.jsonl")) == 14  # killed past the checkpoint (the
    # callback runs before step 15's row is written)
    resumed = subprocess.run([*TORCHRUN, *args, "--resume"], env=ENV, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a, b = (torch.load(p / "checkpoint.pt", weights_only=True) for p in (ref, run))
    assert a["step"] == b["step"] == 30 and a["data"] == b["data"]
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for slot, moments in a["optimizer"]["state"].items():
        for name, value in moments.items():
            assert torch.equal(value, b["optimizer"]["state"][slot][name]), (slot, name)
    assert len(a["rng"]) == len(b["rng"]) == 2  # each process's RNG states, not rank 0's twice
    assert not torch.equal(a["rng"][0]["torch"], a["rng"][1]["torch"])
    for rank in range(2):
        for name in ("torch", "numpy", "python"):
            assert str(a["rng"][rank][name]) == str(b["rng"][rank][name]), (rank, name)
    va, vb = a["validation"], b["validation"]
    assert va["best"] is not None and va["best"].keys() == vb["best"].keys()
    assert all(torch.equal(va["best"][k], vb["best"][k]) for k in va["best"])
    for key in ("best_step", "best_loss", "bad_evals", "evaluated"):
        assert va[key] == vb[key], key
    final_a, final_b = (torch.load(p / "final.pt", weights_only=True) for p in (ref, run))
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    start = Regressor(hidden=8).state_dict()  # trained weights, not a copied initialisation
    assert not torch.allclose(final_a["net.0.weight"], start["net.0.weight"], atol=1e-2)
    rows_a, rows_b = (read_rows(p / "log.jsonl") for p in (ref, run))
    assert [r["step"] for r in rows_b] == sorted([*range(1, 31), *range(5, 31, 5)])  # once
    for row_a, row_b in zip(rows_a, rows_b, strict=True):
        assert {k: v for k, v in row_a.items() if k != "seconds"} == {
            k: v for k, v in row_b.items() if k != "seconds"
        }


def read_rows(path: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_batch_size_must_divide_among_processes(monkeypatch):
    monkeypatch.setattr(train, "rank_and_world", lambda: (0, 2))
    with pytest.raises(ValueError, match="not divisible by 2 processes"):
        fit(linear_model(), *make_data(), tiny(batch_size=31))
    with pytest.raises(ValueError, match="1 rows cannot be shared by 2"):
        x, y = make_data(1)
        fit(linear_model(), x, y, tiny(batch_size=32))


def test_the_optimizer_steps_bit_for_bit_as_the_per_tensor_adamw_loop():
    # foreach kernels for speed, the same numbers as torch's reference loop (foreach=False)
    def run(make) -> list[torch.Tensor]:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.GELU(), torch.nn.Linear(16, 3))
        opt = make(list(net.parameters()))
        g = torch.Generator().manual_seed(1)
        for i in range(20):
            for group in opt.param_groups:
                group["lr"] = 1e-2 * (1 + i % 3)
            x = torch.randn(32, 3, generator=g)
            (net(x) - x).square().mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return [p.detach().clone() for p in net.parameters()]

    config = TrainConfig(lr=1e-2, weight_decay=0.1)

    def loop(params):
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.1},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]  # fmt: skip
        return torch.optim.AdamW(groups, lr=1e-2, foreach=False)

    ours, reference = run(lambda p: train.make_optimizer(p, config)), run(loop)
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(ours[0], run(lambda p: torch.optim.SGD(p, lr=1e-2))[0])
