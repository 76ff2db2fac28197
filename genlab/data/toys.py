"""2-D toy distributions from the flow and diffusion literature, scaled to about [-4, 4].

Each sampler is a pure function `(n, generator) -> (x, y)`: x is (n, 2) float64, y is the
(n,) int64 index of the sample's mixture component (ring, arm, half, mode) or None when the
distribution has none. Only the local `torch.Generator` is used, never the global RNG. The
shapes follow the FFJORD toy benchmarks (Grathwohl et al., 2019).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from genlab.data.dataset import Dataset, check_memory

Toy = tuple[torch.Tensor, torch.Tensor | None]

# Each split draws from its own random stream; these codes must never change.
_SPLIT_CODES = {"train": 0, "test": 1, "all": 2}
_F64 = torch.float64


def _uniform(
    gen: torch.Generator, *shape: int, low: float = 0.0, high: float = 1.0
) -> torch.Tensor:
    return low + (high - low) * torch.rand(*shape, generator=gen, dtype=_F64)


def _normal(gen: torch.Generator, *shape: int, std: float = 1.0) -> torch.Tensor:
    return std * torch.randn(*shape, generator=gen, dtype=_F64)


def _component(gen: torch.Generator, n: int, k: int) -> torch.Tensor:
    """(n,) int64 component indices, uniform over 0..k-1."""
    return torch.randint(k, (n,), generator=gen, dtype=torch.int64)


def _polar(radius: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """(n,) radii and angles -> (n, 2) points."""
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)


def moons(n: int, gen: torch.Generator) -> Toy:
    """Two interleaved half circles (y = which half), centred and scaled by 2.5."""
    y = _component(gen, n, 2)
    t = _uniform(gen, n, high=math.pi)
    upper = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
    lower = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], dim=1)
    x = torch.where(y[:, None] == 0, upper, lower) - torch.tensor([0.5, 0.25], dtype=_F64)
    return 2.5 * (x + _normal(gen, n, 2, std=0.05)), y


def circles(n: int, gen: torch.Generator) -> Toy:
    """Two concentric circles of radius 3 (y = 0) and 1.5 (y = 1) with noise std 0.2."""
    y = _component(gen, n, 2)
    radius = 3.0 - 1.5 * y.to(_F64)
    x = _polar(radius, _uniform(gen, n, high=2 * math.pi))
    return x + _normal(gen, n, 2, std=0.2), y


def swissroll(n: int, gen: torch.Generator) -> Toy:
    """The 2-D Swiss roll t (cos t, sin t) / 4 for t in [1.5 pi, 4.5 pi], noise std 0.25."""
    t = _uniform(gen, n, low=1.5 * math.pi, high=4.5 * math.pi)
    return _polar(t / 4, t) + _normal(gen, n, 2, std=0.25), None


def eight_gaussians(n: int, gen: torch.Generator) -> Toy:
    """Eight Gaussians (std 0.35) at angles k pi / 4 on the circle of radius 2 sqrt 2."""
    y = _component(gen, n, 8)
    centres = _polar(
        torch.full((8,), 2 * math.sqrt(2), dtype=_F64), torch.arange(8, dtype=_F64) * math.pi / 4
    )
    return centres[y] + _normal(gen, n, 2, std=0.35), y


def checkerboard(n: int, gen: torch.Generator) -> Toy:
    """Uniform on the dark squares of a 4 x 4 board of side-2 squares over [-4, 4]^2."""
    u = _uniform(gen, n, low=-2.0, high=2.0)
    # v in [0, 1) or [-2, -1), shifted up by one on every other column
    v = _uniform(gen, n) - 2.0 * _component(gen, n, 2) + torch.floor(u).remainder(2)
    return 2.0 * torch.stack([u, v], dim=1), None


def two_spirals(n: int, gen: torch.Generator) -> Toy:
    """Two interleaved Archimedean spirals (y = arm), 1.5 turns each, noise std 0.1."""
    y = _component(gen, n, 2)
    t = torch.sqrt(_uniform(gen, n)) * 3 * math.pi
    arm = torch.stack([-t * torch.cos(t), t * torch.sin(t)], dim=1) / 3
    sign = 1.0 - 2.0 * y[:, None].to(_F64)
    return sign * arm + _normal(gen, n, 2, std=0.1), y


def pinwheel(n: int, gen: torch.Generator) -> Toy:
    """Five curved arms (y = arm k), scaled by 2.

    Radial r = 1 + 0.3 z1, tangential 0.1 z2, rotated by the angle 2 pi k / 5 + 0.25 e^r.
    """
    y = _component(gen, n, 5)
    radial = 1.0 + _normal(gen, n, std=0.3)
    tangential = _normal(gen, n, std=0.1)
    angle = 2 * math.pi * y.to(_F64) / 5 + 0.25 * torch.exp(radial)
    cos, sin = torch.cos(angle), torch.sin(angle)
    x = torch.stack([radial * cos - tangential * sin, radial * sin + tangential * cos], dim=1)
    return 2.0 * x, y


def rings(n: int, gen: torch.Generator) -> Toy:
    """Four concentric rings of radius 3, 2.25, 1.5, 0.75 (y = ring), noise std 0.08."""
    y = _component(gen, n, 4)
    radius = 3.0 - 0.75 * y.to(_F64)
    return _polar(radius, _uniform(gen, n, high=2 * math.pi)) + _normal(gen, n, 2, std=0.08), y


TOY_SAMPLERS: dict[str, Callable[[int, torch.Generator], Toy]] = {
    "moons": moons,
    "circles": circles,
    "swissroll": swissroll,
    "8gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "2spirals": two_spirals,
    "pinwheel": pinwheel,
    "rings": rings,
}
TOYS: tuple[str, ...] = tuple(TOY_SAMPLERS)
DEFAULT_N = {"train": 10_000, "test": 2_000, "all": 10_000}
TOY_BYTES_PER_POINT = 80
"""Peak memory of a draw per point: a few float64 (n, 2) temporaries and the float32 result."""


def split_generator(seed: int, split: str) -> torch.Generator:
    """A torch.Generator seeded from (seed, split), so each split is an independent draw.

    The pair is hashed by NumPy's `SeedSequence` (a fixed, version-stable mixing), so
    nearby seeds and the three splits give unrelated streams.
    """
    state = np.random.SeedSequence([seed, _SPLIT_CODES[split]]).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


def load_toy(name: str, split: str, n: int | None, seed: int) -> Dataset:
    """Draw n samples of a toy: x (n, 2) float32, y (n,) int64 or None, kind "points".

    Raises:
        ValueError: n points would not fit in this machine's memory (the message says how
            much they would need).
    """
    n = DEFAULT_N[split] if n is None else n
    check_memory(n * TOY_BYTES_PER_POINT, f"drawing n={n:,} points of {name!r}", "use a smaller n")
    x, y = TOY_SAMPLERS[name](n, split_generator(seed, split))
    return Dataset(x=x.to(torch.float32), y=y, event_shape=(2,), kind="points", name=name)
