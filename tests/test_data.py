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


# === bad input: every loader refuses cleanly (ValueError naming the file and the fix) ======


def _npy(tmp_path, array, name="a.npy") -> Path:
    path = tmp_path / name
    np.save(path, array)
    return path


def _refused(path_or_name, match, *, split="all", error=ValueError, **kw) -> str:
    """load_dataset raises `error` matching `match`; a file's message names the file."""
    with pytest.raises(error, match=match) as err:
        data = load_dataset(path_or_name, split=split, **kw)
        if isinstance(data.x, NpyArray):
            data.x[:]  # values are checked as rows are read
    if isinstance(path_or_name, Path):
        assert str(path_or_name) in str(err.value)
    return str(err.value)


@pytest.mark.parametrize(
    "array, match",
    [
        (np.ones((10, 2), np.complex64), "complex numbers; save the real and imaginary parts"),
        (np.ones((10, 2), np.complex128), "complex numbers"),
        (np.full((10, 2), "ab"), r"strings \(<U2\)"),
        (np.full((10, 2), b"ab"), "strings"),
        (np.array([[1, "a"]] * 10, dtype=object), "Python objects"),
        (np.zeros(10, dtype=[("a", "<f4"), ("b", "<i4")]), "structured array"),
        (np.zeros((10, 2), "M8[s]"), "dates or times"),
        (np.zeros((10, 2), "m8[s]"), "dates or times"),
        (np.zeros((10, 2), np.longdouble), r"a\.astype\(np\.float64\)"),
        (np.zeros((10, 2), "V4"), "raw"),
    ],
)
def test_npy_unsupported_dtypes_are_refused_when_opened(tmp_path, array, match):
    path = _npy(tmp_path, array)
    _refused(path, match)
    with pytest.raises(ValueError, match=match):
        NpyArray(path)


def _edited(tmp_path, old: bytes, new: bytes, array=None) -> Path:
    """A .npy file whose header (or bytes) had `old` replaced by `new`."""
    raw = _npy(tmp_path, np.ones((10, 3), np.float32) if array is None else array).read_bytes()
    assert old in raw
    path = tmp_path / "edited.npy"
    path.write_bytes(raw.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    "old, new, match",
    [
        (b"(10, 3)", b"(-10, 3)", "negative shape"),
        (b"(10, 3)", b"(10, -3)", "negative shape"),
        (b"(10, 3), ", b"(99999999999999999999, 3), ", "needs 1199999999999999999988 bytes"),
        (b"(10, 3)", b"(11, 3)", "is truncated"),
        (b"(10, 3)", b"(9, 3) ", "has bytes after the array"),
        (b"(10, 3)", b"(10**3,)", "not a valid .npy file"),
        (b"'<f4'", b"'<x4'", "not a valid .npy file"),
        (b"{'descr'", b"{'dexcr'", "not a valid .npy file"),
        (b"\x93NUMPY\x01", b"\x93NUMPY\x09", "version"),
        (b"\x93NUMPY", b"\x93NUMPZ", "not a valid .npy file"),
        (b"'fortran_order': False", b"'fortran_order': True ", "Fortran-ordered"),
        (b"(10, 3)", b"()     ", "0-d array"),
    ],
)
def test_npy_corrupt_or_edited_headers_are_refused(tmp_path, old, new, match):
    _refused(_edited(tmp_path, old, new), match)


def test_npy_files_that_are_short_or_not_npy_at_all(tmp_path):
    raw = _npy(tmp_path, np.ones((10, 3), np.float32)).read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[:-1])
    _refused(tmp_path / "cut.npy", "is truncated")
    (tmp_path / "header.npy").write_bytes(raw[:20])  # the header itself is cut
    _refused(tmp_path / "header.npy", "not a valid .npy file")
    (tmp_path / "text.npy").write_text("1,2\n3,4\n")
    _refused(tmp_path / "text.npy", "not a valid .npy file")
    (tmp_path / "empty.npy").write_bytes(b"")
    _refused(tmp_path / "empty.npy", "not a valid .npy file")


@pytest.mark.parametrize("dtype", [">f8", ">f4", ">i4", ">u2", ">i8", "<f2", "|b1"])
@pytest.mark.parametrize("shape", [(12, 3), (12, 5, 6), (12, 2, 4, 4)])
def test_npy_big_endian_and_small_dtypes_load_like_np_load(tmp_path, dtype, shape):
    array = (np.arange(np.prod(shape)).reshape(shape) % 7 - 3).astype(dtype)
    path = _npy(tmp_path, array)
    data = load_dataset(path, split="all")
    native = np.dtype(dtype).newbyteorder("=")
    got = data.x[:].numpy()
    assert got.dtype == native and got.dtype.isnative and data.x.dtype == native
    assert np.array_equal(got.reshape(shape), np.load(path))
    picks = np.array([11, 0, 5])
    assert np.array_equal(data.x[picks].numpy().reshape(3, *shape[1:]), np.load(path)[picks])
    assert np.array_equal(load_dataset(path, split="test").x[:].numpy().reshape(2, *shape[1:]),
                          np.load(path)[10:])  # fmt: skip


@pytest.mark.parametrize(
    "dtype, bad, match",
    [
        (np.int64, 2**24 + 1, "the integer 16777217, which float32"),
        (np.int64, -(2**53) - 1, "would round"),
        (np.uint64, 2**64 - 1, "the integer 18446744073709551615"),
        (np.int32, 2**31 - 1, "would round"),
        (np.uint32, 2**24 + 3, "would round"),
        (np.float64, np.nan, "holds nan, which is not a finite number"),
        (np.float32, -np.inf, "holds -inf"),
        (np.float16, np.inf, "holds inf"),
        (np.float64, 1e39, r"1e\+39, beyond the range of float32"),
        (np.float64, -1e300, "beyond the range of float32"),
    ],
)
def test_npy_values_float32_cannot_hold_are_refused_naming_the_row(tmp_path, dtype, bad, match):
    array = np.ones((20, 2), dtype)
    array[15, 1] = bad
    path = _npy(tmp_path, array)
    message = _refused(path, match, split="train")  # rows 0..17 hold file row 15
    assert "row 15, column 1" in message
    assert len(load_dataset(path, split="test").x[:]) == 2  # rows 18, 19 are fine
    with pytest.raises(ValueError, match="row 15"):
        NpyArray(path)[np.array([3, 15])]
    with pytest.raises(ValueError, match="row 15"):
        NpyArray(path, start=10)[5]


def test_npy_integers_float32_holds_exactly_load(tmp_path):
    exact = [0, 2**24, -(2**24), 2**40, -(2**63), 3 * 2**50, 2**24 - 1]
    array = np.array([exact, exact[::-1]] * 5, dtype=np.int64)
    data = load_dataset(_npy(tmp_path, array), split="all")
    assert np.array_equal(data.x[:].numpy(), array)
    assert torch.equal(data.x[:].float().double(), torch.from_numpy(array).double())
    big = np.array([[2**63 + 2**62, 7]] * 10, dtype=np.uint64)
    assert np.array_equal(load_dataset(_npy(tmp_path, big), split="all").x[:].numpy(), big)


@pytest.mark.parametrize(
    "shape, match",
    [((10, 0), "has no columns"), ((10, 0, 5), "has no columns"), ((10, 2, 0, 3), "no columns"),
     ((0, 3), "has no rows"), ((0, 5, 5), "has no rows")],
)  # fmt: skip
def test_npy_zero_width_and_zero_row_files(tmp_path, shape, match):
    _refused(_npy(tmp_path, np.zeros(shape, np.float32)), match)


def test_npy_reads_larger_than_memory_are_refused(tmp_path, monkeypatch):
    path = _npy(tmp_path, np.ones((100, 4), np.float64))  # 3,200 bytes of rows
    monkeypatch.setattr("genlab.data.dataset.physical_memory", lambda: 1000)
    lazy = load_dataset(path, split="all").x
    with pytest.raises(ValueError, match=r"reading 100 rows of .* would need 3\.12 KiB of memory"):
        lazy[:]
    with pytest.raises(ValueError, match="read fewer rows at a time"):
        lazy[np.arange(50)]
    assert lazy[:30].shape == (30, 4)  # a smaller read fits


# --- .csv: headers, cells, encodings -------------------------------------------------------


def _csv(tmp_path, content: str | bytes, name="t.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


@pytest.mark.parametrize(
    "content, match",
    [
        ("1,,3\n4,5,6\n7,8,9\n", "line 1, column 2 is empty"),  # not dropped as a header
        (",2,3\n4,5,6\n", "line 1, column 1 is empty"),
        ("x,y\n1,2\n3,\n", "line 3, column 2 is empty"),
        ("x,y\n1,2\n 3 , \t \n", "line 3, column 2 is empty"),
        ("1,2\n3\r4\n", "line 2: not readable as CSV"),  # a lone carriage return
        ("1,2\n3,\x004\n", r"line 2: cell '\\x004' \(column 2\) is not a number"),
        ("1,2,\n3,4,\n", "line 1, column 3 is empty"),
        ("1,oops\n2,3\n", r"line 1: cell 'oops' \(column 2\) is not a number .*header"),
        ("a,2020\n1,2\n", r"line 1: cell 'a' \(column 1\) is not a number"),
        ("x,y\n1,2\n3,nan\n", "line 3, column 2 holds nan, which is not a finite number"),
        ("x,y\n1,2\ninf,3\n", "line 3, column 1 holds inf"),
        ("x,y\n1,-Infinity\n", "line 2, column 2 holds -inf"),
        ("1,2\n3,1e39\n", r"line 2, column 2 holds 1e\+39, beyond the range of float32"),
        ("1,2\n3,1e400\n", "line 2, column 2 holds inf"),
        ("x,y,z\n1,2\n", r"line 2: 2 cells, but the header \(line 1\) has 3"),
        ("1,2\n3,4,5\n", "line 2: 3 cells, but earlier rows have 2"),
        ("1,2\n3\n", "line 2: 1 cells, but earlier rows have 2"),
        ("x;y\n1;2\n", "separated by ';'"),
        ("x\ty\n1\t2\n", r"separated by '\\t'"),
        ("", "no data rows"),
        ("\n\n  \n", "no data rows"),
        ("x,y\n\n", "no data rows"),
        ('"x","y"\n"1",oops\n', r"line 2: cell 'oops'"),
    ],
)
def test_csv_bad_cells_and_rows_name_the_line_and_column(tmp_path, content, match):
    _refused(_csv(tmp_path, content), match)


@pytest.mark.parametrize(
    "content, rows",
    [
        ("x,,z\n1,2,3\n", [[1, 2, 3]]),  # a header may have an unnamed column
        (",a,b\n0,1.5,2.5\n1,3,4\n", [[0, 1.5, 2.5], [1, 3, 4]]),  # pandas' index header
        ('"x","y"\n"1.5","2"\n3,4\n', [[1.5, 2], [3, 4]]),
        ("1,2\r\n3,4\r\n\r\n  \n5,6", [[1, 2], [3, 4], [5, 6]]),
        ("1,2\n,,\n3,4\n", [[1, 2], [3, 4]]),  # a spreadsheet's empty row: a blank line
        ("\ufeffx,y\n1,2\n", [[1, 2]]),  # a byte-order mark
        (" 1 , 2 \n-3e2,+4.5\n", [[1, 2], [-300, 4.5]]),
    ],
)
def test_csv_headers_quotes_and_blank_lines_that_load(tmp_path, content, rows):
    data = load_dataset(_csv(tmp_path, content), split="all")
    assert data.x.dtype == torch.float32
    assert data.x.tolist() == rows


@pytest.mark.parametrize(
    "content, byte",
    [("x,y\n1,2\ncafé,3\n".encode("latin-1"), 11), (b"\xef\xbb\xbf1,2\n\xff,1\n", 7),
     (b"\xff\xfe1\x002\x00", 0)],
)  # fmt: skip
def test_csv_that_is_not_utf8_names_the_file_and_byte(tmp_path, content, byte):
    path = _csv(tmp_path, content)
    _refused(path, rf"t\.csv is not UTF-8 text \(byte {byte} is 0x[0-9a-f]{{2}}\); convert it")


def test_binary_files_of_other_suffixes_are_refused(tmp_path):
    path = _csv(tmp_path, b"PK\x03\x04\x00\x00rest of a zip", name="arrays.npz")
    _refused(path, "neither a .npy file nor comma-separated text")
    path = _csv(tmp_path, "1,2\n3,x\n", name="table.dat")  # text: read as CSV
    _refused(path, "line 2: cell 'x'")


def test_csv_larger_than_memory_is_refused(tmp_path, monkeypatch):
    path = _csv(tmp_path, "1,2\n" * 100)
    for module in ("genlab.data.dataset", "genlab.data.files"):
        monkeypatch.setattr(f"{module}.physical_memory", lambda: 120)  # 10 values
    with pytest.raises(ValueError, match=r"t\.csv would need .* of memory, more than .* 120"):
        load_dataset(path, split="all")


# --- text corpora --------------------------------------------------------------------------


def test_text_bad_files_name_the_file(tmp_path):
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfabc\xe9def")
    with pytest.raises(ValueError, match=r"bom\.txt is not UTF-8 text \(byte 6 is 0xe9\)"):
        load_dataset(f"text:{tmp_path / 'bom.txt'}")
    (tmp_path / "bom_only.txt").write_bytes(b"\xef\xbb\xbf")
    with pytest.raises(ValueError, match=r"bom_only\.txt: the file is empty"):
        load_dataset(f"text:{tmp_path / 'bom_only.txt'}")
    with pytest.raises(FileNotFoundError, match=r"missing\.txt: no such text file"):
        load_dataset(f"text:{tmp_path / 'missing.txt'}")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        load_dataset(f"text:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="no text file given"):
        load_dataset("text:")


def test_text_sizes_are_checked(tmp_path, monkeypatch):
    from genlab.data import load_text

    path = tmp_path / "corpus.txt"
    path.write_text("abcdefghij" * 10)
    for n in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            load_text(path, n=n)
    monkeypatch.setattr("genlab.data.dataset.physical_memory", lambda: 100)
    with pytest.raises(ValueError, match=r"corpus\.txt would need 600 bytes of memory"):
        load_text(path)


# --- MNIST IDX files, synthetic ------------------------------------------------------------


def _idx(magic: int, dims: tuple[int, ...], payload: bytes | None = None) -> bytes:
    body = bytes(math.prod(dims)) if payload is None else payload
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + body


IMAGES, LABELS = 0x803, 0x801
GOOD_IMAGES = _idx(IMAGES, (3, 28, 28), bytes(range(256)) * 9 + bytes(3 * 784 - 2304))
GOOD_LABELS = _idx(LABELS, (3,), bytes([7, 0, 9]))


def _mnist(tmp_path, images=GOOD_IMAGES, labels=GOOD_LABELS, gz=False):
    suffix = ".gz" if gz else ""
    (tmp_path / f"t10k-images-idx3-ubyte{suffix}").write_bytes(
        gzip.compress(images) if gz and isinstance(images, bytes) and images[:2] != b"XX"
        else images
    )  # fmt: skip
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(labels)
    return load_dataset("mnist", split="test", root=tmp_path)


@pytest.mark.parametrize("gz", [False, True])
def test_synthetic_mnist_loads(tmp_path, gz):
    data = _mnist(tmp_path, gz=gz)
    assert data.x.shape == (3, 1, 28, 28) and data.y.tolist() == [7, 0, 9]
    assert torch.equal(data.x.flatten()[:256] * 255, torch.arange(256).float())


@pytest.mark.parametrize(
    "images, labels, match",
    [
        (GOOD_IMAGES[:-1], GOOD_LABELS, "need 2368 bytes, the file has 2367 bytes"),
        (GOOD_IMAGES + b"\0", GOOD_LABELS, "need 2368 bytes, the file has 2369 bytes"),
        (GOOD_IMAGES[:10], GOOD_LABELS, r"truncated IDX header \(10 of 16 bytes\)"),
        (GOOD_IMAGES[:3], GOOD_LABELS, "too short for an IDX header"),
        (b"", GOOD_LABELS, "too short for an IDX header"),
        (GOOD_LABELS, GOOD_LABELS, "magic number is 0x00000801, expected 0x00000803"),
        (_idx(0x80D, (3, 28, 28)), GOOD_LABELS, "magic number"),  # floats, not bytes
        (_idx(IMAGES, (0, 28, 28)), _idx(LABELS, (0,)), "hold no samples"),
        (_idx(IMAGES, (3, 28, 27)), GOOD_LABELS, r"images are \(28, 27\), MNIST's are"),
        (
            _idx(IMAGES, (2**32 - 1,) * 3, b""),
            GOOD_LABELS,
            "need 79228162458924105385300197391 bytes",
        ),
        (GOOD_IMAGES, _idx(LABELS, (2,), b"\0\1"), "2 labels for the 3 images"),
        (GOOD_IMAGES, _idx(LABELS, (3,), b"\0\1\12"), "label 10 found"),
        (GOOD_IMAGES, _idx(LABELS, (3, 1), b"\0\1\2"), "need 11 bytes, the file has 15"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_synthetic_mnist_corrupt_files(tmp_path, images, labels, match):
    with pytest.raises(ValueError, match=match) as err:
        _mnist(tmp_path, images, labels)
    assert "idx" in str(err.value)  # names the file


@pytest.mark.parametrize(
    "content, match",
    [(b"XX not gzip at all", "corrupt or truncated gzip"),
     (gzip.compress(GOOD_IMAGES)[:-30], "corrupt or truncated gzip"),
     (gzip.compress(GOOD_IMAGES)[:-4] + b"\0\0\0\0", "corrupt or truncated gzip"),  # size field
     (gzip.compress(_idx(IMAGES, (2**31, 28, 28), b"")),
      r"would need 1\.53 TiB of memory|need 1683627180064")],
    ids=["not_gzip", "truncated", "bad_size_field", "huge_dims"],
)  # fmt: skip
def test_synthetic_mnist_corrupt_gzip(tmp_path, content, match):
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(content)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(GOOD_LABELS)
    with pytest.raises(ValueError, match=match) as err:
        load_dataset("mnist", split="test", root=tmp_path)
    assert "t10k-images-idx3-ubyte.gz" in str(err.value)


# --- sizes, seeds, names -------------------------------------------------------------------


def test_toy_sizes_beyond_memory_are_refused_up_front():
    with pytest.raises(ValueError, match=r"n=1,000,000,000,000 points of 'moons' would need 7"):
        load_dataset("moons", n=10**12)


def test_toy_memory_check_uses_the_machine_size(monkeypatch):
    monkeypatch.setattr("genlab.data.dataset.physical_memory", lambda: 10_000)
    with pytest.raises(ValueError, match=r"more than this machine's 9\.77 KiB; use a smaller n"):
        load_dataset("rings", n=1000)
    assert len(load_dataset("rings", n=100)) == 100


@pytest.mark.parametrize("seed", [-1, 2**63, 2**64, 10**30, 1.0, True, "3", None, np.uint64(2**63)])
def test_seeds_outside_63_bits_are_refused(seed):
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*63 - 1\]"):
        load_dataset("moons", n=5, seed=seed)


def test_largest_seed_and_numpy_integers_are_fine():
    assert len(load_dataset("moons", n=5, seed=2**63 - 1)) == 5
    assert torch.equal(load_dataset("moons", n=5, seed=np.int64(3)).x,
                       load_dataset("moons", n=5, seed=3).x)  # fmt: skip


def test_names_of_the_wrong_type_or_missing_paths(tmp_path):
    for name in (5, None, ["moons"]):
        with pytest.raises(TypeError, match="name must be a data set name or a file path"):
            load_dataset(name)
    with pytest.raises(FileNotFoundError, match=r"data\.txt: no such file \(nor a built-in"):
        load_dataset(tmp_path / "data.txt")
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "absent.csv")


# --- kinds, for messages -------------------------------------------------------------------


def test_describe_and_require_kind(tmp_path):
    (tmp_path / "a.txt").write_text("hello world " * 10)
    text = load_dataset(f"text:{tmp_path / 'a.txt'}", split="all")
    assert text.describe() == f"{str(tmp_path / 'a.txt')!r}: text (120 characters)"
    with pytest.raises(ValueError, match=r"^the gmm family models points or images, not text "
                       r"\(.*text \(120 characters\)\); give it numbers") as err:  # fmt: skip
        text.require_kind(("points", "image"), "the gmm family")
    assert "reshape" not in str(err.value)
    text.require_kind(("text",), "a text model")  # no error
    moons = load_dataset("moons", n=3)
    assert moons.describe() == "'moons': points of dimension 2"
    with pytest.raises(ValueError, match=r"not points \('moons': .*\); give it a text corpus"):
        moons.require_kind(("text",), "a text model")
    digits = load_dataset("digits", split="test", n=2)
    assert digits.describe() == "'digits': images of shape (1, 8, 8)"
    with pytest.raises(ValueError, match=r"models points, not images.*; give it points"):
        digits.require_kind(("points",), "this plot")


# --- property tests: any .npy or CSV file loads exactly or is refused with a ValueError ---

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

NUMERIC = ["|b1", "|u1", "|i1", "<i2", ">u2", "<i4", ">i4", "<u4", "<i8", ">i8", "<u8",
           "<f2", ">f2", "<f4", ">f4", "<f8", ">f8"]  # fmt: skip
OTHER = ["<c8", ">c16", "<U2", "|S3", "<M8[s]", "<m8[ms]"]
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _load_all_rows(path: Path) -> np.ndarray:
    data = load_dataset(path, split="all")
    x = data.x[:] if isinstance(data.x, NpyArray) else data.x
    return x.numpy()


@FUZZ
@given(
    array=st.sampled_from(NUMERIC + OTHER).flatmap(
        lambda dtype: hnp.arrays(np.dtype(dtype), hnp.array_shapes(min_dims=1, max_dims=5,
                                                                   min_side=0, max_side=4))
    )
)  # fmt: skip
def test_fuzz_npy_files_load_exactly_or_are_refused(array):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "a.npy"
        np.save(path, array)
        try:
            got = _load_all_rows(path)
        except ValueError as e:
            assert str(path) in str(e)
            must_load = (array.dtype.kind in "bu" and array.dtype.itemsize <= 2) or (
                array.dtype.kind == "f" and np.isfinite(array).all()
                and np.abs(array.astype(np.float64)).max(initial=0) < 3e38
            )  # fmt: skip
            assert not (must_load and 2 <= array.ndim <= 4 and array.size), e
            return
        assert got.dtype == array.dtype.newbyteorder("=") and got.dtype.isnative
        assert np.array_equal(got.reshape(array.shape), array, equal_nan=False)


@FUZZ
@given(position=st.integers(0, 127), byte=st.integers(0, 255), cut=st.integers(0, 200))
def test_fuzz_edited_npy_bytes_load_as_numpy_reads_them_or_are_refused(position, byte, cut):
    import io
    import tempfile

    buffer = io.BytesIO()
    np.save(buffer, np.arange(24, dtype="<f4").reshape(8, 3))
    raw = bytearray(buffer.getvalue())
    raw[position] = byte
    raw = bytes(raw[: len(raw) - cut]) if cut < 100 else bytes(raw)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "edited.npy"
        path.write_bytes(raw)
        try:
            got = _load_all_rows(path)
        except ValueError as e:
            assert str(path) in str(e)
            return
        expected = np.load(path, allow_pickle=False)  # what we read, NumPy reads the same
        assert np.array_equal(got.reshape(expected.shape), expected)


@FUZZ
@given(st.text(alphabet='0123456789.,-+e \n\t;"naifx\r', max_size=60))
def test_fuzz_csv_text_loads_finite_float32_or_is_refused(text):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.csv"
        path.write_text(text)
        try:
            got = load_dataset(path, split="all").x
        except ValueError as e:
            assert str(path) in str(e)
            return
        assert got.dtype == torch.float32 and got.ndim == 2 and torch.isfinite(got).all()
        assert got.shape[0] * got.shape[1] <= text.count(",") + text.count("\n") + 1
