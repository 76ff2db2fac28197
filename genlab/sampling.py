"""Where a sampler's randomness comes from, and the starting noise a caller may pass: the part
of the sampling contract that flow matching, diffusion, the VAE and the autoregressive model
share (diffusers' `generator=` and `latents=`, k-diffusion's `noise_sampler`).

    model.sample(n, seed=0)                                       # a CPU generator seeded with 0
    model.sample(n, generator=torch.Generator().manual_seed(0))   # the same samples
    eps = torch.randn(n, *model.event_shape, generator=torch.Generator().manual_seed(0))
    model.sample(n, noise=eps)              # flow, ddim, dpm++, ode: the same samples again

`seed=s` is exactly `generator=torch.Generator().manual_seed(s)`; `seed=None` (and no
generator) seeds a fresh CPU generator from the operating system's entropy. A caller's
generator is advanced in place, as in diffusers, so two calls with one generator draw
different samples. Every draw is made on the generator's device (the CPU unless the caller
passes a CUDA generator) and then moved to the model's device, so one seed gives the same
noise on a CPU and on CUDA; the samples then agree to the precision of the device's
arithmetic. torch's global RNG is never read or advanced.

The per-step `callback(step, t, x)` and the progress bars live with the solvers
(`genlab.solvers.StepMonitor`), which run the steps.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from genlab.data.dataset import check_seed


def resolve_generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    """The generator of one sampling call: the caller's `generator` (used as is, advanced in
    place), else a CPU generator seeded with `seed` (None: from OS entropy).

    Raises:
        ValueError: both seed and generator given, or a bad seed.
        TypeError: generator is not a torch.Generator.
    """
    if generator is not None:
        if seed is not None:
            raise ValueError(
                "pass seed or generator, not both: seed=s is "
                "generator=torch.Generator().manual_seed(s)"
            )
        if not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator must be a torch.Generator, got {type(generator).__name__}; "
                "pass generator=torch.Generator().manual_seed(s), or seed=s"
            )
        return generator
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(check_seed(seed))
    return g


def standard_normal(
    shape: tuple[int, ...], generator: torch.Generator, device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> Tensor:  # fmt: skip
    """N(0, I) draws of `shape`, made on the generator's device and moved to `device`."""
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def uniform(
    shape: tuple[int, ...], generator: torch.Generator, device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> Tensor:  # fmt: skip
    """U[0, 1) draws of `shape`, made on the generator's device and moved to `device`."""
    return torch.rand(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def categorical(probs: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """n draws (with replacement) of the index of `probs` (K,): `torch.multinomial` on the
    generator's device, returned on the device of `probs`."""
    out = torch.multinomial(probs.to(generator.device), n, replacement=True, generator=generator)
    return out.to(probs.device)


def check_noise(noise: Any, shape: tuple[int, ...], what: str) -> Tensor:
    """`noise` as a tensor, checked to be a finite floating tensor of exactly `shape`.

    what: what the noise is, for the messages ("noise, the starting point x(1),").

    Raises:
        TypeError: not a tensor or array, or not floating point.
        ValueError: the wrong shape, or NaN or infinity.
    """
    if not isinstance(noise, Tensor):
        if not hasattr(noise, "__array__"):
            raise TypeError(
                f"{what} must be a float tensor of shape {shape}, got {type(noise).__name__}"
            )
        noise = torch.as_tensor(noise)
    if not noise.is_floating_point():
        raise TypeError(f"{what} must be a float tensor, got {noise.dtype}; use .float()")
    if tuple(noise.shape) != tuple(shape):
        raise ValueError(
            f"{what} must have shape {tuple(shape)} (n, then one sample's shape), got "
            f"{tuple(noise.shape)}; draw it as torch.randn{tuple(shape)}"
        )
    if math.prod(shape) and not bool(torch.isfinite(noise).all()):
        raise ValueError(f"{what} contains NaN or infinity; pass finite N(0, I) draws")
    return noise
