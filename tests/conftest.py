"""Shared fixtures."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors run faster, and steadier on a shared 2-core machine, on one intra-op
    thread (contended threads spin-wait: measured 5-13x slower on these tests)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
