"""Where a checkerboard model's MMD² comes from: mass on the light squares, outside the board,
and near the dark squares' edges, for saved models and sampler options.

    python benchmarks/checkerboard_edges.py DIR [DIR ...] [--n 20000]
        [--samplers '[{}, {"steps": 200}, {"method": "euler", "steps": 400}]']

DIR: model folders fitted on the `checkerboard` toy (e.g. `iterative_toys.py --save`). The
toy is uniform on the 8 dark squares of a 4 x 4 board of side-2 squares over [-4, 4]^2;
"near an edge" is the share of the points on dark squares within 0.1 of a square's side
(1 - 0.9^2 = 19% for uniform squares of side 2).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

import genlab
from genlab.data import load_dataset


def board_statistics(x: np.ndarray) -> dict[str, float]:
    """Shares of x (n, 2) on light squares, outside [-4, 4]^2, and near a dark square's edge;
    `square_sd`: the spread of the 8 dark squares' shares, times 8 (0 for equal mass)."""
    inside = (np.abs(x) < 4).all(axis=1)
    i, j = np.floor(x[:, 0] / 2).astype(int), np.floor(x[:, 1] / 2).astype(int)
    dark = inside & ((i + j) % 2 == 0)
    squares = np.bincount((i[dark] + 2) * 4 + (j[dark] + 2), minlength=16)
    squares = squares[squares > 0] / max(dark.sum(), 1)
    edge = np.minimum(x[dark] % 2, 2 - x[dark] % 2).min(axis=1)
    return {
        "light": float((inside & ~dark).mean()),
        "outside": float(1 - inside.mean()),
        "near_edge": float((edge < 0.1).mean()),
        "square_sd": float(8 * squares.std()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--samplers", default="[{}]", help="JSON list of sample() options")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("checkerboard", split="test", n=args.n, seed=5).x.numpy()
    rows = [("data", "", board_statistics(data))]
    for folder in args.models:
        model = genlab.load(folder)
        for options in json.loads(args.samplers):
            x = model.sample(args.n, seed=1, **options).numpy()
            rows.append((folder, json.dumps(options), board_statistics(x)))
    print("| model | sampler | on light squares | outside | near an edge | square spread |")
    print("|---|---|---|---|---|---|")
    for name, options, s in rows:
        print(f"| {name} | {options} | {s['light']:.1%} | {s['outside']:.1%} | "
              f"{s['near_edge']:.1%} | {s['square_sd']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
