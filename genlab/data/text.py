"""Plain-text corpora: a UTF-8 file as a text `Dataset`, split by characters.

"train" is the first 90% of the characters (`9 * n // 10`), "test" (the validation text) the
last 10%, "all" every character, as in nanoGPT's shakespeare_char preparation. The Dataset
holds the split's string in `text` and its code points in x, (n,) int32, so len(dataset) is
its number of characters.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from genlab.data.dataset import Dataset

TEXT_PREFIX = "text:"
"""`load_dataset("text:PATH")` reads PATH as a text corpus."""


def split_characters(total: int, split: str) -> tuple[int, int]:
    """The characters [start, stop) of a split: train the first 90%, test the last 10%."""
    cut = 9 * total // 10
    return {"train": (0, cut), "test": (cut, total), "all": (0, total)}[split]


def read_text(path: str | os.PathLike) -> str:
    """The file's characters, decoded as UTF-8 (a leading byte-order mark is dropped).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is empty or not valid UTF-8 (the message gives the byte offset).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such text file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}: not UTF-8 text (byte {e.start} is 0x{raw[e.start]:02x}); convert it, "
            "e.g. iconv -f latin1 -t utf-8"
        ) from None
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
        FileNotFoundError: no such file.
        ValueError: bad split, an empty or non-UTF-8 file, an empty split, or n larger
            than the split.
    """
    name = os.fspath(path)
    name = name[len(TEXT_PREFIX) :] if name.startswith(TEXT_PREFIX) else name
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
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
