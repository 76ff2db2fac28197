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


def _exact_block_sums(groups, bandwidths):
    """S[b, c] = Σ k(x, y) by brute force over every pair (metrics.mmd's kernel)."""
    import torch

    def k(a, b):
        d2 = torch.cdist(a, b) ** 2
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths) / len(bandwidths)

    return torch.tensor(
        [[float(k(a, b).sum()) for b in groups] for a in groups], dtype=torch.float64
    )


def test_binned_kernel_sums_match_metrics_mmd():
    import torch

    from genlab import metrics

    mmd = load(BENCHMARKS / "expected_mmd.py")
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(700, 2, generator=gen, dtype=torch.float64)
    b = 1.3 * torch.randn(500, 2, generator=gen, dtype=torch.float64) + 0.2
    widths = [0.3, 1.0, 3.0]
    s = mmd.binned_kernel_sums([a, b], widths, nodes=1024)
    exact = _exact_block_sums([a, b], widths)
    assert torch.allclose(s, exact, rtol=1e-4)  # spacing 0.008 against the width 0.3
    finer = mmd.binned_kernel_sums([a, b], widths, nodes=2048)
    # moving points by up to half a spacing: the error shrinks with the spacing
    assert (finer - exact).abs().max() < 0.7 * (s - exact).abs().max()
    n, m = len(a), len(b)
    f = finer
    binned = (f[0, 0] - n) / (n * (n - 1)) + (f[1, 1] - m) / (m * (m - 1)) - 2 * f[0, 1] / (n * m)
    # a relative error ~ spacing / width / sqrt(n): 0.004 / 0.3 / 26
    assert float(binned) == pytest.approx(metrics.mmd(a, b, widths), rel=1e-3)
    assert metrics.mmd(a, b, widths) > 1e-2  # the two differ, so the check has something to see


def test_expected_mmd_estimates_and_leave_one_out_against_direct_mmd():
    import torch

    from genlab import metrics

    mmd = load(BENCHMARKS / "expected_mmd.py")
    gen = torch.Generator().manual_seed(1)
    widths = [0.5, 2.0]
    sets = {
        "truth": [torch.randn(60, 2, generator=gen, dtype=torch.float64) for _ in range(3)],
        "ref": [torch.randn(50, 2, generator=gen, dtype=torch.float64)],
        "p": [torch.randn(40, 2, generator=gen, dtype=torch.float64) + 0.5 for _ in range(3)],
    }
    flat = [g for name in sets for g in sets[name]]
    blocks, at = {}, 0
    for name in sets:
        blocks[name] = slice(at, at + len(sets[name]))
        at += len(sets[name])
    sizes = torch.tensor([float(len(g)) for g in flat], dtype=torch.float64)
    s = _exact_block_sums(flat, widths)
    p, t, r = (torch.cat(sets[k]) for k in ("p", "truth", "ref"))
    est = mmd.estimates(s, blocks, sizes, "p")
    assert est["E MMD2"] == pytest.approx(metrics.mmd(p, r, widths), rel=1e-9)
    assert est["to the truth"] == pytest.approx(metrics.mmd(p, t, widths), rel=1e-9)
    assert est["excess"] == pytest.approx(
        metrics.mmd(p, r, widths) - metrics.mmd(t, r, widths), rel=1e-9
    )
    keep = mmd.leave_out(blocks, ["p"], 1)
    out = mmd.estimates(s[keep][:, keep], mmd.reindexed(blocks, ["p"]), sizes[keep], "p")
    p_without_1 = torch.cat([sets["p"][0], sets["p"][2]])
    assert out["to the truth"] == pytest.approx(metrics.mmd(p_without_1, t, widths), rel=1e-9)


def test_jackknife_of_a_mean_is_its_standard_error():
    mmd = load(BENCHMARKS / "expected_mmd.py")
    x = [1.0, 4.0, 2.0, 7.0]
    loo = [(sum(x) - v) / 3 for v in x]
    assert mmd.jackknife(loo) == pytest.approx(statistics.stdev(x) / 2)
