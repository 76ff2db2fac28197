"""The expected MMD² of a sampler on a 2-D toy, from hundreds of thousands of points: what the
mean over ~1,000 noise seeds of 4,000-point draws would show, in one run.

    python benchmarks/expected_mmd.py --model DIR/circles_diffusion_120s --toy circles
        [--points 200000] [--chunk 4000] [--groups 10] [--truth 4000000] [--nodes 2048]
        [--samplers "ddpm 1000,dpm++ 50"] [--extra '{"dpm++ 15 power": {...}}']
        [--threads 1] [--json FILE] [--quick]

Why: the unbiased MMD²_u of n = 4,000 points against the benchmark's fixed reference R
(`iterative_toys.reference`) varies by ~9e-5 from seed to seed on circles, so 24 seeds cannot
tell DPM-Solver++ 15 from DDPM 1,000 within 10% (BENCHMARKS.md, "Circles at 24 noise seeds").
But its expectation does not depend on n: with μ_P the kernel mean embedding of the model's
distribution P, μ̂_R that of the reference and ‖·‖ the RKHS norm,

    E MMD²_u(P-draw, R) = ‖μ_P‖² + U(R) − 2⟨μ_P, μ̂_R⟩,

so it is estimated from N ≫ n points of P at once: ‖μ_P‖² by the U-statistic
(Σ_{i≠j} k(x_i, x_j)) / (N(N − 1)), the cross term by the plain mean. The same for a large draw T
of the toy's own distribution (--truth points of its test split, seeds TRUTH_SEED + g) gives
the data's expected floor; printed per sampler (the kernel is `metrics.mmd`'s, at the
reference's fixed widths):
- E MMD²: the expected figure of one 4,000-point draw (the seeds check's "mean of k");
- excess: E MMD²(P) − E MMD²(T) = ‖μ_P‖² − ‖μ_T‖² − 2⟨μ_P − μ_T, μ̂_R⟩, the expectation of the
  seeds check's "excess over the floor mean";
- to the truth: ‖μ_P − μ_T‖², the MMD² against the distribution itself (an infinite
  reference): the excess's expectation over the reference's draw (E_R ⟨μ_P − μ_T, μ̂_R⟩ =
  ⟨μ_P − μ_T, μ_T⟩), free of R's own noise, so the figure to judge a sampler by;
and for each sampler after the first, its ratio to the first on both (the target:
DPM-Solver++ 15's within 1.1 × DDPM 1,000's).

Kernel sums at N = 10^5..10^6 are not pairwise: the 2-D points are moved to the nearest node of
one square grid (--nodes per side over the pooled extent: spacing ~0.004 on circles, 190 x
below the smallest kernel width) and the kernel is applied to the node counts by an FFT
convolution (`binned_kernel_sums`), exact on the grid. Moving points by at most half a spacing
changes a kernel sum by a relative ~spacing / width / sqrt(N) at random (the shifts' signs
cancel) plus a bias ~(spacing / width)² of a smoother kernel; on two 4,000-point circles draws
the MMD² moved by 9e-8 of 2.2e-4 (the test holds it to 1e-5 of `metrics.mmd`).
Standard errors: delete-one-group jackknife, unit g being group g of the sampler(s) and of
the truth together (the fixed reference R is the target, not a draw). Each sampler's points
are --points / --chunk draws of --chunk points (noise seeds 0, 1, ..., so seeds 0..23 are the
seeds check's draws), dealt round-robin into --groups groups, and a ratio or difference leaves
the same group out of both sides (paired for two deterministic solvers from the same seeds).

Cost (one thread, two runs side by side on 2026-12-06's machine, the points recipe's 128-wide
MLP): ~3.3 ms a point for ddpm 1,000 (1,000,000 points: ~55 min), ~0.07 ms for dpm++ 15 and
unipc 15, ~0.2 ms for dpm++ 50; the kernel sums of 101 groups ~6 min (~35 MB of memory a
group). --quick: 4,000 points in chunks of 1,000, ddpm at 100 steps, 200,000 truth points,
512 nodes (a smoke run).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from diffusion_seeds_check import SAMPLERS
from iterative_toys import reference

import genlab
from genlab.data import load_dataset

TRUTH_SEED = 10_000
"""The truth's groups are the toy's test split at seeds TRUTH_SEED + g (the reference is seed
3,000 and the floor draws 4,000 + i: no draw is shared)."""


def binned_kernel_sums(
    groups: list[torch.Tensor], bandwidths: list[float], nodes: int
) -> torch.Tensor:
    """S (G, G), S[b, c] = Σ_{x ∈ b} Σ_{y ∈ c} k(x, y) over 2-D point sets, with k(a, b) =
    (1/H) Σ_h exp(−|a − b|² / (2h²)) (`metrics.mmd`'s kernel), each point moved to the nearest
    node of a nodes × nodes grid over the pooled extent. The counts c_b on the grid are
    convolved with k at every node offset by FFT on a 2·nodes period (no wrap-around), so
    S[b, c] = Σ c_b · (k ∗ c_c) exactly for the moved points. float64 throughout."""
    pooled = torch.cat(groups).double()
    lo = pooled.min(0).values
    spacing = float((pooled.max(0).values - lo).max()) / (nodes - 1)
    period = 2 * nodes
    offsets = torch.arange(period, dtype=torch.float64)
    offsets = torch.where(offsets < nodes, offsets, offsets - period) * spacing
    kernel = torch.zeros(period, period, dtype=torch.float64)
    for h in bandwidths:
        g = torch.exp(-(offsets**2) / (2.0 * h * h))
        kernel += torch.outer(g, g)  # exp(−(dx² + dy²)/2h²) is separable
    kernel_f = torch.fft.rfft2(kernel / len(bandwidths))

    def counts(x: torch.Tensor) -> torch.Tensor:
        ij = torch.round((x.double() - lo) / spacing).long()
        c = torch.bincount(ij[:, 0] * nodes + ij[:, 1], minlength=nodes * nodes)
        return c.reshape(nodes, nodes).double()

    convolved = []  # the counts are binned again below: one dense grid a group, not two
    for x in groups:
        conv = torch.fft.irfft2(
            torch.fft.rfft2(counts(x), s=(period, period)) * kernel_f, s=(period, period)
        )
        convolved.append(conv[:nodes, :nodes].contiguous())
    s = torch.empty(len(groups), len(groups), dtype=torch.float64)
    for b, x in enumerate(groups):
        c = counts(x)
        for j, conv in enumerate(convolved):
            s[b, j] = (c * conv).sum()
    return (s + s.T) / 2  # symmetric up to FFT rounding


def u_statistic(s: torch.Tensor, sizes: torch.Tensor) -> float:
    """‖μ‖² by Σ_{i≠j} k(x_i, x_j) / (N(N − 1)) from a sample's block sums S (k(x, x) = 1)."""
    n = float(sizes.sum())
    return (float(s.sum()) - n) / (n * (n - 1))


def cross_mean(s: torch.Tensor, sizes_a: torch.Tensor, sizes_b: torch.Tensor) -> float:
    """⟨μ_a, μ_b⟩ by the mean of k over all pairs (one point of each sample)."""
    return float(s.sum()) / (float(sizes_a.sum()) * float(sizes_b.sum()))


def estimates(s: torch.Tensor, blocks: dict[str, slice], sizes: torch.Tensor, model: str) -> dict:
    """E MMD², excess and distance to the truth (module docstring) of sampler `model` from the
    full block matrix S, whose blocks are the samplers', "truth"'s and "ref"'s groups."""

    def u(name: str) -> float:
        b = blocks[name]
        return u_statistic(s[b, b], sizes[b])

    def x(a: str, c: str) -> float:
        return cross_mean(s[blocks[a], blocks[c]], sizes[blocks[a]], sizes[blocks[c]])

    u_p, u_t, u_r = u(model), u("truth"), u("ref")
    expected = u_p + u_r - 2 * x(model, "ref")
    floor = u_t + u_r - 2 * x("truth", "ref")
    return {"E MMD2": expected, "floor": floor, "excess": expected - floor,
            "to the truth": u_p + u_t - 2 * x(model, "truth")}  # fmt: skip


def jackknife(values: list[float]) -> float:
    """Delete-one-group jackknife standard error, from the G leave-one-out values."""
    g = len(values)
    mean = sum(values) / g
    return ((g - 1) / g * sum((v - mean) ** 2 for v in values)) ** 0.5 if g > 1 else float("nan")


def leave_out(blocks: dict[str, slice], names: list[str], g: int) -> list[int]:
    """Row indices of S without group g of each sampler in `names`."""
    keep = []
    for name, b in blocks.items():
        rows = list(range(b.start, b.stop))
        if name in names:
            del rows[g]
        keep += rows
    return keep


def reindexed(blocks: dict[str, slice], names: list[str]) -> dict[str, slice]:
    """The blocks after `leave_out` removed one group of each sampler in `names`."""
    out, start = {}, 0
    for name, b in blocks.items():
        size = b.stop - b.start - (1 if name in names else 0)
        out[name] = slice(start, start + size)
        start += size
    return out


def draw(model, kwargs: dict, points: int, chunk: int, groups: int) -> list[torch.Tensor]:
    """points / chunk draws at noise seeds 0, 1, ..., dealt round-robin into `groups` groups."""
    parts: list[list[torch.Tensor]] = [[] for _ in range(groups)]
    for seed in range(points // chunk):
        parts[seed % groups].append(
            model.sample(chunk, seed=seed, **kwargs).detach().double().cpu()
        )
    return [torch.cat(p) for p in parts]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a saved diffusion (or flow) folder")
    p.add_argument("--toy", required=True)
    p.add_argument("--points", type=int, default=200_000)
    p.add_argument("--chunk", type=int, default=4000)
    p.add_argument("--groups", type=int, default=10)
    p.add_argument("--truth", type=int, default=4_000_000)
    p.add_argument("--nodes", type=int, default=2048)
    p.add_argument("--samplers", default="ddpm 1000,dpm++ 15,dpm++ 50",
                   help="labels of the seeds check's SAMPLERS or --extra's, comma-separated; "
                        "the first is the ratios' base")  # fmt: skip
    p.add_argument("--extra", default=None, help="JSON {label: sample options} to add")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    table = dict(SAMPLERS) | (json.loads(args.extra) if args.extra else {})
    labels = [s.strip() for s in args.samplers.split(",")]
    if missing := [s for s in labels if s not in table]:
        raise SystemExit(f"--samplers: unknown {missing}; known: {list(table)}")
    samplers = {s: dict(table[s]) for s in labels}
    if args.quick:
        args.points, args.chunk, args.truth, args.nodes = 4000, 1000, 200_000, 512
        args.groups = min(args.groups, 4)
        for kwargs in samplers.values():
            if kwargs.get("method") == "ddpm":
                kwargs["steps"] = 100
    if args.points // args.chunk < args.groups:
        raise SystemExit(f"--points / --chunk must give at least --groups ({args.groups}) draws")
    print(f"# expected_mmd {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {args.model}, {args.toy}, "
          f"{args.points} points a sampler in {args.groups} groups, truth {args.truth}, "
          f"{args.nodes} nodes, threads {args.threads}", flush=True)  # fmt: skip
    model = genlab.load(args.model)
    ref, bandwidths = reference(args.toy, 4000)
    per = args.truth // args.groups
    sets = {"truth": [load_dataset(args.toy, split="test", n=per, seed=TRUTH_SEED + g).x.double()
                      for g in range(args.groups)], "ref": [ref.double()]}  # fmt: skip
    seconds = {}
    for label, kwargs in samplers.items():
        start = time.perf_counter()
        sets[label] = draw(model, kwargs, args.points, args.chunk, args.groups)
        seconds[label] = time.perf_counter() - start
        print(
            f"  drew {label}: {sum(len(g) for g in sets[label])} points, {seconds[label]:.0f} s",
            flush=True,
        )
    start = time.perf_counter()
    names = list(sets)
    flat = [g for name in names for g in sets[name]]
    sizes = torch.tensor([len(g) for g in flat], dtype=torch.float64)
    blocks, at = {}, 0
    for name in names:
        blocks[name] = slice(at, at + len(sets[name]))
        at += len(sets[name])
    s = binned_kernel_sums(flat, bandwidths, args.nodes)
    print(f"  kernel sums: {time.perf_counter() - start:.0f} s\n", flush=True)

    def loo(names_out: list[str], g: int) -> tuple[torch.Tensor, dict, torch.Tensor]:
        keep = leave_out(blocks, names_out, g)
        return s[keep][:, keep], reindexed(blocks, names_out), sizes[keep]

    results, base = {}, labels[0]
    keys = ("E MMD2", "excess", "to the truth")
    print("| sampler | E MMD² (SE) | excess (SE) | to the truth (SE) | excess / "
          f"{base}'s | to the truth / {base}'s | seconds |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for label in labels:
        full = estimates(s, blocks, sizes, label)
        outs = [estimates(*loo([label, "truth"], g), label) for g in range(args.groups)]
        se = {k: jackknife([o[k] for o in outs]) for k in keys}
        row = {"estimate": full, "se": se, "seconds": seconds[label]}
        ratio_cells = ["", ""]
        if label != base:
            pairs = []
            for g in range(args.groups):
                both = loo([label, base, "truth"], g)
                pairs.append((estimates(*both, label), estimates(*both, base)))
            base_full = results[base]["estimate"]
            for i, k in enumerate(("excess", "to the truth")):
                r = full[k] / base_full[k]
                r_se = jackknife([a[k] / b[k] for a, b in pairs])
                d_se = jackknife([a[k] - b[k] for a, b in pairs])
                row[f"{k} ratio"], row[f"{k} ratio se"] = r, r_se
                row[f"{k} difference"] = full[k] - base_full[k]
                row[f"{k} difference se"] = d_se
                ratio_cells[i] = f"{r:.3f} ± {r_se:.3f}"
        results[label] = row
        print(f"| {label} | {full['E MMD2']:.3e} ({se['E MMD2']:.1e}) | {full['excess']:.3e} "
              f"({se['excess']:.1e}) | {full['to the truth']:.3e} ({se['to the truth']:.1e}) | "
              f"{ratio_cells[0]} | {ratio_cells[1]} | {seconds[label]:.0f} |",
              flush=True)  # fmt: skip
    floor = results[base]["estimate"]["floor"]
    print(f"\nthe data's expected MMD² against the reference (the floor's mean): {floor:.3e}")
    if args.json:
        record = {"model": args.model, "toy": args.toy, "samplers": samplers, "args": vars(args),
                  "results": results}  # fmt: skip
        Path(args.json).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
