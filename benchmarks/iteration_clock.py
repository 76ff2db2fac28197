"""Per-iteration timing inside one run, for benchmarks on a noisy shared machine."""

from __future__ import annotations

import time

import numpy as np


class IterationClock:
    """Wraps a method called once per EM iteration and records when each call starts."""

    def __init__(self, owner: type, name: str):
        self.owner, self.name, self.starts = owner, name, []
        self.original = getattr(owner, name)

    def __enter__(self) -> IterationClock:
        original, starts = self.original, self.starts

        def timed(*args, **kwargs):
            starts.append(time.perf_counter())
            return original(*args, **kwargs)

        setattr(self.owner, self.name, timed)
        return self

    def __exit__(self, *exc) -> None:
        setattr(self.owner, self.name, self.original)

    def iteration_seconds(self) -> list[float]:
        """Durations of the complete iterations (the first, which warms caches, dropped)."""
        return list(np.diff(self.starts))[1:]
