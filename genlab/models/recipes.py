"""Per-data-kind defaults ("recipes") of the iterative families, chosen by measurement.

A recipe is the option values that a caller who did not set them gets, for one family and one
kind of data:

    "points"       points (tables, the 2-D toys)
    "small_image"  images of at most `continuous.SMALL_IMAGE_PIXELS` (256) pixels (8 x 8 digits)
    "image"        larger images (MNIST)

`NeuralModel.fit` applies it (`resolve`) before the networks are built: an option the caller
gave (`GenerativeModel.given_options`: by name, by position, on the command line or in a TOML
--config) always wins; the others take the recipe's value, or else the config's default. The
resolved config is what config.json stores, so a loaded model is never resolved again, and
folders saved before recipes existed load unchanged. `genlab fit` prints the recipe used, and
compare's records carry it in "details".

Every value below names the benchmark command and the figure that chose it. The budget is
wall-clock seconds on one CPU core: a bigger network takes fewer steps in it, so each
configuration was compared at the step count it reaches in the budget, not at equal steps.
The machine that chose them (2 cores) ran at a load of 3 to 6 from other jobs, so wall-clock
budgets gave a config anywhere from a third to a half of a core; instead each configuration's
CPU seconds per step were measured (process CPU time of a 600-step fit minus a 100-step fit),
and it trained for budget / (seconds per step) steps through `fit_for_budget` (as compare fits,
with its validation hold-out and best weights), i.e. the steps it would take on a quiet core.
That rate itself moved by up to 2x between measurements, so only differences larger than
that were acted on; the benchmarks named below measure the same under `max_time`, for a quiet
machine.

Background (what the field does; the options exist in `ContinuousConfig` / `TrainConfig`):
- time-step sampling: logit-normal t (Esser et al. 2024, SD3: rectified flows trained on
  logit-normal t beat uniform t at large scale), lognormal sigma (Karras et al. 2022, EDM);
- loss weighting: min-SNR-gamma (Hang et al. 2023), EDM's preconditioning;
- EMA of the weights (Karras et al. 2024 for its length; short runs want a short EMA), AdamW
  with warm-up and cosine decay to min_lr_ratio (Loshchilov & Hutter 2017);
- batch size: larger batches lower the variance of the flow-matching regression target, which
  is high near t = 0 for thin structures (Tong et al. 2024; minibatch OT reduces it further).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from genlab.models.inputs import TrainingData

DataKind = Literal["points", "small_image", "image"]
KINDS: tuple[str, ...] = ("points", "small_image", "image")


@dataclass(frozen=True)
class Recipe:
    """The defaults of one family on one kind of data, and the measurement that chose them."""

    family: str
    kind: str
    options: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""  # the benchmark command and figure that chose the values

    @property
    def name(self) -> str:
        return f"{self.family}/{self.kind}"

    def applied(self, given: Collection[str] = ()) -> dict[str, Any]:
        """The recipe's options that a caller who gave `given` gets."""
        return {k: v for k, v in self.options.items() if k not in given}

    def describe(self, given: Collection[str] = ()) -> str:
        """ "flow/points: hidden=256, batch_size=512" (the options it set), for summaries."""
        applied = self.applied(given)
        what = ", ".join(f"{k}={v!r}" for k, v in applied.items())
        what = what or ("nothing (all given)" if self.options else "the config's defaults")
        return f"{self.name}: {what}"


def data_kind(data: TrainingData) -> DataKind | None:
    """The recipe kind of the data: "points", "small_image" (at most SMALL_IMAGE_PIXELS
    pixels, the side squared for square images), "image"; None for text."""
    from genlab.models.continuous import SMALL_IMAGE_PIXELS  # continuous imports base

    if data.kind == "points":
        return "points"
    if data.kind != "image":
        return None
    square = data.square_image
    pixels = square[1] ** 2 if square is not None else math.prod(data.event_shape)
    return "small_image" if pixels <= SMALL_IMAGE_PIXELS else "image"


# -- the recipes ----------------------------------------------------------------------------------
_TOYS = "python benchmarks/iterative_toys.py"
_DIGITS = "python benchmarks/iterative_digits.py"

FLOW_POINTS = Recipe(
    "flow",
    "points",
    {"hidden": 256, "batch_size": 256},
    # Chosen on rings at 60 s of one core (issue 17's hardest toy: 4 rings of noise std 0.08),
    # each configuration trained for the steps its measured CPU cost per step allows in 60 s,
    # MMD^2 at n = 4,000 against a held-out draw (kernels 0.25..4 x the median distance),
    # data floor p95 = 4.33e-05 (24 data-vs-data draws), 2026-12-01:
    #   hidden 128, batch 128 (the old default)     2.16e-04  (4.98 x p95)
    #   hidden 128, batch 512                       6.04e-05  (1.39 x)
    #   hidden 128, batch 512, lr 3e-3              4.61e-05  (1.06 x)
    #   hidden 128, batch 256, coupling "ot"        9.56e-05  (2.21 x)
    #   hidden 256, batch 256                       2.78e-05  (0.64 x)   <- chosen
    # Larger batches lower the variance of the regression target and a wider net resolves
    # the thin rings; both cost steps, and this pair reaches ~3,000 in 60 s.
    f"{_TOYS} --seconds 60 --toys rings (screened at equal CPU seconds)",
)
FLOW_SMALL_IMAGE = Recipe(
    "flow",
    "small_image",
    {"hidden": 128, "batch_size": 128, "lr": 5e-3, "time_sampling": "logit_normal"},
    # Chosen on digits at 20 s of one core (the main job's budget), compare's Fréchet distance
    # in its classifier's features (data floor 5.19; the GMM by BIC: 23.6), 2026-12-01:
    #   hidden 128, batch 128    ~8,000 steps   FD 21.7   (estimated steps, see below)
    #   hidden 256, batch 256       ~720 steps   FD 31.4
    #   hidden 512, batch 128       ~350 steps   FD 32.5
    # On 64 dimensions a step of a wider net costs 10-20x more: in 20 s the small net's
    # thousands of steps beat a wide net's hundreds. Then, 2026-12-01 evening, the real 20 s
    # of one core (the other core busy with a nice-19 job; ~3,500 steps, not the 8,000 the
    # CPU-seconds estimate gave), hidden 128 / batch 128, seed 0 (seed 1):
    #   lr 1e-3, uniform t          31.0
    #   lr 3e-3                     21.9        lr 3e-3, logit-normal t     19.8
    #   lr 5e-3                     20.6        lr 5e-3, logit-normal t     17.7, 18.5 (16.2)
    #   lr 8e-3, logit-normal t     18.5        lr 1.2e-2, logit-normal t   16.8
    #   lr 1e-3, logit-normal t     25.2        lr 1e-3, batch 64           29.9
    # A short budget wants a large step size; SD3's logit-normal t adds to it. <- lr 5e-3, ln
    f"{_DIGITS} --seconds 20 --families flow,flow:lr5ln --variant-options ...",
)
DIFFUSION_POINTS = Recipe(
    "diffusion",
    "points",
    {
        "hidden": 128,
        "batch_size": 256,
        "schedule": "rectified",
        "prediction": "v",
        "loss_weight": "flow",
        "time_sampling": "logit_normal",
        "time_scale": 1.4,
        "lr": 2e-3,
        "sample_method": "heun",
        "sample_method_steps": 25,
        "sample_churn": 40.0,
        "dpm_grid": "power",
    },
    # lr 2e-3 and logit-normal t of scale 1.4 (2026-12-03): at the step counts a slow machine
    # reaches in the targets' budgets (rings 7,000 steps ~ 60 s, 2spirals 18,000 ~ 120 s), 100,000
    # rows, training seeds 0 / 1 / 2, mean MMD^2 of 3 noise seeds / p95 of the mean of 3 draws:
    #                                   rings (7,000)          2spirals (18,000)
    #   lr 1e-3, scale 1 (before)       13.2, 15.1, -4.1       2.09 (seed 0)
    #   lr 2e-3, scale 1                -3.2, -2.3, -5.1       2.62, 0.63, 1.72
    #   lr 2e-3, uniform t              20.8, -4.3, -2.7       -0.85, 0.61, 0.01
    #   lr 2e-3, scale 1.4              -2.0, -2.0, -4.6       0.39, 0.43, 0.02   <- chosen
    #   lr 3e-3, scale 1                -0.32 (seed 0)         3.32 (seed 0)
    # The larger step size cures the thin rings' failed runs (13-15 x the floor at lr 1e-3);
    # the wider time draw (scale 1.8 is close to uniform) gives the small-t end that the
    # spirals' arms need. BENCHMARKS.md "Diffusion's points recipe: lr 2e-3, time scale 1.4".
    # The default sampler: EDM's stochastic Heun, 25 steps (49 NFE), churn 40 where sigma / alpha
    # is in [0.1, 3] (`diffusion.CHURN_WINDOW`). The 8 toys' 120 s models scored at noise seeds
    # 0, 1, 2 (the mean MMD^2 at n = 4,000 against the p95 of the mean of 3 of 48 data draws,
    # BENCHMARKS.md "The 8 toys at 120 s, three noise seeds a sampler", 2026-12-02): below that
    # floor on 7 of 8 toys (all but checkerboard, 1.26 x) against 5 of 8 for DPM-Solver++ 3M 20
    # steps (the default before: swissroll 1.07, checkerboard 1.09, rings 2.72 x); trained
    # afresh, 5 of 8 (its heun ODE 5, dpm++ 15 2): 12 of 16 runs against 9 and 5. The flow's
    # ODE stayed ahead of the same churn (11 of 16 against 8), so the flow keeps its Heun ODE.
    # dpm++ asked for without a grid walks the power grid (t^(2/3) uniform to t = 0,
    # `genlab.grids`): at 15 NFE, paired to 50 steps on the same noise seeds, its own cost was
    # lower than the uniform grid's on all 8 toys' 120 s models (12 seeds; circles 4.1e-6
    # against 2.45e-5 at 24 seeds) and the lowest of the exponents 1.25, 1.5 and 1.75 summed over
    # them; on digits the uniform grid stays (BENCHMARKS.md "A power grid for DPM-Solver++").
    # The straight path, as SD3 trains it (Esser et al. 2024: rectified flow, the velocity
    # MSE, logit-normal t): on rings at 3,000 steps a flow on the variance-preserving path
    # scored like diffusion (MMD^2 3.4e-4) and the same flow on the straight path reached the
    # floor (-7.3e-6, BENCHMARKS.md "Why diffusion lagged flow on points"), so the path, not
    # the prediction, the weighting or the time draw, held diffusion back.
    # Screen at equal steps on rings (600 steps of hidden 128 / batch 256, MMD^2 at n = 2,000
    # against a held-out draw, floor p95 1.6e-4, default sampler dpm++ 3M 20 steps; a 2-core
    # machine at load 12, so no longer runs fitted in 5 minutes), 2026-12-01:
    #   linear, eps, "simple", uniform (the old defaults)          7.87e-04  (4.9 x p95)
    #   rectified, v, "flow", logit_normal                          7.18e-04  (4.5 x)  <- chosen
    #   rectified, x0, "flow", uniform                              2.17e-03  (13.6 x)
    #   rectified, eps, "simple" (x0 = (x - sigma eps) / alpha, alpha(1) = 4.5e-5)  0.55
    # and at 2,000 steps (both side by side, 16:40 UTC):
    #   linear, eps, "simple", uniform                              7.69e-04  (4.8 x)
    #   rectified, v, "flow", logit_normal                          6.07e-04  (3.8 x)  <- chosen
    # `--steps 7000` (a quiet core's 60 s) on a quiet machine is the check at the target.
    # hidden 128 / batch 256 (before): the 2026-11-24 run of
    # benchmarks/diffusion_quality_vs_steps.py trained MLP 128 x 3 for 12,000 steps of batch 256
    # in 92-106 s of one core and put ddpm 1000 and dpm++ 15 at the data floor on most toys.
    f"{_TOYS} --steps 2000 --n 2000 --toys rings --families diffusion,diffusion:old "
    "(screened at equal steps); the sampler: "
    f"{_TOYS} --seconds 120 --load DIR --seeds 3 --floor-draws 48; lr and time_scale: "
    f"{_TOYS} --steps 7000 --toys rings --n-train 100000 --families diffusion,diffusion:lr2 ...",
)
DIFFUSION_SMALL_IMAGE = Recipe(
    "diffusion",
    "small_image",
    {
        "schedule": "rectified",
        "prediction": "v",
        "loss_weight": "flow",
        "time_sampling": "logit_normal",
        "lr": 5e-3,
        "ema_decay": 0.995,
    },
    # lr and EMA: digits at the real 20 s of one core (~1,300-1,700 steps of the default
    # net), seeds 0 and 1, the GMM at 23.6 and 26.1 (2026-12-01 evening):
    #   lr 1e-3 (before)            38.0             lr 3e-3             30.3
    #   lr 4e-3                     29.4, 25.4       lr 5e-3             25.5, 22.5
    #   lr 8e-3                     27.5             lr 1.2e-2           31.1
    #   lr 5e-3, EMA 0.995          22.0, 22.4   <- chosen
    #   lr 5e-3, EMA 0.99           24.2, 22.6       lr 5e-3, hidden 192  26.9, 20.7
    #   lr 5e-3, batch 64           34.2, 27.2       lr 5e-3, depth 2     25.3, 23.1
    # (EMA 0.999 averages over ~1,000 steps: most of a 1,500-step run, early weights included.)
    # The straight path as for points (SD3's objective), with the default net (hidden 256,
    # batch 128). Digits at equal steps, 600 steps each (a 2-core machine at load 12),
    # compare's Fréchet distance (floor 5.19, GMM 23.6), dpm++ 20 steps, 2026-12-01:
    #                                                   seed 0   seed 1   seed 0 at NFE 5/10/50
    #   linear, eps, "simple", uniform (the old defaults) 48.5     35.6     54 / 50 / 51
    #   rectified, v, "flow", logit_normal                38.0     28.4     46 / 43 / 39
    # (seed 0 test bits/dim on 10 points: 3.50 against 3.28). Earlier, on the linear path:
    # Digits at 20 s of one core, compare's Fréchet distance (GMM 23.6, floor 5.19), DPM-Solver++
    # 20 steps (in brackets: 10 steps), 2026-12-01:
    #   hidden 256, batch 128 (the defaults)  ~1,400 steps   FD 43.9 (39.3)
    #   hidden 128                            ~5,100 steps   FD 46.5 (40.2)
    #   hidden 128, batch 256                 ~1,300 steps   FD 54.2 (50.6)
    # and at 5,000 steps of hidden 128 (dpm++ 20 / dpm++ 10 / ddim 50 / ode heun 25 / ddpm 1000):
    #   prediction "v"                                 47.6 / 38.4 / 51.1 / 44.6 / 54.8
    #   "v" + loss_weight "edm" + time_sampling "lognormal"  47.2 / 37.7 / 49.1 / 42.7 / 53.3
    # None beat the linear-path defaults by more than the noise.
    f"{_DIGITS} --steps 600 --families diffusion,diffusion:rect (screened at equal steps); "
    f"{_DIGITS} --seconds 20 --seeds 0,1 --families diffusion:lr5ema995 ...",
)

RECIPES: dict[tuple[str, str], Recipe] = {
    (r.family, r.kind): r
    for r in (FLOW_POINTS, FLOW_SMALL_IMAGE, DIFFUSION_POINTS, DIFFUSION_SMALL_IMAGE)
}
"""(family, kind) -> Recipe. A kind without an entry keeps the config's defaults (the
families' own, chosen before recipes: "image" has no measured recipe yet)."""


def recipe_for(family: str, data: TrainingData) -> Recipe | None:
    """The recipe of `family` for the data's kind (`data_kind`), or None."""
    kind = data_kind(data)
    return None if kind is None else RECIPES.get((family, kind))


def resolve(config: Any, given: Collection[str], recipe: Recipe | None) -> Any:
    """`config` with the recipe's options that are not in `given` (dataclasses.replace, so
    the config's own checks run); unchanged without a recipe. Options the config does not
    have are ignored (a recipe may name an option a family gains later)."""
    if recipe is None:
        return config
    names = {f.name for f in dataclasses.fields(config)}
    changes = {k: v for k, v in recipe.applied(given).items() if k in names}
    return dataclasses.replace(config, **changes) if changes else config
