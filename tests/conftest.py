"""Shared fixtures."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors run faster, and steadier on a shared 2-core machine, on one intra-op
    thread (contended threads spin-wait: measured 5-13x slower on these tests).

    The count is lowered and not raised back: raising torch's thread count after lowering
    it breaks MKL's batched LAPACK in torch 2.13 (DLASWP errors, then a hang, in a later
    test's batched `torch.linalg.inv`), so the rest of the session keeps one thread."""
    torch.set_num_threads(1)
    yield
