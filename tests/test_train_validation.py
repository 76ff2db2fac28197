"""genlab.train validation, best model, early stopping, accumulation and precision: the
validation loss against a direct computation, the best folder against load_best, the
accumulated step against the one-batch step, and resume with validation against an
uninterrupted run."""

import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import genlab
from genlab import train
from genlab.data import NpyArray, load_dataset
from genlab.models.autoregressive import Autoregressive
from genlab.models.base import Budget
from genlab.models.diffusion import Diffusion
from genlab.models.flow import FlowMatching
from genlab.models.vae import VAE
from genlab.train import TrainConfig, fit

sys.path.insert(0, str(Path(__file__).parent))
from train_worker import Regressor, make_data

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**changes) -> TrainConfig:
    base = dict(max_steps=30, batch_size=32, lr=3e-2, warmup_steps=5, ema_decay=0.9, seed=1)
    return TrainConfig(**{**base, **changes})


def regressor(seed: int = 0, **kwargs) -> Regressor:
    torch.manual_seed(seed)
    return Regressor(hidden=8, **kwargs)


def moons(n: int = 512):
    return load_dataset("moons", n=n, seed=0)


def small_flow(**options) -> FlowMatching:
    base = dict(hidden=16, depth=2, batch_size=64, max_steps=20, warmup_steps=2, seed=3)
    return FlowMatching(**{**base, **options})


# -- the split ------------------------------------------------------------------------------------
def test_holdout_rows_are_a_seeded_partition():
    train_rows, val_rows = train.holdout_rows(100, 0.2, seed=5)
    assert len(val_rows) == 20 and len(train_rows) == 80
    assert sorted(torch.cat([train_rows, val_rows]).tolist()) == list(range(100))
    again = train.holdout_rows(100, 0.2, seed=5)
    assert torch.equal(again[1], val_rows) and not torch.equal(
        train.holdout_rows(100, 0.2, seed=6)[1], val_rows
    )
    assert len(train.holdout_rows(10, 0.01, 0)[1]) == 1  # at least one row
    with pytest.raises(ValueError, match="leaves no training rows"):
        train.holdout_rows(2, 0.9, 0)


# -- validation ----------------------------------------------------------------------------------
def test_validation_curve_is_the_mean_loss_under_the_ema_weights():
    x, y = make_data(96)
    vx, vy = make_data(40, seed=9)
    model = regressor()
    result = fit(model, x, y, tiny(eval_every=7), val=(vx, vy), log_every=5)
    evals = [row for row in result.history if "val_loss" in row]
    assert [r["step"] for r in evals] == [7, 14, 21, 28, 30]  # and the last step
    assert all(set(r) == {"step", "val_loss", "seconds"} for r in evals)
    with torch.no_grad():  # the model ends with the final EMA weights, evaluated last
        direct = (model.net(vx).squeeze(-1) - vy).square().mean().item()
    assert evals[-1]["val_loss"] == pytest.approx(direct, rel=1e-6)
    losses = [r["val_loss"] for r in evals]
    assert result.best_val_loss == min(losses)
    assert result.best_step == evals[losses.index(min(losses))]["step"]
    assert not result.stopped_early


def test_validation_leaves_the_training_rng_and_trajectory_alone():
    """The validation noise comes from its own seeded RNG: a noisy model trains to the same
    bits with validation on, and two evaluations of the same weights agree."""
    x, y = make_data(96)
    plain, validated = regressor(noise=True), regressor(noise=True)
    fit(plain, x, y, tiny())
    result = fit(validated, x, y, tiny(eval_every=5), val=make_data(40, seed=9))
    for name, value in plain.state_dict().items():
        assert torch.equal(validated.state_dict()[name], value), name
    noisy = [r["val_loss"] for r in result.history if "val_loss" in r]
    assert len(set(noisy)) > 1  # the weights changed between evaluations
    frozen = tiny(eval_every=5, lr=1e-12, warmup_steps=0, ema_decay=None)
    fixed = fit(regressor(noise=True), x, y, frozen, val=make_data(40, seed=9)).history
    fixed = [r["val_loss"] for r in fixed if "val_loss" in r]
    assert max(fixed) - min(fixed) < 1e-6  # same weights, same noise: the same loss


def test_val_fraction_holds_out_rows_and_the_fingerprint_guards_resume(tmp_path):
    x, y = make_data(100)
    result = fit(regressor(), x, y, tiny(val_fraction=0.25, eval_every=10), out=tmp_path)
    assert result.best_step is not None
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["validation"]["fingerprint"]["shape"] == [25, 4]
    with pytest.raises(ValueError, match="other validation data"):
        fit(regressor(), x, y, tiny(val_fraction=0.25, eval_every=10, max_steps=40),
            val=make_data(25, seed=2), out=tmp_path, resume=True)  # fmt: skip


def test_early_stopping_stops_after_patience_evaluations_without_improvement():
    x, y = make_data(96)
    vx, vy = make_data(40, seed=9)
    worse = (vx, -vy)  # training on y makes the loss on -y worse: the first is the best
    stopped = fit(regressor(), x, y, tiny(max_steps=200, eval_every=5, patience=2), val=worse)
    assert stopped.stopped_early and stopped.best_step == 5 and stopped.steps == 15
    full = fit(regressor(), x, y, tiny(max_steps=200, eval_every=5), val=worse)
    assert not full.stopped_early and full.steps == 200 and full.best_step == 5


def test_the_best_folder_is_loadable_and_equals_load_best(tmp_path):
    data = moons()
    model = small_flow(max_steps=40, eval_every=10, val_fraction=0.2, lr=3e-2)
    model.fit(data, out=tmp_path)
    result = model.train_result_
    assert result.best_step is not None and (tmp_path / "best" / "config.json").is_file()
    last = {k: v.clone() for k, v in model.state_dict().items()}
    best = genlab.load(tmp_path / "best")
    model.load_best()
    for name, value in model.state_dict().items():
        assert torch.equal(best.state_dict()[name], value), name
    if result.best_step != result.steps:  # the best weights are not the last ones
        assert any(not torch.equal(last[k], v) for k, v in model.state_dict().items())
    summary = model.fit_summary()
    assert summary["best step"] == result.best_step
    assert summary["best val loss"] == result.best_val_loss
    fresh = small_flow(max_steps=5).fit(data, out=tmp_path)  # a new run drops the old best
    assert not (tmp_path / "best").exists() and fresh.train_result_.best_step is None
    with pytest.raises(ValueError, match="no best weights"):
        fresh.load_best()


def test_val_data_must_match_the_training_data():
    data = moons(200)
    with pytest.raises(ValueError, match="same shape"):
        small_flow(max_steps=2).fit(data, val=torch.zeros(10, 3))
    with pytest.raises(ValueError, match="val needs labels"):
        small_flow(max_steps=2).fit(data, y=data.y, val=data.x[:20])
    with pytest.raises(ValueError, match="shape of x's rows"):
        fit(regressor(), *make_data(96), tiny(), val=(torch.zeros(5, 3), torch.zeros(5)))
    with pytest.raises(ValueError, match="need an out folder"):
        fit(regressor(), *make_data(96), tiny(), loggers=("csv",))


def test_a_conditional_fit_validates_on_labelled_data():
    data = moons(300)
    val = dataclasses.replace(data, x=data.x[:60], y=data.y[:60])
    model = small_flow(eval_every=10).fit(data, y=data.y, val=val)
    assert model.train_result_.best_step is not None


def test_text_holds_out_its_end_and_compare_uses_the_best_weights():
    text = "the quick brown fox jumps over the lazy dog. " * 40
    model = Autoregressive(max_steps=12, n_layer=1, n_embd=16, block_size=16, eval_every=6,
                           val_fraction=0.1, batch_size=8)  # fmt: skip
    model.fit(text)
    assert model.train_result_.best_step in (6, 12)
    held = round(len(text) * 0.1)  # 180 characters >= 4 (block_size + 1)
    rows, _ = model._val_rows(model._holdout(
        genlab.models.base.TrainingData.from_input(text), 0.1)[1])  # fmt: skip
    assert len(rows) == held - 16  # every window of block_size + 1 tokens of the held-out end
    options = {"hidden": 16, "latent_dim": 2, "eval_every": 5}
    model, details = VAE.fit_for_budget(moons(), Budget(steps=25, options=options))
    best = model.train_result_.best_state
    assert details["best_step"] == model.train_result_.best_step is not None
    assert details["weights"] == "best validation"
    for name, value in best.items():
        assert torch.equal(model.state_dict()[name], value)


def test_compare_keeps_the_last_weights_of_flow_and_diffusion():
    """Their validation loss regresses a noisy target: compare ends on the run's last
    weights, not on the best evaluation's (which is still reported)."""
    options = {"hidden": 16, "depth": 2, "eval_every": 2, "lr": 0.3, "warmup_steps": 0,
               "ema_decay": None}  # fmt: skip
    for cls in (FlowMatching, Diffusion):
        model, details = cls.fit_for_budget(moons(), Budget(steps=30, options=options))
        assert details["weights"] == "last" and details["best_step"] is not None
        alone = cls(max_steps=30, val_fraction=0.05, seed=0, **options)
        alone.fit(dataclasses.replace(moons(), y=None))
        for name, value in alone.state_dict().items():
            assert torch.equal(model.state_dict()[name], value), name
    # this run's best evaluation is not its last, so its best weights are other weights
    assert details["best_step"] < 30
    best = model.train_result_.best_state
    assert any(not torch.equal(model.state_dict()[k], v) for k, v in best.items())


# -- resume -------------------------------------------------------------------------------------
class Crash(Exception):
    pass


def test_resume_with_validation_equals_an_uninterrupted_run(tmp_path):
    """Noisy loss and noisy validation, patience counting: a run stopped at step 23 (last
    checkpoint 20) and resumed ends exactly as the uninterrupted one."""
    x, y = make_data(96)
    vx, vy = make_data(40, seed=9)
    val = (vx, 0.5 * vy)  # partly unlike the training targets: some evaluations do worse
    config = tiny(max_steps=60, eval_every=4, patience=4, lr=5e-2)

    def crash(step, model):
        if step == 23:
            raise Crash

    ref = regressor(noise=True)
    expected = fit(ref, x, y, config, val=val, out=tmp_path / "ref", checkpoint_every=10,
                   log_every=2)  # fmt: skip
    with pytest.raises(Crash):
        fit(regressor(noise=True), x, y, config, val=val, out=tmp_path / "run",
            checkpoint_every=10, callback=crash, callback_every=1, log_every=2)  # fmt: skip
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 20
    resumed_model = regressor(seed=5, noise=True)  # another init: all of it is restored
    got = fit(resumed_model, x, y, config, val=val, out=tmp_path / "run", resume=True,
              checkpoint_every=10, log_every=2)  # fmt: skip
    assert (got.steps, got.best_step, got.stopped_early) == (
        expected.steps, expected.best_step, expected.stopped_early)  # fmt: skip
    assert got.best_val_loss == expected.best_val_loss
    for name, value in ref.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[name], value), name
        assert torch.equal(got.best_state[name], expected.best_state[name]), name

    def curve(folder):
        rows = (tmp_path / folder / "log.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(r).items() if k != "seconds"} for r in rows]

    assert curve("run") == curve("ref")
    assert expected.stopped_early and expected.steps < 60  # patience counted across the resume


def test_a_checkpoint_written_before_the_new_options_resumes(tmp_path):
    x, y = make_data(96)
    fit(regressor(), x, y, tiny(max_steps=4), out=tmp_path)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    for key in ("grad_accum_steps", "eval_every", "patience", "val_fraction", "data_window"):
        del ckpt["config"][key]
    del ckpt["validation"], ckpt["scaler"]
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    assert fit(regressor(), x, y, tiny(max_steps=6), out=tmp_path, resume=True).steps == 6


# -- accumulation and precision ------------------------------------------------------------------
class FixedNoiseFlow(FlowMatching):  # no family=: not registered
    """Flow matching whose noise and times are a fixed function of each row, so that the same
    rows give the same loss terms however the batch is split."""

    def loss(self, batch, step):
        z0 = self._train_rows(batch[0])
        eps = torch.sin(97.0 * z0 + 1.3).flip(-1)
        t = 0.5 + 0.5 * torch.sin(41.0 * z0.sum(-1))
        x_t, target = self.schedule.marginal(z0, eps, t), self.schedule.velocity(z0, eps, t)
        return {"loss": (self.net(x_t, t, None) - target).square().mean()}


def test_accumulated_micro_batches_take_the_one_batch_step():
    data = moons(512)
    one = FixedNoiseFlow(hidden=16, depth=2, batch_size=128, max_steps=20, seed=3).fit(data)
    two = FixedNoiseFlow(hidden=16, depth=2, batch_size=128, max_steps=20, seed=3,
                         grad_accum_steps=2).fit(data)  # fmt: skip
    half = FixedNoiseFlow(hidden=16, depth=2, batch_size=64, max_steps=20, seed=3).fit(data)
    for name, value in one.state_dict().items():
        torch.testing.assert_close(two.state_dict()[name], value, atol=1e-5, rtol=0)
    moved = [k for k, v in one.state_dict().items() if not torch.allclose(
        half.state_dict()[k], v, atol=1e-4)]  # fmt: skip
    assert moved  # another batch size is another trajectory: the test can fail
    losses = [r["loss"] for r in one.train_result_.history if "loss" in r]
    accumulated = [r["loss"] for r in two.train_result_.history if "loss" in r]
    assert accumulated == pytest.approx(losses, rel=1e-5)  # the logged mean over the batch
    with pytest.raises(ValueError, match="grad_accum_steps <= batch_size"):
        TrainConfig(batch_size=4, grad_accum_steps=5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_fits_are_finite(precision, tmp_path):
    model = small_flow(precision=precision, max_steps=25, lr=1e-2).fit(moons(256), out=tmp_path)
    losses = [r["loss"] for r in model.train_result_.history if "loss" in r]
    assert all(math.isfinite(v) for v in losses)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    scaler = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["scaler"]
    assert (scaler is not None) == (precision == "fp16")  # fp16 keeps its loss scale
    if scaler is not None:
        assert scaler["scale"] > 0


# -- inputs and loggers ---------------------------------------------------------------------------
def test_an_npy_file_trains_like_the_tensor_with_windows_of_one(tmp_path):
    x, y = make_data(96)
    np.save(tmp_path / "x.npy", x.numpy())
    a, b = regressor(), regressor()
    fit(a, x, y, tiny(data_window=1))
    fit(b, NpyArray(tmp_path / "x.npy"), y, tiny(data_window=1))
    for name, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[name], value), name


def test_loggers_receive_training_and_validation_rows(tmp_path):
    x, y = make_data(96)
    result = fit(regressor(), x, y, tiny(eval_every=10), val=make_data(20, seed=9),
                 out=tmp_path, loggers=("csv",), log_every=10)  # fmt: skip
    lines = (tmp_path / "log.csv").read_text().splitlines()
    assert len(lines) == 1 + len(result.history)  # a header, then every row
    assert "val_loss" in lines[0] and "loss" in lines[0]
