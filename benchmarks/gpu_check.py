"""Every family on a CUDA device: fit, sample, score, save, reload; the speed against the CPU.

    python benchmarks/gpu_check.py                      # on a CUDA machine (the real check)
    python benchmarks/gpu_check.py --json gpu.json      # also write the rows as JSON
    python benchmarks/gpu_check.py --device cpu --steps 5 --cpu-steps 5   # a dry run, any machine
    (--quick-score: score with each family's cheap log_prob options; --families flow,vae)

For each family (gmm, vae, flow, diffusion, autoregressive), on its example data set (moons,
or digits for vae and autoregressive):

1. fit --steps (300) optimisation steps on --device (cuda) in --precision (bf16), then again
   with compile=True (torch.compile; on CUDA by default, --compile/--no-compile). The GMM has
   no steps, precision or compile: it runs --steps EM iterations (tol=0) in float32;
2. sample 256 points (finite, the right shape);
3. score: log_prob of 256 test rows (finite, shape (256,));
4. save, `genlab.load` onto the same device, and score again: the same log_prob (to 1e-5
   relative: the same weights and the same seeded computation);
5. steps/s of the fit (the trainer's own clock: set-up excluded; a compiled fit's seconds
   include compiling), "steady" steps/s between its first and last log rows (every 50
   steps: compiling left out), and the ratio of the steady rate (or the whole one, for runs
   under 100 steps) to a short fit of the same config on the CPU (--cpu-steps, fp32, not
   compiled, torch's default threads).

Without a CUDA device (and without --device cpu) it stops with a message saying so. Exit code
0 when every check passed, 1 when one failed (its row says which), 2 for no device.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch

import genlab
from genlab.data import load_dataset
from genlab.models import FAMILIES

FAMILY_ORDER = ("gmm", "vae", "flow", "diffusion", "autoregressive")
SAMPLES = 256
"""Samples drawn, and test rows scored, per check."""
GMM_OPTIONS = {"n_components": 8, "tol": 0.0, "n_init": 1, "dtype": "float32"}
"""The GMM of the check: --steps EM iterations (tol=0 never stops early), float32 on any
device (EM needs no 16-bit floats)."""


def family_options(family: str, steps: int, precision: str, compile_: bool) -> dict[str, Any]:
    """The constructor options of one fit: the family's defaults, with the budget, precision
    and compile of the check."""
    if family == "gmm":
        return {**GMM_OPTIONS, "max_iter": steps}
    return {"max_steps": steps, "precision": precision, "compile": compile_, "seed": 0}


def steady_rate(history: list[dict[str, float]]) -> float | None:
    """Steps/s between the first and the last training row of the log (so a compiled fit's
    compiling, which happens before the first row, is left out), or None with fewer than
    two rows."""
    rows = [r for r in history if "loss" in r]
    if len(rows) < 2 or rows[-1]["seconds"] <= rows[0]["seconds"]:
        return None
    return (rows[-1]["step"] - rows[0]["step"]) / (rows[-1]["seconds"] - rows[0]["seconds"])


def fit_once(family: str, options: dict[str, Any], device: str) -> tuple[Any, float, float]:
    """(model, steps, trainer seconds) of one fit on the family's example train split."""
    cls = FAMILIES[family]
    train = load_dataset(cls.example_data, split="train", seed=0)
    model = cls(**options, device=device)
    start = time.perf_counter()
    with warnings.catch_warnings():  # tol=0: EM "did not converge" by design
        warnings.filterwarnings("ignore", message=".*did not converge.*")
        model.fit(train, progress=False)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    result = getattr(model, "train_result_", None)
    if result is None:  # the GMM: EM iterations, timed by the wall clock
        return model, float(model.n_iter_), wall
    return model, float(result.steps), float(result.seconds)


def score(model: Any, test: Any, quick: bool) -> torch.Tensor:
    """log_prob of the test rows (quick: with the family's cheap `quick_log_prob` options)."""
    options = model.quick_log_prob if quick else {}
    return model.log_prob(test, **options).detach().double().cpu()


def check_family(
    family: str, device: str, steps: int, precision: str, compile_: bool, cpu_rate: float,
    quick: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """One row: fit, sample, score, save + reload on `device`; the failures it found."""
    cls = FAMILIES[family]
    options = family_options(family, steps, precision, compile_)
    row: dict[str, Any] = {"family": family, "device": device, "compile": compile_,
                           "precision": options.get("precision", options.get("dtype")),
                           "failures": []}  # fmt: skip
    try:
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        model, done, seconds = fit_once(family, options, device)
        row |= {"steps": int(done), "seconds": seconds, "steps_per_s": done / seconds}
        result = getattr(model, "train_result_", None)
        steady = None if result is None else steady_rate(result.history)
        row["steady_steps_per_s"] = steady
        rate = row["steps_per_s"] if steady is None else steady
        row["vs_cpu"] = rate / cpu_rate if cpu_rate > 0 else None
        samples = model.sample(SAMPLES, seed=0)
        if tuple(samples.shape) != (SAMPLES, *model.event_shape):
            row["failures"].append(f"sample shape {tuple(samples.shape)}")
        if not torch.isfinite(samples).all():
            row["failures"].append("non-finite samples")
        row["sample_device"] = str(samples.device)
        test = load_dataset(cls.example_data, split="test", n=SAMPLES, seed=0)
        before = score(model, test, quick)
        if before.shape != (SAMPLES,) or not torch.isfinite(before).all():
            row["failures"].append(f"log_prob shape {tuple(before.shape)} or non-finite")
        row["log_prob"] = float(before.mean())
        with tempfile.TemporaryDirectory() as folder:
            model.save(folder)
            again = score(genlab.load(folder, device=device), test, quick)
        diff = float((again - before).abs().max())
        row["reload_max_diff"] = diff
        if not diff <= 1e-5 * (1 + float(before.abs().max())):
            row["failures"].append(f"reloaded log_prob differs by {diff:.3g}")
        if device.startswith("cuda"):
            row["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    except Exception as e:  # a row per failure: the other families still run
        row["failures"].append(f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
        row["traceback"] = traceback.format_exc(limit=8)
    return row


def cpu_rate(family: str, steps: int) -> float:
    """Steps/s of the same config on the CPU: fp32, not compiled (steady when it logged two
    rows or more)."""
    model, done, seconds = fit_once(family, family_options(family, steps, "fp32", False), "cpu")
    result = getattr(model, "train_result_", None)
    steady = None if result is None else steady_rate(result.history)
    return steady if steady is not None else done / seconds if seconds > 0 else math.nan


HEADER = (f"{'family':<15}{'device':<8}{'prec':<9}{'compile':<8}{'steps':>6}{'steps/s':>10}"
          f"{'steady':>9}{'vs cpu':>8}{'log_prob':>10}{'reload':>9}  result")  # fmt: skip


def format_row(r: dict[str, Any]) -> str:
    """One line of the table: steps/s, the ratio to the CPU's, the mean log_prob, the
    reload's largest log_prob difference, and ok or the failures."""
    vs = "-" if r.get("vs_cpu") is None else f"{r['vs_cpu']:.3g}x"
    steady = "-" if r.get("steady_steps_per_s") is None else f"{r['steady_steps_per_s']:.4g}"
    result = "ok" if not r["failures"] else "FAIL: " + "; ".join(r["failures"])
    return (f"{r['family']:<15}{r['device']:<8}{r['precision']!s:<9}{r['compile']!s:<8}"
            f"{r.get('steps', 0):>6}{r.get('steps_per_s', math.nan):>10.4g}{steady:>9}{vs:>8}"
            f"{r.get('log_prob', math.nan):>10.4g}{r.get('reload_max_diff', math.nan):>9.1e}"
            f"  {result}")  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (a dry run)")
    parser.add_argument("--steps", type=int, default=300, help="steps (GMM: EM iterations)")
    parser.add_argument("--cpu-steps", type=int, default=100, help="steps of the CPU baseline")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also fit with compile=True (default: on CUDA only)")  # fmt: skip
    parser.add_argument("--families", default=",".join(FAMILY_ORDER))
    quick = "score with the families' cheap log_prob options (dry runs)"
    parser.add_argument("--quick-score", action="store_true", help=quick)
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.cpu_steps < 1:
        parser.error("--steps and --cpu-steps must be >= 1")
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        parser.error(f"unknown families {unknown}; known: {sorted(FAMILIES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine (torch.cuda.is_available() is False, "
              f"torch {torch.__version__}): run it on a CUDA machine, or try its CPU path with "
              "--device cpu --steps 5 --cpu-steps 5", file=sys.stderr)  # fmt: skip
        return 2
    compile_modes = [False, True] if (cuda if args.compile is None else args.compile) else [False]
    where = torch.cuda.get_device_name(args.device) if cuda else "cpu"
    print(f"gpu_check: {where}, torch {torch.__version__}, {torch.get_num_threads()} CPU "
          f"threads; {args.steps} steps in {args.precision}, CPU baseline {args.cpu_steps} "
          "steps in fp32")  # fmt: skip
    print(HEADER)
    rows = []
    for family in args.families:
        rate = cpu_rate(family, args.cpu_steps)
        for compile_ in compile_modes if family != "gmm" else [False]:
            row = check_family(family, args.device, args.steps, args.precision, compile_, rate,
                               args.quick_score)  # fmt: skip
            row["cpu_steps_per_s"] = rate
            rows.append(row)
            print(format_row(row), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2, default=str) + "\n")
    failed = [r for r in rows if r["failures"]]
    for r in failed:
        if "traceback" in r:
            print(f"\n{r['family']} (compile={r['compile']}):\n{r['traceback']}", file=sys.stderr)
    print(f"gpu_check: {len(rows) - len(failed)} of {len(rows)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
