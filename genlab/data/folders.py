"""Folders of images: PNG, JPEG and WebP files read with Pillow, class labels from sub-folder
names, and a lazy row reader (`ImageFolderArray`) for folders larger than memory.

Layouts (hidden files and folders, whose names start with ".", are ignored):

    photos/*.png                         unlabelled images (y is None)
    photos/cat/*.png, photos/dog/*.jpg   labels from the sub-folder names ("cat" = 0, "dog" = 1;
                                         files at any depth below a class folder are its own)
    photos/train/<class>/..., photos/test/<class>/...   the splits given by the folders

Without train/ and test/ folders the split is fixed by each file's path: a file is a test
image when a SHA-256 hash of its path relative to the folder is 0 modulo 10 (about 10%), so
adding files never moves an old file from one split to the other. Rows are in the order of
that hash (a fixed shuffle, so the first n rows and any contiguous window mix the classes);
"all" is train then test.

Pixels: grey files (modes 1, L, LA, I;16 ...) give one channel and colour files three
(channels=None keeps what the data have: three as soon as one file is in colour, grey files
then repeat their channel); channels=1, 3 or 4 converts every file (ITU-R 601-2 luma for
grey, alpha dropped unless 4). 16-bit grey values v become round(v / 257). The EXIF
orientation of photos is applied. size=N resizes the shorter side to N (bicubic) and crops
the centre N x N; size=(H, W) covers H x W and crops its centre. Values are k / 255 in
float32, k = 0..255 (levels 256, so bits/dim are honest), exactly as `load_mnist` gives them.

Files that Pillow cannot read (corrupt, truncated, not an image) are skipped: a warning names
them with a count, and the data set's `skipped` lists them all. Every file is decoded once
when the folder is opened; a folder whose float32 rows would take more than
`MEMORY_SHARE` of this machine's memory (or `stream=True`) is then read lazily, batch by
batch, by an `ImageFolderArray`.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genlab.data.dataset import Dataset, NpyArray, physical_memory

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
PIL_FORMATS = ("PNG", "JPEG", "WEBP")
"""The formats Pillow may open: a file of another format (whatever its suffix) is skipped."""
OTHER_IMAGE_SUFFIXES = (".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".heic", ".avif")
"""Image files genlab does not read: a warning names how many it ignored."""
SPLIT_FOLDERS = ("train", "test")
SPLIT_KEY = b"genlab image folder split v1\0"  # fixes the split and the order; never change it
TEST_MODULUS = 10  # one file in TEST_MODULUS (by hash) is a test image
MEMORY_SHARE = 0.25
"""A folder is held in memory when its float32 rows take at most this share of physical
memory (stream=None); above it, rows are read from the files batch by batch."""
LEVELS = 256
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
CHANNEL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
SHOWN = 5  # skipped files named in a warning


# --- one file ----------------------------------------------------------------------------------


def check_size(size: Any) -> tuple[int, int] | None:
    """`size` (None, N or (H, W), each >= 4) as (H, W), or a ValueError naming the fix."""
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int | np.integer) else tuple(size)
    if len(pair) != 2 or not all(
        isinstance(s, int | np.integer) and not isinstance(s, bool) and s >= 4 for s in pair
    ):
        raise ValueError(
            f"size must be an integer >= 4 (N x N images) or a pair (H, W) of them, got {size!r}"
        )
    return int(pair[0]), int(pair[1])


def check_channels(channels: Any) -> int | None:
    if channels is not None and (isinstance(channels, bool) or channels not in CHANNEL_MODES):
        raise ValueError(
            f"channels must be 1 (grey), 3 (RGB), 4 (RGBA) or None (as the files are), "
            f"got {channels!r}"
        )
    return None if channels is None else int(channels)


def read_image(path: str | os.PathLike, channels: int | None, size: tuple[int, int] | None):
    """One image file as a (C, H, W) uint8 array.

    channels None: 1 for grey modes (`GREY_MODES`), 3 otherwise; else 1, 3 or 4. size
    (H, W): resized to cover H x W (bicubic; not resampled when it already has that size),
    then centre-cropped (the crop starts at (extra // 2)).

    Raises:
        OSError, ValueError, ...: whatever Pillow raises for a file it cannot read.
    """
    from PIL import Image, ImageOps  # imported on first use: a slow import

    with Image.open(path, formats=PIL_FORMATS) as im:
        im = ImageOps.exif_transpose(im)  # a copy, decoded; photos stand as taken
        mode = CHANNEL_MODES[channels or (1 if im.mode in GREY_MODES else 3)]
        if im.mode.startswith("I"):  # 16-bit (or 32-bit) grey: 0..65535 -> 0..255
            wide = np.asarray(im, dtype=np.float64)
            im = Image.fromarray(np.clip(np.round(wide / 257), 0, 255).astype(np.uint8))
        elif im.mode == "P":  # a palette: its colours (and transparency) first
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        if im.mode != mode:
            im = im.convert(mode)
        if size is not None:
            im = _cover_and_crop(im, size)
        pixels = np.asarray(im, dtype=np.uint8)
    pixels = pixels.reshape(*pixels.shape[:2], -1)  # (H, W, C)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _cover_and_crop(im: Any, size: tuple[int, int]) -> Any:
    """`im` resized (keeping its aspect ratio) to cover size = (H, W), then centre-cropped."""
    from PIL import Image

    height, width = size
    w, h = im.size
    scale = max(width / w, height / h)
    new = (max(width, round(w * scale)), max(height, round(h * scale)))
    if new != im.size:
        im = im.resize(new, Image.Resampling.BICUBIC)
    left, top = (new[0] - width) // 2, (new[1] - height) // 2
    return im.crop((left, top, left + width, top + height))


def to_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """(c, H, W) uint8 pixels as `channels` channels: a grey channel repeated (what Pillow's
    L -> RGB conversion does), or unchanged."""
    if pixels.shape[0] == channels:
        return pixels
    assert pixels.shape[0] == 1, "only grey images gain channels"
    return np.repeat(pixels, channels, axis=0)


def as_unit_float(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels k as float32 k / 255 (the same rounding as `load_mnist`)."""
    return pixels.astype(np.float32) / 255


# --- the files of a folder ---------------------------------------------------------------------


def file_key(relative: str) -> int:
    """A 64-bit hash of a file's path relative to its folder: its split and its row order."""
    return int.from_bytes(hashlib.sha256(SPLIT_KEY + relative.encode()).digest()[:8], "big")


def label_order(names: Iterable[str]) -> list[str]:
    """Class names in label order: by number when every name is a decimal integer ("2" < "10"),
    else sorted as strings."""
    names = sorted(set(names))
    if names and all(name.isdecimal() for name in names):
        return sorted(names, key=lambda name: (int(name), name))
    return names


def _visible(names: Iterable[str]) -> list[str]:
    return sorted(name for name in names if not name.startswith("."))


def _walk(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files, files of other image formats) anywhere below `folder`, sorted."""
    images, others = [], []
    for top, dirs, files in os.walk(folder):
        dirs[:] = _visible(dirs)
        for name in _visible(files):
            suffix = os.path.splitext(name)[1].lower()
            if suffix in IMAGE_SUFFIXES:
                images.append(Path(top) / name)
            elif suffix in OTHER_IMAGE_SUFFIXES:
                others.append(Path(top) / name)
    return images, others


@dataclass
class _Listing:
    """The image files of one split folder: (path, class name or None), and what was left out."""

    files: list[tuple[Path, str | None]]
    loose: list[Path]  # images beside class folders (no class): skipped
    others: list[Path]  # images of formats genlab does not read: ignored


def _list_split(folder: Path) -> _Listing:
    """Image files of `folder`: in class sub-folders when it has any holding images."""
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    loose = [
        Path(e.path) for e in entries
        if e.is_file() and not e.name.startswith(".")
        and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES
    ]  # fmt: skip
    others = [
        Path(e.path) for e in entries
        if e.is_file() and os.path.splitext(e.name)[1].lower() in OTHER_IMAGE_SUFFIXES
    ]  # fmt: skip
    files: list[tuple[Path, str | None]] = []
    for entry in entries:
        if entry.is_dir() and not entry.name.startswith("."):
            images, other = _walk(Path(entry.path))
            files += [(p, entry.name) for p in images]
            others += other
    if not files:  # no classes: the loose images are the data, unlabelled
        return _Listing([(p, None) for p in loose], [], others)
    return _Listing(files, loose, others)


def _has_split_folders(root: Path) -> bool:
    return all((root / name).is_dir() for name in SPLIT_FOLDERS)


# --- the folder as a data set ------------------------------------------------------------------


@dataclass(frozen=True)
class FolderDataset(Dataset):
    """A `Dataset` read from a folder of images, with what only a folder knows.

    Attributes:
        label_names: the class of each label value (label k is `label_names[k]`), or None
            for an unlabelled folder.
        files: each row's file, relative to the folder (row i is `files[i]`).
        skipped: (file, why) of each file that could not be read.
    """

    label_names: tuple[str, ...] | None = None
    files: tuple[str, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()


class ImageFolderArray(NpyArray):
    """Rows of an image folder decoded on demand: `x[rows]` reads and decodes those files.

    It behaves as the `NpyArray` of a `.npy` file would (the trainer streams it batch by
    batch, `rows(start, stop)` is a window of it, `len`, `shape`), holding only the file
    names: a batch costs its own memory, whatever the folder's size. Rows are float32
    (C, H, W) images in {k / 255}, exactly those of an in-memory load of the same folder.

    Args:
        root: the folder.
        files: each row's file, relative to `root`.
        shape: (n, C, H, W) of all rows.
        channels, size: how each file is read (`read_image`); files of fewer channels than C
            repeat their grey channel (`to_channels`).

    Raises (when read):
        ValueError: a file that was readable when the folder was opened no longer is.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        files: Sequence[str],
        shape: tuple[int, int, int, int],
        channels: int | None,
        size: tuple[int, int] | None,
    ):
        self.path = Path(root)
        self.files = tuple(files)
        self.channels, self.size = channels, size
        self.dtype = self.file_dtype = np.dtype(np.float32)
        self.offset = 0
        self.row_bytes = int(np.prod(shape[1:])) * 4
        self.file_rows = len(self.files)
        if shape[0] != self.file_rows:
            raise ValueError(f"shape {shape} does not match the {self.file_rows} files")
        self.start, self.stop = 0, self.file_rows
        self.shape = tuple(int(s) for s in shape)

    def _row_indices(self, index: Any) -> np.ndarray:
        """The window rows an index names, as an int64 array (checked against the window)."""
        if isinstance(index, slice):
            return np.arange(len(self))[index]
        idx = np.asarray(index, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows")
        return idx

    def _read_row(self, row: int) -> np.ndarray:
        name = self.files[self.start + row]
        try:
            pixels = read_image(self.path / name, self.channels, self.size)
        except Exception as e:
            raise ValueError(
                f"{self.path / name}: {_why(e)}; it was readable when the folder was opened: "
                "restore the file, or load the folder again to skip it"
            ) from None
        if pixels.shape[1:] != self.shape[2:]:
            raise ValueError(
                f"{self.path / name} is now {pixels.shape[2]}x{pixels.shape[1]} pixels, not "
                f"{self.shape[3]}x{self.shape[2]}: load the folder again"
            )
        return as_unit_float(to_channels(pixels, self.shape[1]))

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, int | np.integer) and not isinstance(index, bool):
            row = int(index) + len(self) if index < 0 else int(index)
            if not 0 <= row < len(self):
                raise IndexError(f"row {index} out of range for {len(self)} rows")
            return torch.from_numpy(self._read_row(row))
        rows = self._row_indices(index)
        self._reserve(rows.size)
        out = np.empty((rows.size, *self.shape[1:]), dtype=np.float32)
        for k, row in enumerate(rows.tolist()):
            out[k] = self._read_row(row)
        return torch.from_numpy(out)

    def __repr__(self) -> str:
        return f"ImageFolderArray({str(self.path)!r}, shape={self.shape})"


def _why(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _choose(
    listing: _Listing, root: Path, split: str, by_hash: bool
) -> list[tuple[str, str | None]]:
    """(relative path, class) of the split's files, in the order of their hash."""
    keyed = []
    for path, label in listing.files:
        relative = path.relative_to(root).as_posix()
        key = file_key(relative)
        if by_hash and (split == "test") != (key % TEST_MODULUS == 0):
            continue
        keyed.append((key, relative, label))
    keyed.sort()
    return [(relative, label) for _, relative, label in keyed]


def load_folder(
    folder: str | os.PathLike,
    split: str = "train",
    n: int | None = None,
    channels: int | None = None,
    size: int | tuple[int, int] | None = None,
    stream: bool | None = None,
) -> FolderDataset:
    """A folder of images as a Dataset (see the module docstring for layouts and pixels).

    Args:
        folder: the folder.
        split: "train", "test" or "all" (train then test).
        n: keep the first n readable images of the split (None: all).
        channels: 1, 3, 4, or None for the files' own (grey: 1, colour: 3).
        size: N or (H, W) to resize and centre-crop every image; None: the files' own
            size, which must then be the same for all.
        stream: True: rows stay on disk (an `ImageFolderArray`); False: in memory; None:
            in memory unless they would take more than `MEMORY_SHARE` of physical memory.

    Returns:
        A `FolderDataset`: x (n, C, H, W) float32 in {k / 255} (a tensor, or an
        `ImageFolderArray`), y (n,) int64 labels from class folders (or None), kind
        "image", levels 256, `label_names`, `files`, `skipped`.

    Raises:
        FileNotFoundError: no such folder.
        ValueError: no readable images (the message names the first few skipped files),
            images of different sizes without `size`, an empty split, n larger than the
            readable images, images smaller than 4 x 4, bad channels or size.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    channels, size = check_channels(channels), check_size(size)
    if stream not in (None, True, False):
        raise ValueError(f"stream must be True, False or None (decide by size), got {stream!r}")
    split_folders = _has_split_folders(root)
    parts = SPLIT_FOLDERS if split == "all" else (split,)
    if split_folders:  # each split its folder; one label order for both
        listings = {p: _list_split(root / p) for p in SPLIT_FOLDERS}
    else:  # one folder, split by hash
        listings = dict.fromkeys(SPLIT_FOLDERS, _list_split(root))
    names_found = {lab for p in SPLIT_FOLDERS for _, lab in listings[p].files if lab is not None}
    names = label_order(names_found) if names_found else None
    chosen: list[tuple[str, str | None]] = []
    for p in parts:
        chosen += _choose(listings[p], root, p, by_hash=not split_folders)
    used = {id(listings[p]): listings[p] for p in parts}.values()
    _warn_left_out(
        root, [x for li in used for x in li.loose], [x for li in used for x in li.others]
    )
    if not chosen:
        raise _empty_split(root, split, split_folders, listings)
    return _decode(root, chosen, names, split, n, channels, size, stream)


def _empty_split(root: Path, split: str, split_folders: bool, listings: dict) -> ValueError:
    if not any(listing.files for listing in listings.values()):
        return ValueError(
            f"{root} holds no {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} files (in it or in its "
            "sub-folders); give a folder of images"
        )
    how = (
        f"{split}/ holds no images" if split_folders
        else f"about 1 in {TEST_MODULUS} files is a test image, chosen by a hash of its path"
    )  # fmt: skip
    return ValueError(
        f"{root}: the {split!r} split is empty ({how}); use split='all' (--val none in the "
        "CLI), add images, or put them in train/ and test/ sub-folders"
    )


def _warn_left_out(root: Path, loose: list[Path], others: list[Path]) -> None:
    if loose:
        warnings.warn(
            f"{root}: ignored {len(loose)} image file(s) beside the class sub-folders (no "
            f"class): {_names(root, loose)}; move them into a class folder",
            stacklevel=4,
        )
    if others:
        kinds = sorted({p.suffix.lower() for p in others})
        warnings.warn(
            f"{root}: ignored {len(others)} image file(s) of formats genlab does not read "
            f"({', '.join(kinds)}); convert them to PNG to use them",
            stacklevel=4,
        )


def _names(root: Path, paths: Sequence[Path]) -> str:
    shown = ", ".join(p.relative_to(root).as_posix() for p in paths[:SHOWN])
    return shown + (f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else "")


def _decode(
    root: Path,
    chosen: list[tuple[str, str | None]],
    names: list[str] | None,
    split: str,
    n: int | None,
    channels: int | None,
    size: tuple[int, int] | None,
    stream: bool | None,
) -> FolderDataset:
    """Decode the chosen files once, in order, until n are readable: kept in memory (unless
    streamed), or only checked (streamed)."""
    budget = MEMORY_SHARE * (physical_memory() or 2**62)
    keep = stream is not True
    good: list[tuple[str, str | None]] = []
    pixels: list[np.ndarray] = []
    shapes: dict[tuple[int, int], str] = {}
    skipped: list[tuple[str, str]] = []
    most_channels, nbytes = 1, 0
    for relative, label in chosen:
        if n is not None and len(good) == n:
            break
        try:
            image = read_image(root / relative, channels, size)
        except Exception as e:  # whatever Pillow raises for a broken file: skip it, named
            skipped.append((relative, _why(e)))
            continue
        good.append((relative, label))
        shapes.setdefault(tuple(image.shape[1:]), relative)
        most_channels = max(most_channels, image.shape[0])
        nbytes += image.size * 4
        if keep:
            pixels.append(image)
            if stream is None and nbytes > budget:  # too big for memory: stream instead
                keep, pixels = False, []
    if skipped:
        warnings.warn(
            f"{root}: skipped {len(skipped)} of {len(skipped) + len(good)} image files that "
            f"could not be read: "
            + ", ".join(f"{name} ({why})" for name, why in skipped[:SHOWN])
            + (f" and {len(skipped) - SHOWN} more" if len(skipped) > SHOWN else "")
            + " (the data set's `skipped` lists them)",
            stacklevel=3,
        )
    if not good:
        raise ValueError(
            f"{root}: none of the {len(skipped)} image files of the {split!r} split could be "
            f"read; the first: {skipped[0][0]} ({skipped[0][1]})"
        )
    if n is not None and len(good) < n:
        raise ValueError(
            f"n={n} but the {split!r} split of {root} has only {len(good)} readable images"
        )
    if len(shapes) > 1:
        (a, file_a), (b, file_b) = list(shapes.items())[:2]
        raise ValueError(
            f"{root}: the images differ in size ({a[1]}x{a[0]} pixels in {file_a}, "
            f"{b[1]}x{b[0]} in {file_b}); pass size=N (--size N) to resize and centre-crop "
            "them all to N x N"
        )
    ((height, width),) = shapes
    if min(height, width) < 4:
        raise ValueError(
            f"{root}: images of {width}x{height} pixels are too small for genlab's image "
            "models (at least 4 x 4); pass size=N (--size N) to enlarge them"
        )
    c = channels or most_channels
    shape = (len(good), c, height, width)
    files = tuple(relative for relative, _ in good)
    if keep:
        x = torch.empty(shape, dtype=torch.float32)
        for i, image in enumerate(pixels):
            x[i] = torch.from_numpy(as_unit_float(to_channels(image, c)))
    else:
        x = ImageFolderArray(root, files, shape, channels, size)
    y = None
    if names is not None:
        index = {name: k for k, name in enumerate(names)}
        y = torch.tensor([index[label] for _, label in good], dtype=torch.int64)
    return FolderDataset(
        x=x, y=y, event_shape=shape[1:], kind="image", name=str(root), levels=LEVELS,
        label_names=None if names is None else tuple(names), files=files,
        skipped=tuple(skipped),
    )  # fmt: skip


# --- writing -----------------------------------------------------------------------------------


def save_image_folder(
    images: Any,
    folder: str | os.PathLike,
    labels: Any = None,
    label_names: Sequence[str] | None = None,
) -> list[Path]:
    """Write images as PNG files `folder/0000.png`, ... (or `folder/<class>/0000.png` with
    labels), which `load_folder` reads back exactly for 8-bit values.

    Args:
        images: (n, C, H, W) with C in {1, 3, 4}, or (n, H, W), values in [0, 1] (a tensor
            or array): written as round(255 x) clipped to 0..255, grey, RGB or RGBA.
        folder: a new or empty folder (created).
        labels: (n,) integer labels: each image goes to the sub-folder of its class.
        label_names: the class of each label value (default: the label's number).

    Returns:
        The files written, in the order of the images.

    Raises:
        ValueError: a non-empty folder, images of another shape, labels of another length,
            a label beyond `label_names`.
    """
    from PIL import Image

    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ValueError(f"{folder} exists and is not an empty folder: choose a new folder")
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    x = x[:, None] if x.ndim == 3 else x
    if x.ndim != 4 or x.shape[1] not in CHANNEL_MODES:
        raise ValueError(
            f"images must have shape (n, C, H, W) with C in {sorted(CHANNEL_MODES)} or (n, H, "
            f"W), got {tuple(np.shape(images))}"
        )
    y = None if labels is None else np.asarray(labels).reshape(-1)
    if y is not None and len(y) != len(x):
        raise ValueError(f"labels must have shape ({len(x)},), got {tuple(np.shape(labels))}")
    if y is not None and label_names is not None and len(y) and int(y.max()) >= len(label_names):
        raise ValueError(f"label {int(y.max())} has no name among the {len(label_names)} given")
    k = np.clip(np.round(x.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    width = max(4, len(str(len(x) - 1)))
    written = []
    for i, image in enumerate(k):
        where = folder
        if y is not None:
            where = folder / (str(int(y[i])) if label_names is None else label_names[int(y[i])])
        where.mkdir(parents=True, exist_ok=True)
        path = where / f"{i:0{width}d}.png"
        pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        Image.fromarray(np.ascontiguousarray(pixels)).save(path)  # L, RGB or RGBA by shape
        written.append(path)
    folder.mkdir(parents=True, exist_ok=True)
    return written
