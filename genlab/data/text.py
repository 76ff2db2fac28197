"""Plain-text corpora: a UTF-8 file as a text `Dataset`, split by characters.

"train" is the first 90% of the characters (`9 * n // 10`), "test" (the validation text) the
last 10%, "all" every character, as in nanoGPT's shakespeare_char preparation. The Dataset
holds the split's string in `text` and its code points in x, (n,) int32, so len(dataset) is
its number of characters.
"""

from __future__ import annotations

import codecs
import os
from pathlib import Path

import numpy as np
import torch

from genlab.data.dataset import Dataset, check_count, check_memory

TEXT_PREFIX = "text:"
"""`load_dataset("text:PATH")` reads PATH as a text corpus."""


def split_characters(total: int, split: str) -> tuple[int, int]:
    """The characters [start, stop) of a split: train the first 90%, test the last 10%."""
    cut = 9 * total // 10
    return {"train": (0, cut), "test": (cut, total), "all": (0, total)}[split]


TEXT_BYTES_OF_MEMORY = 6
"""Bytes of memory a text corpus needs per byte of its file (the bytes, the string and its
int32 code points), for the up-front memory check."""


def decode_utf8(raw: bytes, path: str | os.PathLike, offset: int = 0) -> str:
    """`raw`, bytes `offset`.. of the file `path`, decoded as UTF-8; a byte-order mark at
    the start of the file is dropped.

    Raises:
        ValueError: the bytes are not UTF-8; the message names the file and the byte
            offset in the file ("x.txt is not UTF-8 text (byte 3 is 0xe9); ...").
    """
    start = 3 if offset == 0 and raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = start + e.start
        raise ValueError(
            f"{os.fspath(path)} is not UTF-8 text (byte {offset + at} is 0x{raw[at]:02x}); "
            "convert it to UTF-8, e.g. iconv -f latin1 -t utf-8"
        ) from None


def read_text(path: str | os.PathLike) -> str:
    """The file's characters, decoded as UTF-8 (a leading byte-order mark is dropped).

    Raises:
        FileNotFoundError: no such file (IsADirectoryError: a folder).
        ValueError: the file is empty, not valid UTF-8 (the message gives the byte offset)
            or too large for this machine's memory.
    """
    if not os.fspath(path):
        raise FileNotFoundError("no text file given: name one, as in text:corpus.txt")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: name a text file in it, as text:FILE")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such text file")
    check_memory(
        TEXT_BYTES_OF_MEMORY * path.stat().st_size,
        f"reading the text corpus {path}",
        "use a shorter part of it",
    )
    text = decode_utf8(path.read_bytes(), path)
    if not text:
        raise ValueError(f"{path}: the file is empty; a text corpus needs characters")
    return text


def load_text(path: str | os.PathLike, split: str = "train", n: int | None = None) -> Dataset:
    """A UTF-8 text file as a Dataset of kind "text" (see the module docstring).

    Args:
        path: the file (a "text:" prefix is allowed and dropped).
        split: "train" (first 90% of the characters), "test" (last 10%) or "all".
        n: keep only the first n characters of the split (None: all).

    Raises:
        FileNotFoundError: no such file (or no path after "text:").
        ValueError: bad split or n, an empty or non-UTF-8 file, an empty split, or n
            larger than the split.
    """
    name = os.fspath(path)
    name = name[len(TEXT_PREFIX) :] if name.startswith(TEXT_PREFIX) else name
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    n = None if n is None else check_count(n)
    text = read_text(name)
    start, stop = split_characters(len(text), split)
    if start == stop:
        raise ValueError(
            f"{name}: the {split!r} split is empty ({len(text)} characters; test is the last "
            "10%); use a longer text or split='all'"
        )
    text = text[start:stop]
    if n is not None:
        if n > len(text):
            raise ValueError(
                f"n={n} but the {split!r} split of {name!r} has {len(text)} characters"
            )
        text = text[:n]
    codes = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype="<u4")
    x = torch.from_numpy(codes.astype(np.int32))
    return Dataset(x=x, y=None, event_shape=(), kind="text", name=name, text=text)
