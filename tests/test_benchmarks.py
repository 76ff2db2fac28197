"""Every benchmark script imports against the library as it is now (a renamed helper breaks a
script silently otherwise: diffusion_seeds_check.py imported three removed functions), and the
seeds check's statistics against brute force."""

from __future__ import annotations

import importlib.util
import itertools
import statistics
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py"))


def load(path: Path):
    """Execute the script's module body (imports and definitions; main() is guarded)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_the_benchmarks_folder_is_found():
    assert len(SCRIPTS) > 20


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_imports(path):
    module = load(path)
    assert module.__doc__, f"{path.name} has no docstring saying what it measures"


def test_k_mean_p95_matches_the_exact_distribution_of_a_k_mean():
    check = load(BENCHMARKS / "diffusion_seeds_check.py")
    floors = [0.0, 1.0, 2.0, 10.0]
    k = 3
    # brute force: every ordered k-tuple with replacement is equally likely
    means = sorted(statistics.fmean(c) for c in itertools.product(floors, repeat=k))
    exact = check.percentile(means, 95)
    assert abs(check.k_mean_p95(floors, k) - exact) < 0.35  # bootstrap noise at 20,000 draws


def test_welch_se_and_the_dpm_verdict():
    check = load(BENCHMARKS / "diffusion_seeds_check.py")
    a, b = [1.0, 2.0, 3.0], [0.0, 0.0, 3.0]
    assert check.welch_se(a, b) == pytest.approx((1.0 / 3 + 3.0 / 3) ** 0.5)
    ddpm = [1.0, 1.1, 0.9, 1.0]
    assert check.dpm_verdict([0.1, 0.2, 0.1, 0.2], ddpm, 0.0, 0.5).startswith("ok (below")
    assert check.dpm_verdict([1.05, 1.1, 1.0, 1.05], ddpm, 0.0, 0.5).startswith("ok (within")
    assert check.dpm_verdict([2.0, 2.1, 1.9, 2.0], ddpm, 0.0, 0.5).startswith("NO")
    assert check.dpm_verdict([0.0, 4.0, 0.0, 4.0], ddpm, 0.0, 0.5).startswith("unresolved")


def test_paired_difference_against_a_hand_computation():
    check = load(BENCHMARKS / "diffusion_seeds_check.py")
    mean, se = check.paired([3.0, 5.0, 4.0], [1.0, 2.0, 3.0])  # differences 2, 3, 1
    assert mean == pytest.approx(2.0)
    assert se == pytest.approx(1.0 / 3**0.5)  # sd of (2, 3, 1) is 1
    assert check.PAIRED_TO in check.SAMPLERS


def test_the_seeds_checks_sampler_choice():
    check = load(BENCHMARKS / "diffusion_seeds_check.py")
    deterministic = {k for k, v in check.SAMPLERS.items() if check.is_deterministic(v)}
    assert deterministic == {"dpm++ 15", "dpm++ 50", "dpm++ 15 quadratic", "unipc 15", "heun 25"}
    chosen = check.chosen_samplers('{"x": {"method": "dpm++", "steps": 9}}', "ddpm 1000, heun 25")
    assert chosen["x"] == {"method": "dpm++", "steps": 9}
    assert "ddpm 1000" not in chosen and "heun 25" not in chosen and "dpm++ 15" in chosen
    with pytest.raises(SystemExit, match="no sampler 'nope'"):
        check.chosen_samplers(None, "nope")
    with pytest.raises(SystemExit, match="JSON object"):
        check.chosen_samplers("[1, 2]", None)


def test_the_toys_ratio_column_is_blank_for_a_negative_floor():
    toys = load(BENCHMARKS / "iterative_toys.py")
    assert toys.ratio_to_floor(1.5e-5, 3.0e-5) == "0.50"
    assert toys.ratio_to_floor(-4e-5, -2e-5) == "-"  # not "2.00", which reads as a miss
    assert toys.verdict(-4e-5, -2e-5) == "yes"
