"""Run folders (`genlab fit --out`): never write into a folder that is not ours, never let two
runs write into one folder at once.

    folder = check_out_folder(out)      # refuses "", ".", a file, a user's own folder
    with run_lock(folder):              # refuses a second run while the first holds it
        model.fit(..., out=folder); model.save(folder)

A genlab run folder holds config.json (a genlab config), model.safetensors, checkpoint.pt,
log.jsonl, the lock file `.genlab.lock`, a `.pending` save and the temp files of killed writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from genlab.checkpoints import CHECKPOINT_FILE, LOG_FILE
from genlab.io import PENDING, temp_name
from genlab.models.base import CONFIG_FILE, WEIGHTS_FILE

__all__ = ["LOCK_FILE", "check_out_folder", "foreign_reason", "run_lock"]

LOCK_FILE = ".genlab.lock"
RUN_FILES = (CONFIG_FILE, WEIGHTS_FILE, CHECKPOINT_FILE, LOG_FILE)  # what runs write


def _is_genlab_config(path: Path) -> bool:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and "family" in meta and "config" in meta


def foreign_reason(folder: Path) -> str | None:
    """Why an existing folder must not receive a run's files, or None when it may: it is
    empty, or it holds files a genlab run writes and its config.json (if any) is ours."""
    folder = Path(folder)
    names = {p.name for p in folder.iterdir()}
    if not names:
        return None
    if CONFIG_FILE in names and not _is_genlab_config(folder / CONFIG_FILE):
        return "its config.json was not written by genlab"
    temps = [temp_name(Path(name)) for name in RUN_FILES]
    if names & {*RUN_FILES, LOCK_FILE, PENDING} or any(next(folder.glob(t), None) for t in temps):
        return None
    return f"it holds {len(names)} other file(s) and none of a genlab run"


def check_out_folder(path: str | os.PathLike) -> Path:
    """The run folder `path`, checked before anything is written into it.

    Raises:
        ValueError: an empty name or "." (the current directory: give a folder name), a path
            that is a file, or an existing folder that is not a genlab run folder.
    """
    text = os.fspath(path)
    if not str(text).strip() or Path(text) == Path("."):
        raise ValueError(
            f"--out {text!r} names no folder (it would write into the current directory): "
            "give a folder name, e.g. --out runs/NAME"
        )
    folder = Path(text)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} exists and is not a folder; choose a new or empty folder")
    reason = foreign_reason(folder) if folder.is_dir() else None
    if reason is not None:
        raise ValueError(
            f"{folder} exists and is not a genlab run folder; choose a new or empty folder "
            f"({reason})"
        )
    return folder


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on the run folder (creating it and `folder/.genlab.lock`) for
    the duration of the block. The kernel releases it when the process ends, killed or not,
    so a stale lock never blocks a later run. The lock file keeps the holder's pid.

    Raises:
        ValueError: another process holds the lock ("OUT is in use by another genlab run").
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise ValueError(
                f"{folder} is in use by another genlab run (pid {holder}): wait for it to "
                "finish or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield folder
    finally:
        os.close(fd)  # releases the lock
