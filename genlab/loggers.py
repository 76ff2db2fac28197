"""Where a training run's log rows go besides log.jsonl: a CSV file and TensorBoard.

    loggers = make_loggers(("csv", "tensorboard"), Path("runs/flow"), resume_step=run.step)
    for row in rows:               # {"step": 50, "loss": 1.23, "lr": 1e-3, "seconds": 4.2}
        for logger in loggers:
            logger.log(row)
    for logger in loggers:
        logger.close()

The trainer (`genlab.train.fit(..., loggers=("csv",))`) calls these on rank 0 only; it keeps
writing log.jsonl itself, which stays the record that resume and `genlab plot` read. A logger
receives each row as the trainer writes it: training rows `{"step", "loss", <other loss
terms>, "lr", "seconds"}` and validation rows `{"step", "val_loss", "seconds"}`.

- `CsvLogger`: FOLDER/log.csv, one line per row, one header: the union of every key seen so
  far ("step" first, "seconds" last, the others in the order they first appeared). A row
  lacks some keys (a validation row has no "loss"): those cells are empty. When a row brings
  a new key, the file is rewritten (atomically) under the wider header, so the file always
  reads with one `csv.DictReader` / `pandas.read_csv`.
- `TensorBoardLogger`: event files in FOLDER/tensorboard/ (`tensorboard --logdir FOLDER`),
  scalars "train/loss", "train/<term>", "val/loss", "val/<term>" and "lr" against the step.
  Needs the optional `tensorboard` package (`pip install 'genlab[tensorboard]'`), imported
  only when such a logger is made.

On resume from step S (`resume_step=S`), rows logged after S by the interrupted run are
dropped (log.csv is rewritten without them; TensorBoard purges events after S), so the files
hold each step once, as log.jsonl does. With `resume_step=0` a run starts new files.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from genlab.io import atomic_write

__all__ = [
    "CSV_FILE",
    "LOGGERS",
    "TENSORBOARD_FOLDER",
    "CsvLogger",
    "Logger",
    "TensorBoardLogger",
    "check_logger_names",
    "make_loggers",
]

CSV_FILE = "log.csv"
TENSORBOARD_FOLDER = "tensorboard"
TENSORBOARD_MISSING = (
    "tensorboard logging needs the tensorboard package: pip install 'genlab[tensorboard]'"
)


class Logger(Protocol):
    """What the trainer calls: `log(row)` for every logged row (it holds "step"), then
    `close()` once at the end of the run (also after an error)."""

    def log(self, row: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


# -- CSV ------------------------------------------------------------------------------------------
def _cell(value: Any) -> str:
    """A value as CSV text: integers as they are, floats with every digit (repr), None empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def _step_of(row: Mapping[str, str]) -> float | None:
    """The step of a row read back from log.csv, or None for a torn or foreign line."""
    try:
        step = float(row.get("step") or "nan")
    except ValueError:
        return None
    return step if math.isfinite(step) else None


class CsvLogger:
    """Rows as lines of FOLDER/log.csv under one header, the union of every key seen
    ("step" first, "seconds" last); a key a row lacks is an empty cell.

    Args:
        folder: the run folder (created when missing).
        resume_step: 0 starts a new file; S > 0 keeps the rows of an existing log.csv with
            step <= S (a resumed run) and drops later ones and torn lines.
    """

    def __init__(self, folder: str | Path, resume_step: int = 0):
        self.path = Path(folder) / CSV_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[dict[str, str]] = []
        columns: list[str] = ["step"]
        if resume_step > 0 and self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                columns = list(reader.fieldnames or columns)
                for row in reader:
                    step = _step_of(row)
                    torn = None in row or None in row.values()  # too few or too many cells
                    if step is not None and step <= resume_step and not torn:
                        kept.append(row)
        self.columns = columns
        self._rewrite(kept)
        self._file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115

    def _ordered(self, keys: Sequence[str]) -> list[str]:
        """ "step" first, "seconds" last, the rest in order of first appearance."""
        middle = [k for k in keys if k not in ("step", "seconds")]
        return ["step", *middle, *(["seconds"] if "seconds" in keys else [])]

    def _rewrite(self, rows: Sequence[Mapping[str, str]]) -> None:
        """Replace log.csv by the header and `rows` (already text), atomically."""
        text = io.StringIO()
        writer = csv.DictWriter(text, self.columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        data = text.getvalue().encode("utf-8")
        atomic_write(self.path, lambda f: f.write(data))

    def _read_rows(self) -> list[dict[str, str]]:
        with open(self.path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def log(self, row: Mapping[str, float]) -> None:
        """Append one row; a new key first rewrites the file under the wider header."""
        if "step" not in row:
            raise ValueError(f"a log row needs a 'step', got keys {sorted(row)}")
        new = [k for k in row if k not in self.columns]
        if new:
            self._file.close()
            old = self._read_rows()
            self.columns = self._ordered([*self.columns, *new])
            self._rewrite(old)
            self._file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115
        writer = csv.DictWriter(self._file, self.columns, restval="", lineterminator="\n")
        writer.writerow({k: _cell(v) for k, v in row.items()})
        self._file.flush()

    def close(self) -> None:
        self._file.close()


# -- TensorBoard ----------------------------------------------------------------------------------
def tensorboard_tag(key: str) -> str | None:
    """The scalar's tag for a row key: "loss" -> "train/loss", "val_loss" -> "val/loss",
    "val_x" -> "val/x", "lr" -> "lr", any other term -> "train/<term>"; None for "step" and
    "seconds" (TensorBoard keeps the step and the wall time of every event itself)."""
    if key in ("step", "seconds"):
        return None
    if key == "lr":
        return "lr"
    if key.startswith("val_"):
        return "val/" + key.removeprefix("val_")
    return "train/" + key


def summary_writer_class() -> type:
    """torch's `SummaryWriter`, imported now (it needs the tensorboard package).

    Raises:
        ValueError: tensorboard is not installed (the message says how to install it).
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises it when the tensorboard package is missing
        raise ValueError(TENSORBOARD_MISSING) from None
    return SummaryWriter


class TensorBoardLogger:
    """Each row's numbers as TensorBoard scalars (`tensorboard_tag`) at its step, in event
    files under FOLDER/tensorboard/.

    Args:
        folder: the run folder (created when missing).
        resume_step: S > 0 purges the events an interrupted run logged after step S.

    Raises:
        ValueError: tensorboard is not installed.
    """

    def __init__(self, folder: str | Path, resume_step: int = 0):
        writer_class = summary_writer_class()
        self.folder = Path(folder) / TENSORBOARD_FOLDER
        purge = resume_step + 1 if resume_step > 0 else None
        self.writer = writer_class(log_dir=str(self.folder), purge_step=purge)

    def log(self, row: Mapping[str, float]) -> None:
        step = int(row["step"])
        for key, value in row.items():
            tag = tensorboard_tag(key)
            if tag is not None and value is not None:
                self.writer.add_scalar(tag, float(value), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


# -- by name --------------------------------------------------------------------------------------
LOGGERS: dict[str, type] = {"csv": CsvLogger, "tensorboard": TensorBoardLogger}
"""The loggers `make_loggers` (and `genlab fit --loggers`) know, by name."""


def check_logger_names(names: str | Sequence[str]) -> tuple[str, ...]:
    """The logger names as a tuple without repeats ("csv,tensorboard" is split on commas).

    Raises:
        TypeError: names is not a string or a sequence of strings.
        ValueError: an unknown name (the message lists the known ones).
    """
    if isinstance(names, str):
        names = names.split(",")
    if not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"loggers must be names like ('csv', 'tensorboard'), got {names!r}")
    cleaned = tuple(dict.fromkeys(n.strip().lower() for n in names if n.strip()))
    unknown = [n for n in cleaned if n not in LOGGERS]
    if unknown:
        raise ValueError(
            f"unknown logger {', '.join(map(repr, unknown))}: use {' or '.join(LOGGERS)} "
            "(comma-separated for several)"
        )
    return cleaned


def make_loggers(
    names: str | Sequence[str], folder: str | Path, resume_step: int = 0
) -> list[Logger]:
    """The named loggers, writing into the run folder (see the module docstring).

    Args:
        names: among "csv" and "tensorboard" (a sequence, or one comma-separated string).
        folder: the run folder.
        resume_step: the step a resumed run continues from (0: a new run).

    Raises:
        ValueError: an unknown name, a negative resume_step, or tensorboard asked for and not
            installed ("pip install 'genlab[tensorboard]'").
    """
    chosen = check_logger_names(names)
    if isinstance(resume_step, bool) or not isinstance(resume_step, int) or resume_step < 0:
        raise ValueError(f"resume_step must be an integer >= 0, got {resume_step!r}")
    if "tensorboard" in chosen:
        summary_writer_class()  # fail before any file is made
    made: list[Logger] = []
    try:
        for name in chosen:
            made.append(LOGGERS[name](folder, resume_step))
    except BaseException:
        for logger in made:
            logger.close()
        raise
    return made
