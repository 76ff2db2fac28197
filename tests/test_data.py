"""Tests of genlab.data: toys, digits, MNIST, .npy/.csv files and NpyArray row windows."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from genlab.data import TOYS, Dataset, NpyArray, load_dataset
from genlab.data.images import digits_split_indices, fixed_permutation
from genlab.data.toys import TOY_SAMPLERS

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(
    not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"shared MNIST files not found in {MNIST_DIR}",
)

# number of components of the toys that have labels
TOY_COMPONENTS = {
    "moons": 2,
    "circles": 2,
    "8gaussians": 8,
    "2spirals": 2,
    "pinwheel": 5,
    "rings": 4,
}


def radii(x: torch.Tensor) -> torch.Tensor:
    return x.double().norm(dim=1)


# --- toys: the common contract -------------------------------------------------------------


@pytest.mark.parametrize("name", TOYS)
def test_toy_shape_dtype_bounds_and_labels(name):
    data = load_dataset(name, n=3000, seed=1)
    assert isinstance(data, Dataset)
    assert data.x.shape == (3000, 2) and data.x.dtype == torch.float32
    assert data.event_shape == (2,) and data.kind == "points" and data.name == name
    assert torch.isfinite(data.x).all()
    assert data.x.abs().max() < 5.0
    assert data.x.abs().max() > 2.5  # scaled to about [-4, 4], not left at unit scale
    if name in TOY_COMPONENTS:
        k = TOY_COMPONENTS[name]
        assert data.y is not None and data.y.shape == (3000,) and data.y.dtype == torch.int64
        assert set(data.y.tolist()) == set(range(k))
    else:
        assert data.y is None


@pytest.mark.parametrize("name", TOYS)
def test_toy_is_deterministic_and_splits_and_seeds_differ(name):
    a = load_dataset(name, split="train", n=500, seed=3)
    b = load_dataset(name, split="train", n=500, seed=3)
    assert torch.equal(a.x, b.x)
    assert (a.y is None and b.y is None) or torch.equal(a.y, b.y)
    test = load_dataset(name, split="test", n=500, seed=3)
    other_seed = load_dataset(name, split="train", n=500, seed=4)
    for other in (test, other_seed):
        assert not torch.equal(a.x, other.x)
    # independent draws share no sample (the test split is not a shifted train split either)
    shared = set(map(tuple, a.x.tolist())) & set(map(tuple, test.x.tolist()))
    assert not shared


def test_toy_default_sizes_and_prefix_free_seeding():
    assert len(load_dataset("moons")) == 10_000
    assert len(load_dataset("moons", split="test")) == 2_000
    assert len(load_dataset("moons", split="all")) == 10_000
    # seeds (1, train) and (0, test) must not collide the way seed * 2 + split would
    assert not torch.equal(
        load_dataset("rings", split="test", n=100, seed=0).x,
        load_dataset("rings", split="train", n=100, seed=1).x,
    )


def test_toys_leave_the_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    for name in TOYS:
        load_dataset(name, n=50)
    assert torch.equal(torch.get_rng_state(), state)


# --- toys: geometry ------------------------------------------------------------------------


def test_circles_radii_cluster_at_two_values():
    data = load_dataset("circles", n=4000)
    r = radii(data.x)
    expected = torch.where(data.y == 0, 3.0, 1.5).double()
    assert ((r - expected).abs() < 0.8).float().mean() > 0.995
    # two tight clusters: about half the points near each radius, none in the gap
    assert 0.45 < (r > 2.25).double().mean() < 0.55
    assert ((r - 2.25).abs() < 0.2).double().mean() < 0.01


def test_rings_have_four_radii():
    data = load_dataset("rings", n=4000)
    r = radii(data.x)
    expected = 3.0 - 0.75 * data.y.double()
    assert ((r - expected).abs() < 0.3).double().mean() > 0.999
    counts = torch.bincount(data.y, minlength=4)
    assert counts.min() > 800  # every ring is populated


def test_8gaussians_nearest_centre_matches_labels():
    data = load_dataset("8gaussians", n=4000)
    angles = torch.arange(8, dtype=torch.float64) * math.pi / 4
    centres = 2 * math.sqrt(2) * torch.stack([angles.cos(), angles.sin()], dim=1)
    nearest = torch.cdist(data.x.double(), centres).argmin(dim=1)
    assert (nearest == data.y).double().mean() > 0.98
    shares = torch.bincount(nearest, minlength=8).double() / len(data)
    assert shares.min() > 0.09 and shares.max() < 0.16  # 8 clusters of about 1/8 each


def test_moons_halves_are_upper_and_lower():
    data = load_dataset("moons", n=4000)
    upper, lower = data.x[data.y == 0], data.x[data.y == 1]
    assert upper[:, 1].mean() > 0.5 > -0.5 > lower[:, 1].mean()
    # the two halves interleave: each spans most of the x range
    assert upper[:, 0].min() < -3 and lower[:, 0].max() > 3


def test_checkerboard_points_lie_on_dark_squares():
    x = load_dataset("checkerboard", n=4000).x
    assert x.abs().max() <= 4.0
    cell = torch.floor(x / 2).long() + 2  # 0..3 per axis
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all()
    counts = torch.bincount(cell[:, 0] * 4 + cell[:, 1], minlength=16)
    assert (counts > 0).sum() == 8 and counts[counts > 0].min() > 400


def _distance_to_curve(x: torch.Tensor, curve: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x.double(), curve).min(dim=1).values


def test_swissroll_lies_on_its_spiral():
    x = load_dataset("swissroll", n=2000).x
    t = torch.linspace(1.5 * math.pi, 4.5 * math.pi, 4000, dtype=torch.float64)
    curve = (t / 4)[:, None] * torch.stack([t.cos(), t.sin()], dim=1)
    near = (_distance_to_curve(x, curve) < 0.5).double().mean()
    assert near > 0.9  # uniform points in the same disc give about 0.55


def test_2spirals_arms_are_point_reflections():
    data = load_dataset("2spirals", n=2000)
    t = torch.linspace(0, 3 * math.pi, 4000, dtype=torch.float64)
    arm = torch.stack([-t * t.cos(), t * t.sin()], dim=1) / 3
    own = torch.where(data.y == 0, 1.0, -1.0).double()[:, None]
    x = data.x.double() * own  # reflect arm 1 onto arm 0
    assert (_distance_to_curve(x, arm) < 0.3).double().mean() > 0.95
    assert (_distance_to_curve(-x, arm) < 0.3).double().mean() < 0.2


def test_pinwheel_arms_are_rotations_by_a_fifth_turn():
    data = load_dataset("pinwheel", n=5000)
    centroids = torch.stack([data.x[data.y == k].double().mean(dim=0) for k in range(5)])
    r = centroids.norm(dim=1)
    assert (r.max() - r.min()) < 0.15 and r.min() > 1.0
    angle = torch.atan2(centroids[:, 1], centroids[:, 0])
    step = torch.remainder(angle.roll(-1) - angle, 2 * math.pi)
    assert torch.allclose(step, torch.full((5,), 2 * math.pi / 5, dtype=torch.float64), atol=0.1)


def test_every_toy_is_registered():
    assert set(TOYS) == set(TOY_SAMPLERS) == {
        "moons", "circles", "swissroll", "8gaussians", "checkerboard", "2spirals", "pinwheel",
        "rings",
    }  # fmt: skip


# --- digits --------------------------------------------------------------------------------


def test_digits_split_sizes_values_and_labels():
    from sklearn.datasets import load_digits

    train, test, full = (load_dataset("digits", split=s) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(full)) == (1437, 360, 1797)
    for d in (train, test, full):
        assert d.x.dtype == torch.float32 and d.x.shape[1:] == (1, 8, 8) == d.event_shape
        assert d.kind == "image" and d.levels == 17 and d.y.dtype == torch.int64
        k = d.x * 16
        assert torch.equal(k, k.round()) and k.min() == 0 and k.max() == 16
    assert set(full.y.tolist()) == set(range(10)) and set(test.y.tolist()) == set(range(10))
    # all = train then test, and it is a permutation of scikit-learn's images
    assert torch.equal(full.x, torch.cat([train.x, test.x]))
    assert torch.equal(full.y, torch.cat([train.y, test.y]))
    bunch = load_digits()
    idx = digits_split_indices("all")
    assert sorted(idx.tolist()) == list(range(1797))
    assert np.array_equal(full.x.reshape(-1, 64).numpy() * 16, bunch.data[idx])
    assert np.array_equal(full.y.numpy(), bunch.target[idx])


def test_digits_split_is_disjoint_stable_and_ignores_seed():
    train_idx, test_idx = digits_split_indices("train"), digits_split_indices("test")
    assert not set(train_idx.tolist()) & set(test_idx.tolist())
    # the permutation sorts SeedSequence words; pinning its first entries catches a change
    # of the split, which would leak test images into models trained on an older train split
    words = np.random.SeedSequence(0).generate_state(10, np.uint64).tolist()
    assert fixed_permutation(10, 0).tolist() == sorted(range(10), key=words.__getitem__)
    assert train_idx[:5].tolist() == [983, 1375, 1712, 1766, 1250]
    assert test_idx[:5].tolist() == [1203, 810, 1448, 1455, 539]
    a = load_dataset("digits", split="test", seed=0)
    b = load_dataset("digits", split="test", seed=7)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    # the test split is not simply the last 360 images of scikit-learn's order
    assert not np.array_equal(np.sort(test_idx), np.arange(1437, 1797))


def test_digits_n_takes_the_first_rows_and_checks_the_size():
    first = load_dataset("digits", split="test", n=10)
    assert torch.equal(first.x, load_dataset("digits", split="test").x[:10])
    with pytest.raises(ValueError, match="360"):
        load_dataset("digits", split="test", n=361)


# --- MNIST ---------------------------------------------------------------------------------


@needs_mnist
def test_mnist_test_split():
    data = load_dataset("mnist", split="test", root=MNIST_DIR)
    assert data.x.shape == (10_000, 1, 28, 28) and data.x.dtype == torch.float32
    assert data.event_shape == (1, 28, 28) and data.kind == "image" and data.levels == 256
    assert data.x.min() == 0 and data.x.max() == 1
    assert torch.equal(data.x * 255, (data.x * 255).round())
    counts = torch.bincount(data.y, minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # "all" concatenates what exists: only the test pair is complete in the shared folder
    assert len(load_dataset("mnist", split="all", root=MNIST_DIR)) == 10_000


@needs_mnist
def test_mnist_missing_train_images_names_the_file():
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte") as err:
        load_dataset("mnist", split="train", root=MNIST_DIR)
    assert str(MNIST_DIR) in str(err.value) and "GENLAB_DATA" in str(err.value)
    assert "train-labels" not in str(err.value)  # that one exists


def test_mnist_without_any_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("GENLAB_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="GENLAB_DATA"):
        load_dataset("mnist")
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", split="all", root=tmp_path)


@needs_mnist
def test_mnist_from_environment_and_subfolder(monkeypatch):
    monkeypatch.setenv("GENLAB_DATA", str(MNIST_DIR))
    assert len(load_dataset("mnist", split="test", n=100)) == 100
    monkeypatch.setenv("GENLAB_DATA", str(MNIST_DIR.parent))  # finds the mnist/ subfolder
    assert load_dataset("mnist", split="test", n=5).x.shape == (5, 1, 28, 28)


def _decompressed(name: str) -> bytes:
    return gzip.decompress((MNIST_DIR / f"{name}.gz").read_bytes())


@needs_mnist
def test_mnist_raw_files_equal_gz(tmp_path):
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(_decompressed(name))
    raw = load_dataset("mnist", split="test", root=tmp_path, n=300)
    gz = load_dataset("mnist", split="test", root=MNIST_DIR, n=300)
    assert torch.equal(raw.x, gz.x) and torch.equal(raw.y, gz.y)


@needs_mnist
@pytest.mark.parametrize("damage", ["truncated_gz", "truncated_raw", "wrong_magic", "extra_byte"])
def test_mnist_corrupt_files_raise_value_error_naming_the_file(tmp_path, damage):
    labels = _decompressed("t10k-labels-idx1-ubyte")
    images_name = "t10k-images-idx3-ubyte"
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(labels)
    if damage == "truncated_gz":
        gz = (MNIST_DIR / f"{images_name}.gz").read_bytes()
        bad, expect = tmp_path / f"{images_name}.gz", "gzip"
        bad.write_bytes(gz[: len(gz) // 2])
    else:
        images = _decompressed(images_name)
        content, expect = {
            "truncated_raw": (images[:-1000], "truncated"),
            "wrong_magic": (labels, "magic"),  # a labels file where images belong
            "extra_byte": (images + b"\0", "bytes"),
        }[damage]
        bad = tmp_path / images_name
        bad.write_bytes(content)
    with pytest.raises(ValueError, match=expect) as err:
        load_dataset("mnist", split="test", root=tmp_path)
    assert str(bad) in str(err.value)


@needs_mnist
def test_mnist_label_count_must_match(tmp_path):
    labels = bytearray(_decompressed("t10k-labels-idx1-ubyte")[:1008])
    labels[4:8] = (1000).to_bytes(4, "big")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(bytes(labels))
    (tmp_path / "t10k-images-idx3-ubyte.gz").symlink_to(MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(ValueError, match="1000 labels for the 10000 images"):
        load_dataset("mnist", split="test", root=tmp_path)


# --- .npy files and NpyArray windows -------------------------------------------------------


@pytest.fixture
def npy_file(tmp_path):
    array = np.random.default_rng(0).normal(size=(103, 3))
    path = tmp_path / "points.npy"
    np.save(path, array)
    return path, array


def test_npy_is_lazy_and_split_90_10(npy_file):
    path, array = npy_file
    full = load_dataset(path, split="all")
    assert isinstance(full.x, NpyArray) and full.kind == "points" and full.event_shape == (3,)
    assert full.y is None and full.levels is None and full.name == str(path)
    assert len(full) == 103 and torch.equal(full.x[:], torch.from_numpy(array))
    train, test = load_dataset(str(path)), load_dataset(path, split="test")
    assert (len(train), len(test)) == (92, 11)  # 9 * 103 // 10 = 92
    assert isinstance(train.x, NpyArray) and isinstance(test.x, NpyArray)
    assert train.x.shape == (92, 3) and test.x.shape == (11, 3)
    assert np.array_equal(train.x[:].numpy(), array[:92])
    assert np.array_equal(test.x[:].numpy(), array[92:])
    assert np.array_equal(test.x[0].numpy(), array[92]) and np.array_equal(test.x[-1], array[-1])
    head = load_dataset(path, split="test", n=4)
    assert isinstance(head.x, NpyArray) and np.array_equal(head.x[:].numpy(), array[92:96])


def test_npy_window_indexing_equals_np_load(npy_file):
    path, _ = npy_file
    array = np.load(path)
    window = NpyArray(path).rows(10, 60)
    expected = array[10:60]
    assert len(window) == 50 and window.shape == (50, 3)
    for index in (slice(None), slice(5, 17), slice(3, 40, 4), slice(-7, None), slice(45, 99)):
        assert np.array_equal(window[index].numpy(), expected[index]), index
    picks = np.array([49, 0, 7, 7, 30])
    assert np.array_equal(window[picks].numpy(), expected[picks])
    assert np.array_equal(window[torch.tensor([1, 2])].numpy(), expected[[1, 2]])
    assert np.array_equal(window[-1].numpy(), expected[-1])
    with pytest.raises(IndexError):
        window[np.array([50])]
    with pytest.raises(IndexError):
        window[50]
    # windows nest, and the constructor takes file rows
    nested = window.rows(5, 8)
    assert np.array_equal(nested[:].numpy(), array[15:18])
    assert np.array_equal(NpyArray(path, start=15, stop=18)[:].numpy(), array[15:18])
    assert np.array_equal(NpyArray(path, start=100)[:].numpy(), array[100:])
    assert "start=15" in repr(nested) and len(NpyArray(path)) == 103
    with pytest.raises(ValueError, match="row window"):
        window.rows(10, 51)
    with pytest.raises(ValueError, match="row window"):
        NpyArray(path, start=5, stop=4)


@pytest.mark.parametrize("shape", [(20, 5, 6), (20, 3, 5, 6)])
def test_npy_images_get_a_channel_axis(tmp_path, shape):
    array = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    path = tmp_path / "images.npy"
    np.save(path, array)
    data = load_dataset(path, split="test")
    event_shape = (1, 5, 6) if len(shape) == 3 else (3, 5, 6)
    assert data.kind == "image" and data.event_shape == event_shape
    assert isinstance(data.x, NpyArray) and data.x.shape == (2, *event_shape)
    assert data.x[:].dtype == torch.uint8
    assert np.array_equal(data.x[:].numpy(), array[18:].reshape(2, *event_shape))
    assert data.x[1].shape == event_shape and data.x[np.array([0])].shape == (1, *event_shape)


def test_npy_bad_shapes_and_tiny_files(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros(10))
    with pytest.raises(ValueError, match="2-D"):
        load_dataset(tmp_path / "flat.npy")
    np.save(tmp_path / "tiny.npy", np.zeros((1, 2)))
    with pytest.raises(ValueError, match="split is empty"):
        load_dataset(tmp_path / "tiny.npy")  # 9 * 1 // 10 = 0 train rows
    assert len(load_dataset(tmp_path / "tiny.npy", split="test")) == 1
    np.save(tmp_path / "objects.npy", np.array([[1, "a"]], dtype=object))
    with pytest.raises(ValueError, match="object"):
        load_dataset(tmp_path / "objects.npy", split="all")
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "absent.npy")


# --- .csv files ----------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["", "x,y,z\n"])
def test_csv_with_and_without_header(tmp_path, header):
    rows = np.arange(30, dtype=np.float32).reshape(10, 3) / 4
    body = "\n".join(",".join(repr(float(v)) for v in row) for row in rows)
    path = tmp_path / "table.csv"
    path.write_text(header + body + "\n\n")
    full = load_dataset(path, split="all")
    assert full.x.dtype == torch.float32 and full.x.shape == (10, 3)
    assert torch.equal(full.x, torch.from_numpy(rows))
    assert full.kind == "points" and full.event_shape == (3,) and full.y is None
    assert torch.equal(load_dataset(path).x, full.x[:9])
    assert torch.equal(load_dataset(path, split="test").x, full.x[9:])


def test_csv_bad_cell_and_ragged_rows_name_the_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("a,b\n1,2\n3,oops\n5,6\n")
    with pytest.raises(ValueError, match=r"line 3: cell 'oops'"):
        load_dataset(path)
    path.write_text("1,2\n3,4,5\n")
    with pytest.raises(ValueError, match="line 2"):
        load_dataset(path)
    path.write_text("1,2\nx,y\n")  # only the first line may be a header
    with pytest.raises(ValueError, match="line 2"):
        load_dataset(path)
    path.write_text("x,y\n")
    with pytest.raises(ValueError, match="no data rows"):
        load_dataset(path)


def test_existing_file_without_suffix_is_sniffed(tmp_path):
    array = np.ones((20, 2), dtype=np.float32)
    np.save(tmp_path / "arr.npy", array)
    (tmp_path / "arr.npy").rename(tmp_path / "arr.bin")
    assert isinstance(load_dataset(tmp_path / "arr.bin", split="all").x, NpyArray)
    (tmp_path / "table.txt").write_text("1,2\n3,4\n")
    assert load_dataset(tmp_path / "table.txt", split="all").x.shape == (2, 2)


# --- bad input -----------------------------------------------------------------------------


def test_bad_names_splits_and_sizes():
    with pytest.raises(ValueError, match=r"8gaussians.*digits.*mnist.*\.npy or \.csv"):
        load_dataset("nosuchdata")
    with pytest.raises(ValueError, match="split"):
        load_dataset("moons", split="valid")
    for n in (0, -3, 2.5, True, "10"):
        with pytest.raises(ValueError, match="n must be"):
            load_dataset("moons", n=n)
    with pytest.raises(ValueError, match="seed"):
        load_dataset("moons", seed=-1)
    assert len(load_dataset("moons", n=np.int64(7))) == 7
