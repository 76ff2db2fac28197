"""Image data sets: scikit-learn's 8 x 8 digits, and MNIST read from its IDX files."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from genlab.data.dataset import Dataset, check_memory

# --- digits -----------------------------------------------------------------------------

DIGITS_SPLIT_KEY = 20_240_601  # fixes the digits permutation; never change it


def fixed_permutation(n: int, key: int) -> np.ndarray:
    """(n,) int64 permutation of 0..n-1 determined by `key` alone.

    It sorts n words from NumPy's `SeedSequence`, whose output is fixed across versions
    (unlike the streams of `np.random.Generator` or `torch.randperm`).
    """
    return np.argsort(np.random.SeedSequence(key).generate_state(n, np.uint64), kind="stable")


def digits_split_indices(split: str, total: int = 1797) -> np.ndarray:
    """Row indices into `load_digits()` of a split: a fixed permutation, test = its last 20%."""
    order = fixed_permutation(total, DIGITS_SPLIT_KEY)
    n_test = -(-total // 5)  # ceil(0.2 * total): 360 of 1,797
    return {"train": order[:-n_test], "test": order[-n_test:], "all": order}[split]


def load_digits(split: str) -> Dataset:
    """scikit-learn's digits: x (n, 1, 8, 8) float32 in {0, 1/16, ..., 1}, y (n,) int64.

    The split does not depend on any seed: train is 1,437 images, test 360, and "all" is
    the 1,797 images in the order train then test.
    """
    from sklearn.datasets import load_digits as sklearn_load_digits  # a slow import

    bunch = sklearn_load_digits()
    idx = digits_split_indices(split, len(bunch.images))
    x = torch.from_numpy((bunch.images[idx] / 16).astype(np.float32)).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(bunch.target[idx].astype(np.int64))
    return Dataset(x=x, y=y, event_shape=(1, 8, 8), kind="image", name="digits", levels=17)


# --- MNIST ------------------------------------------------------------------------------

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dims
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dim
_HINT = "pass root= or set GENLAB_DATA to the folder holding the MNIST IDX files"


def mnist_folder(root: str | os.PathLike | None) -> Path:
    """The folder given by `root`, else by the environment variable GENLAB_DATA."""
    root = root if root is not None else os.environ.get("GENLAB_DATA")
    if not root:
        raise FileNotFoundError(f"no folder for MNIST: {_HINT}")
    return Path(root).expanduser()


def find_idx(folder: Path, base: str) -> Path | None:
    """`base` or `base.gz` in `folder` or `folder/mnist` (a raw file wins over its .gz)."""
    for where in (folder, folder / "mnist"):
        for name in (base, f"{base}.gz"):
            if (where / name).is_file():
                return where / name
    return None


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file of unsigned bytes (gzipped if its name ends in .gz) as a uint8 array.

    The header is read first, so a corrupt one (dims that promise more data than the file
    has, or than memory holds) is refused before the data is read, and exactly the bytes
    the header's dims promise are read.

    Raises:
        ValueError: the file is not gzip when named .gz, or its magic number, dims or byte
            count are wrong (for example a truncated download); the message names the file.
    """
    gz = path.suffix == ".gz"
    try:
        with (gzip.open if gz else open)(path, "rb") as f:
            dims = _idx_dims(f, path, magic)
            header, size = 4 + 4 * len(dims), math.prod(dims)
            if not gz and path.stat().st_size != header + size:
                raise _wrong_size(path, dims, header + size, f"{path.stat().st_size} bytes")
            check_memory(size, f"reading {path}", "its header is corrupt: download it again")
            data = f.read(size)
            extra = bool(f.read(1))
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: corrupt or truncated gzip file ({e})") from None
    if len(data) != size or extra:
        have = "more than that" if extra else f"{header + len(data)} bytes"
        raise _wrong_size(path, dims, header + size, have)
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _idx_dims(f: BinaryIO, path: Path, magic: int) -> tuple[int, ...]:
    """The dims of an open IDX file, after checking its magic number (its last byte is the
    number of dims)."""
    head = f.read(4)
    if len(head) < 4:
        raise ValueError(f"{path}: {len(head)} bytes, too short for an IDX header")
    found = int.from_bytes(head, "big")
    if found != magic:
        raise ValueError(
            f"{path}: IDX magic number is 0x{found:08x}, expected 0x{magic:08x}; "
            "not an MNIST file of this kind, or a corrupt one"
        )
    ndim = magic & 0xFF
    raw = f.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header ({4 + len(raw)} of {4 + 4 * ndim} bytes)")
    dims = struct.unpack(f">{ndim}I", raw)
    if 0 in dims:
        raise ValueError(f"{path}: the IDX header's dims {dims} hold no samples")
    return dims


def _wrong_size(path: Path, dims: tuple[int, ...], expected: int, have: str) -> ValueError:
    return ValueError(
        f"{path}: its header's dims {dims} need {expected} bytes, the file has {have}; "
        "the file is truncated or corrupt: download it again"
    )


def read_mnist_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read and cross-check one images/labels pair: (n, 28, 28) and (n,) uint8."""
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: images are {images.shape[1:]}, MNIST's are (28, 28)")
    if len(labels) != len(images):
        raise ValueError(
            f"{labels_path}: {len(labels)} labels for the {len(images)} images of {images_path}"
        )
    if labels.size and labels.max() > 9:
        raise ValueError(f"{labels_path}: label {labels.max()} found, MNIST labels are 0..9")
    return images, labels


def _missing_message(folder: Path, split: str, names: list[str]) -> str:
    looked = ", ".join(f"{b} or {b}.gz" for b in names)
    return f"MNIST {split!r} split: {looked} not found in {folder} or {folder / 'mnist'}; {_HINT}"


def load_mnist(split: str, root: str | os.PathLike | None = None) -> Dataset:
    """MNIST from its IDX files: x (n, 1, 28, 28) float32 in {0, 1/255, ..., 1}, y (n,) int64.

    "train" reads train-images-idx3-ubyte and train-labels-idx1-ubyte, "test" the t10k-
    files (raw or .gz, in the folder or its mnist/ subfolder); "all" concatenates train and
    test, using each one whose two files both exist.

    Raises:
        FileNotFoundError: a needed file (or, for "all", every pair) is missing.
        ValueError: a file is corrupt, truncated or not MNIST.
    """
    folder = mnist_folder(root)
    parts = ("train", "test") if split == "all" else (split,)
    found = {part: [find_idx(folder, base) for base in MNIST_FILES[part]] for part in parts}
    usable = [part for part in parts if None not in found[part]]
    if len(usable) < len(parts) and (split != "all" or not usable):
        missing = [
            base
            for part in parts
            for base, path in zip(MNIST_FILES[part], found[part], strict=True)
            if path is None
        ]
        raise FileNotFoundError(_missing_message(folder, split, missing))
    pairs = [read_mnist_pair(*found[part]) for part in usable]
    images = np.concatenate([im for im, _ in pairs])
    labels = np.concatenate([lb for _, lb in pairs])
    x = torch.from_numpy(images.astype(np.float32) / 255).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(labels.astype(np.int64))
    return Dataset(x=x, y=y, event_shape=(1, 28, 28), kind="image", name="mnist", levels=256)
