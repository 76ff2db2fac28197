"""Crash-safe writes: a reader, or a kill at any instant, sees the old state or the new one.

`atomic_write` replaces one file (temp file, fsync, rename). `write_folder_atomically` replaces
a set of files that only make sense together (a model folder's config.json and weights): the
new files are written into `folder/.pending/`, fsynced, then marked complete by
`.pending/COMPLETE`, and only then moved into place. `resolve_folder` is what every reader
calls first: it finishes a save that was complete but not yet moved in (rolls forward), and
drops one that was interrupted before COMPLETE (the old files were never touched). Files get
the permissions the umask allows, as `open` would give them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "PENDING",
    "atomic_write",
    "read_folder",
    "remove_stale_temps",
    "resolve_folder",
    "umask",
    "write_folder_atomically",
]

PENDING = ".pending"  # the folder's next version, while it is being written
COMPLETE = "COMPLETE"  # in PENDING: every file of the next version is written and synced


def umask() -> int:
    """The process's umask, read without changing it (Linux: /proc/self/status), else by
    setting it and putting it back (racy with other threads; only a fallback)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: Path) -> str:
    """The glob of `atomic_write`'s temp files for path (left behind by a killed write)."""
    return f".{path.name}.*.tmp"


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """write(file) into a temp file in path's folder, flush + fsync, then os.replace: readers
    and a crash see the old file or the new one, never a torn one. The file's mode is
    0o666 less the umask (mkstemp's own 0o600 is not kept)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temps(folder: Path, names: Iterable[str]) -> list[Path]:
    """Delete the temp files that killed `atomic_write`s of folder/name left; returns them."""
    removed = []
    for name in names:
        for tmp in Path(folder).glob(temp_name(Path(name))):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


@contextlib.contextmanager
def _locked(folder: Path, *, wait: bool) -> Iterator[bool]:
    """An exclusive flock on the directory `folder` (held by the process writing it, so a
    reader never removes a save in progress); yields whether it was taken (False: another
    process holds it, or the directory is gone)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            same = os.stat(folder).st_ino == os.fstat(fd).st_ino  # not removed meanwhile
        except (BlockingIOError, FileNotFoundError):
            same = False
        yield same
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes) -> None:
    """Create path (mode 0o666 less the umask) holding data, synced to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _roll_forward(folder: Path, pending: Path) -> None:
    """Move a complete pending version's files into place, then drop .pending. Idempotent:
    a kill in the middle leaves COMPLETE in place and the next call moves the rest."""
    for path in sorted(pending.iterdir()):
        if path.name not in (COMPLETE, f"{COMPLETE}.tmp"):
            os.replace(path, folder / path.name)
    _fsync_dir(folder)
    os.unlink(pending / COMPLETE)
    os.rmdir(pending)
    _fsync_dir(folder)


def resolve_folder(folder: Path) -> dict[str, Path]:
    """Make the folder's current version whole before reading it, and say where its files are.

    A complete `.pending` (COMPLETE present) is the newest version: its files are moved into
    place; an incomplete one is an interrupted write, removed (the folder's files are the
    intact previous version). Where the folder is read-only, or another process is writing
    `.pending` right now, nothing is changed.

    Returns:
        {name: path} of the files to read from `.pending` instead of the folder (empty when
        the folder itself holds the current version).
    """
    folder = Path(folder)
    pending = folder / PENDING
    if not pending.is_dir():
        return {}
    with _locked(pending, wait=False) as mine:
        complete = (pending / COMPLETE).is_file()
        if mine and os.access(folder, os.W_OK):
            try:
                _roll_forward(folder, pending) if complete else shutil.rmtree(pending)
                return {}
            except OSError:  # a read-only file system, a vanished file: read in place
                pass
        if not complete:
            return {}
        names = {p.name for p in pending.iterdir()} - {COMPLETE, f"{COMPLETE}.tmp"}
        return {name: pending / name for name in names}


def read_folder(folder: Path, names: Iterable[str]) -> dict[str, bytes | None]:
    """The bytes of each named file of the folder's current version (`resolve_folder`), None
    for a file that is missing. Read twice if a concurrent writer moved a file meanwhile."""
    folder, names = Path(folder), list(names)
    for attempt in range(2):
        where = resolve_folder(folder)
        try:
            return {name: _read_or_none(where.get(name, folder / name)) for name in names}
        except FileNotFoundError:
            if attempt:
                raise
    raise AssertionError("unreachable")


def _read_or_none(path: Path) -> bytes | None:
    if path.parent.name == PENDING:  # must exist: it was listed a moment ago
        return path.read_bytes()
    return path.read_bytes() if path.is_file() else None


def write_folder_atomically(folder: Path, files: Mapping[str, bytes]) -> Path:
    """Replace `files` ({name: content}) in folder as a whole: after a kill at any instant the
    folder holds all the previous files or all the new ones (readers call `resolve_folder`).

    The new files go to folder/.pending, each fsynced; .pending/COMPLETE marks them whole;
    then they are moved into place and .pending is removed (`_roll_forward`, which a reader
    finishes if the writer was killed).

    Raises:
        OSError: the folder cannot be written, or another process is saving into it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pending = folder / PENDING
    for _ in range(3):  # a reader may remove an empty .pending in the instant before our lock
        resolve_folder(folder)  # finish (or drop) an earlier save first
        try:
            os.mkdir(pending)
        except FileExistsError:
            raise OSError(
                f"{folder}: another process is saving into this folder right now ({PENDING} "
                "is in use); wait for it to finish or save elsewhere"
            ) from None
        with _locked(pending, wait=True) as mine:
            if not mine:
                continue
            for name, data in files.items():
                _write_new(pending / name, data)
            _fsync_dir(pending)
            _write_new(pending / f"{COMPLETE}.tmp", b"")
            os.replace(pending / f"{COMPLETE}.tmp", pending / COMPLETE)
            _fsync_dir(pending)
            _roll_forward(folder, pending)
            return folder
    raise OSError(f"{folder}: could not start a save ({PENDING} kept disappearing)")
