"""Tests of genlab.batches (the data order and where batches come from), of NpyArray's
run reads, and of the streamed statistics the neural families' set-up uses."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from genlab import batches, train
from genlab.batches import RowSource, batch_indices, default_window, positions_to_rows
from genlab.data import NpyArray
from genlab.models.inputs import TrainingData, moments, value_range
from genlab.models.vae_maths import infer_levels, resolve_likelihood


def reference_batches(n, batch_size, seed, epoch=0, index=0):
    """The data order of genlab <= session 5 (train.iterate_batches), written out again."""
    per_epoch, size = max(n // batch_size, 1), min(batch_size, n)
    while True:
        mixed = np.random.SeedSequence([seed % 2**64, epoch]).generate_state(1)[0]
        order = torch.randperm(n, generator=torch.Generator().manual_seed(int(mixed)))
        for i in range(index, per_epoch):
            yield epoch, i, order[i * size : (i + 1) * size]
        epoch, index = epoch + 1, 0


def take(iterator, k):
    return [next(iterator) for _ in range(k)]


def same(a, b) -> bool:
    return len(a) == len(b) and all(
        e1 == e2 and i1 == i2 and torch.equal(r1, r2)
        for (e1, i1, r1), (e2, i2, r2) in zip(a, b, strict=True)
    )


# -- window = 1: exactly the order of earlier versions ----------------------------------------
@pytest.mark.parametrize(
    "n, batch_size, seed, epoch, index",
    [(100, 10, 0, 0, 0), (103, 16, 7, 0, 3), (5, 8, 1, 2, 0), (1000, 128, 2**63 - 1, 4, 7),
     (64, 64, 3, 1, 0), (1, 1, 0, 0, 0), (37, 5, 11, 3, 7)],
)  # fmt: skip
def test_window_one_is_the_old_order(n, batch_size, seed, epoch, index):
    ours = take(batch_indices(n, batch_size, seed, epoch, index), 25)
    assert same(ours, take(reference_batches(n, batch_size, seed, epoch, index), 25))
    if hasattr(train, "iterate_batches"):  # until the trainer calls batch_indices itself
        old = train.iterate_batches(n, batch_size, seed, epoch, index)
        assert same(ours, take(old, 25))


# -- windows of contiguous rows ---------------------------------------------------------------
def brute_force_epoch(n, window, seed, epoch):
    """The epoch's row list written out: windows [k w, min((k + 1) w, n)) in permuted order."""
    order = batches.window_permutation(math.ceil(n / window), seed, epoch)
    return torch.cat([torch.arange(k * window, min((k + 1) * window, n)) for k in order.tolist()])


@pytest.mark.parametrize("n, window", [(10, 3), (100, 7), (128, 64), (130, 64), (50, 50), (9, 1)])
def test_positions_match_the_written_out_epoch(n, window):
    for epoch in range(4):
        order = batches.window_permutation(math.ceil(n / window), 5, epoch)
        expected = brute_force_epoch(n, window, 5, epoch)
        assert torch.equal(positions_to_rows(torch.arange(n), order, n, window), expected)
        assert torch.equal(expected.sort().values, torch.arange(n))  # every row once


@pytest.mark.parametrize(
    "n, batch_size, window", [(100, 10, 7), (130, 32, 64), (1000, 100, 64), (20, 50, 3),
                              (64, 8, 8), (31, 4, 5)],
)  # fmt: skip
def test_window_batches_cover_each_row_once_per_epoch(n, batch_size, window):
    per_epoch = max(n // batch_size, 1)
    it = batch_indices(n, batch_size, seed=3, window=window)
    for epoch in range(3):
        got = take(it, per_epoch)
        assert [(e, i) for e, i, _ in got] == [(epoch, i) for i in range(per_epoch)]
        rows = torch.cat([r for _, _, r in got])
        size = min(batch_size, n)
        assert len(rows) == per_epoch * size and len(rows.unique()) == len(rows)
        expected = brute_force_epoch(n, min(window, n), 3, epoch)[: per_epoch * size]
        assert torch.equal(rows, expected)
        if n % batch_size == 0 or n < batch_size:
            assert torch.equal(rows.sort().values, torch.arange(n))
        for r in (r for _, _, r in got):  # a batch is a few contiguous runs
            runs = 1 + int((r.diff() != 1).sum())
            assert runs <= math.ceil(size / window) + 1 + (n % window != 0)


def test_window_order_is_reproducible_and_resumable():
    args = dict(n=1000, batch_size=64, seed=9, window=16)
    fresh = take(batch_indices(**args), 40)
    assert same(fresh, take(batch_indices(**args), 40))
    other = take(batch_indices(**{**args, "seed": 10}), 1)
    assert not torch.equal(other[0][2], fresh[0][2])
    for k in (1, 14, 15, 16, 33):  # resume from the position after batch k - 1
        epoch, index, _ = fresh[k - 1]
        resumed = take(batch_indices(**args, epoch=epoch, index=index + 1), 40 - k)
        assert same(resumed, fresh[k:])


def test_batch_indices_refuse_bad_arguments():
    for kw in [dict(n=0), dict(batch_size=0), dict(window=0), dict(window=2.0), dict(epoch=-1),
               dict(index=True)]:  # fmt: skip
        with pytest.raises(ValueError, match="must be an integer"):
            next(batch_indices(**{"n": 10, "batch_size": 2, "seed": 0, **kw}))


def test_default_window(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((4, 2), np.float32))
    assert default_window(torch.zeros(4, 2)) == 1
    assert default_window(NpyArray(tmp_path / "a.npy")) == batches.STREAM_WINDOW == 64


# -- RowSource -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64, ">f4", np.int16])
def test_row_source_file_and_tensor_give_the_same_batches(tmp_path, dtype):
    rng = np.random.default_rng(0)
    array = (rng.normal(size=(300, 3, 2)) * 100).astype(dtype)
    np.save(tmp_path / "x.npy", array)
    y = torch.from_numpy(rng.integers(0, 5, 300))
    tensor = torch.from_numpy(array.astype(np.float32))
    in_memory = RowSource(tensor, y, "cpu")
    streamed = RowSource(NpyArray(tmp_path / "x.npy"), y, "cpu")
    assert in_memory.resident and not streamed.resident and streamed.streamed
    assert in_memory.x.data_ptr() == tensor.data_ptr()  # on the CPU already: no copy
    assert len(streamed) == 300 and streamed.shape == (300, 3, 2)
    for _, _, rows in take(batch_indices(300, 32, 1, window=8), 12):
        xa, ya = in_memory.take(rows)
        xb, yb = streamed.take(rows)
        assert xb.dtype == torch.float32 and yb.dtype == torch.int64
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(xb, tensor[rows]) and torch.equal(yb, y[rows])


def test_row_source_keeps_the_order_and_repeats_of_rows(tmp_path):
    array = np.arange(40, dtype=np.float32).reshape(20, 2)
    np.save(tmp_path / "x.npy", array)
    source = RowSource(NpyArray(tmp_path / "x.npy"), None, "cpu")
    rows = torch.tensor([19, 3, 3, 0, 7, 18])
    (x,) = source.take(rows)
    assert torch.equal(x, torch.from_numpy(array)[rows])


def test_row_source_never_copies_a_cpu_tensor_and_checks_its_input(monkeypatch):
    x, y = torch.randn(50, 4), torch.arange(50)
    monkeypatch.setattr(batches, "_fits_on", lambda device, nbytes: False)
    host = RowSource(x, y, "cpu")  # on the CPU a tensor is where it is used, whatever its size
    assert host.resident
    rows = torch.tensor([4, 1, 49])
    assert all(torch.equal(a, b) for a, b in zip(host.take(rows), (x[rows], y[rows]), strict=True))
    with pytest.raises(TypeError, match="Tensor or a genlab NpyArray"):
        RowSource(x.numpy(), None, "cpu")
    with pytest.raises(ValueError, match="50 rows"):
        RowSource(x, y[:10], "cpu")


# -- NpyArray: one read per run ------------------------------------------------------------------
def count_preadv(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = os.preadv

    def counting(fd, buffers, offset):
        calls.append(offset)
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", counting)
    return calls


def test_npy_index_reads_one_pread_per_run(tmp_path, monkeypatch):
    array = np.arange(20_000 * 4, dtype=np.float32).reshape(20_000, 4)  # 16-byte rows
    np.save(tmp_path / "x.npy", array)
    lazy = NpyArray(tmp_path / "x.npy").rows(100, 19_000)
    calls = count_preadv(monkeypatch)
    runs = np.concatenate([np.arange(5000, 5064), np.arange(64), np.arange(12_000, 12_010)])
    assert np.array_equal(lazy[runs].numpy(), array[100 + runs])
    assert len(calls) == 3  # three runs, far apart (> GAP_BYTES)
    calls.clear()
    share = np.arange(3000, 3128)[::2]  # an interleaved share of one window: read through
    assert np.array_equal(lazy[torch.from_numpy(share)].numpy(), array[100 + share])
    assert len(calls) == 1
    calls.clear()
    picks = np.array([9000, 5, 9000, 17, 5])  # unsorted, repeated
    assert np.array_equal(lazy[picks].numpy(), array[100 + picks])
    assert len(calls) == 2
    assert lazy[np.array([], dtype=np.int64)].shape == (0, 4)


def test_npy_index_reads_check_only_the_wanted_rows(tmp_path):
    array = np.ones((200, 2), np.float64)
    array[10, 1] = np.nan
    np.save(tmp_path / "x.npy", array)
    lazy = NpyArray(tmp_path / "x.npy")
    assert torch.equal(lazy[np.array([8, 12])], torch.ones(2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"row 10, column 1 holds nan"):
        lazy[np.array([150, 10, 8])]
    with pytest.raises(ValueError, match=r"row 10, column 1"):
        NpyArray(tmp_path / "x.npy", start=5)[np.array([5, 100])]
    with pytest.raises(IndexError, match="out of range"):
        lazy[np.array([0, 200])]


# -- streamed statistics -------------------------------------------------------------------------
def test_moments_stream_chunks_and_match_numpy(tmp_path):
    rng = np.random.default_rng(1)
    array = (rng.normal(size=(1001, 3)) * [1, 10, 1e-3] + [1e4, -5, 0]).astype(np.float32)
    np.save(tmp_path / "x.npy", array)
    wide = array.astype(np.float64)
    for x in (torch.from_numpy(array), NpyArray(tmp_path / "x.npy")):
        for chunk_values in (3, 30, 1000, 10**6):  # 1 row per chunk .. one chunk
            m = moments(x, chunk_values)
            assert m.n == 1001 and m.mean.dtype == torch.float64
            np.testing.assert_allclose(m.mean.numpy(), wide.mean(0), rtol=1e-13, atol=1e-13)
            np.testing.assert_allclose(m.std.numpy(), wide.std(0), rtol=1e-10)
            assert (m.min, m.max) == (float(array.min()), float(array.max()))
            assert value_range(x, chunk_values) == (m.min, m.max)
    one = moments(torch.from_numpy(array))  # one chunk: torch's own statistics, bit for bit
    flat = torch.from_numpy(array).double()
    assert torch.equal(one.mean, flat.mean(0)) and torch.equal(one.std, flat.std(0, correction=0))


def test_moments_of_a_float64_file_are_those_of_its_float32_rows(tmp_path):
    wide = np.random.default_rng(4).normal(size=(999, 2)) * 1e3 + 1e-4
    np.save(tmp_path / "x.npy", wide)
    rows = torch.from_numpy(wide).float()  # what every batch holds
    for chunk_values in (100, 10**6):
        a, b = moments(NpyArray(tmp_path / "x.npy"), chunk_values), moments(rows, chunk_values)
        assert torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std) and a.min == b.min


def test_training_data_stays_lazy_and_checks_images(tmp_path):
    np.save(tmp_path / "img.npy", np.full((6, 1, 4, 4), 0.5, np.float32))
    np.save(tmp_path / "big.npy", np.full((6, 1, 4, 4), 2.0, np.float32))
    data = TrainingData.from_input(NpyArray(tmp_path / "img.npy"))
    assert data.kind == "image" and isinstance(data.lazy_rows(), NpyArray)
    assert torch.equal(data.moments().mean, torch.full((16,), 0.5, dtype=torch.float64))
    assert TrainingData.from_input(NpyArray(tmp_path / "big.npy")).kind == "points"
    with pytest.raises(ValueError, match="no rows of numbers"):
        TrainingData.from_input("some text").lazy_rows()


def test_vae_likelihood_rule_streams_a_file_like_a_tensor(tmp_path):
    rng = np.random.default_rng(2)
    cases = {
        "binary": (rng.random((40, 1, 4, 4)) > 0.5).astype(np.float32),
        "grid": (rng.integers(0, 17, (40, 1, 4, 4)) / 16).astype(np.float32),
        "points": rng.normal(size=(40, 3)).astype(np.float32),
    }
    for name, array in cases.items():
        np.save(tmp_path / f"{name}.npy", array)
        lazy, tensor = NpyArray(tmp_path / f"{name}.npy"), torch.from_numpy(array)
        kind = "points" if name == "points" else "image"
        for likelihood in ("auto", "gaussian"):
            assert resolve_likelihood(lazy, likelihood, kind, None) == resolve_likelihood(
                tensor, likelihood, kind, None
            )
        assert infer_levels(lazy) == infer_levels(tensor)
    assert resolve_likelihood(NpyArray(tmp_path / "grid.npy"), "auto", "image", None) == (
        "discretized", 17)  # fmt: skip
    with pytest.raises(ValueError, match=r"got values in \[-"):
        resolve_likelihood(NpyArray(tmp_path / "points.npy"), "bernoulli", "points", None)


# -- streamed training equals in-memory training -------------------------------------------------
@pytest.mark.parametrize("family", ["flow", "vae"])
def test_streamed_training_matches_in_memory_training_bit_for_bit(tmp_path, family):
    from genlab.data import load_dataset
    from genlab.models import FAMILIES

    moons = load_dataset("moons", n=500, seed=0).x.numpy().astype(np.float64)  # converted on read
    np.save(tmp_path / "moons.npy", moons)
    options = dict(max_steps=20, batch_size=64, data_window=8, seed=3, hidden=16)
    if family == "flow":
        options["depth"] = 1
    in_memory = FAMILIES[family](**options).fit(torch.from_numpy(moons).float())
    streamed = FAMILIES[family](**options).fit(NpyArray(tmp_path / "moons.npy"))
    assert streamed.train_result_.steps == 20
    a, b = in_memory.state_dict(), streamed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if family == "flow":  # (the check below, on the cheaper VAE, that the order matters)
        return
    fresh = FAMILIES[family](**{**options, "data_window": 1}).fit(torch.from_numpy(moons).float())
    differs = any(not torch.equal(a[k], v) for k, v in fresh.state_dict().items())
    assert differs  # another window is another data order: the test can tell them apart
