"""Tests of genlab.loggers: the CSV file's layout and resume, TensorBoard's scalars (read back
with tensorboard's own event reader; tensorboard is a dev dependency), and the message when
tensorboard is missing (simulated, so it runs everywhere)."""

from __future__ import annotations

import csv
import sys

import pytest

from genlab import loggers
from genlab.loggers import CsvLogger, TensorBoardLogger, make_loggers, tensorboard_tag

TRAIN_1 = {"step": 50, "loss": 1.5, "kl": 0.25, "lr": 1e-3, "seconds": 1.25}
VAL_1 = {"step": 50, "val_loss": 1.75, "seconds": 1.5}
TRAIN_2 = {"step": 100, "loss": 1.125, "kl": 0.5, "lr": 5e-4, "seconds": 2.5}
VAL_2 = {"step": 100, "val_loss": 1.0625, "seconds": 2.75}


def read_csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_csv_union_header_and_empty_cells(tmp_path):
    logger = CsvLogger(tmp_path)
    for row in (TRAIN_1, VAL_1, TRAIN_2, VAL_2):
        logger.log(row)
    logger.close()
    header, rows = read_csv(tmp_path / "log.csv")
    assert header == ["step", "loss", "kl", "lr", "val_loss", "seconds"]
    assert len(rows) == 4
    assert rows[0] == {"step": "50", "loss": "1.5", "kl": "0.25", "lr": "0.001",
                       "val_loss": "", "seconds": "1.25"}  # fmt: skip
    assert rows[1] == {"step": "50", "loss": "", "kl": "", "lr": "", "val_loss": "1.75",
                       "seconds": "1.5"}  # fmt: skip
    # every digit kept: the cells read back as the numbers logged
    back = [{k: float(v) for k, v in r.items() if v} for r in rows]
    assert back == [TRAIN_1, VAL_1, TRAIN_2, VAL_2]
    assert not list(tmp_path.glob(".log.csv.*.tmp"))  # the rewrites left no temp file


def test_csv_rows_are_on_disk_before_close(tmp_path):
    logger = CsvLogger(tmp_path)
    logger.log(TRAIN_1)
    assert read_csv(tmp_path / "log.csv")[1][0]["loss"] == "1.5"  # flushed per row
    logger.close()


def test_csv_resume_drops_later_rows_and_torn_lines(tmp_path):
    logger = CsvLogger(tmp_path)
    for row in (TRAIN_1, VAL_1, TRAIN_2, VAL_2):
        logger.log(row)
    logger.close()
    with open(tmp_path / "log.csv", "a") as f:
        f.write("150,0.9")  # a killed run's torn last line
    logger = CsvLogger(tmp_path, resume_step=50)
    logger.log({"step": 100, "loss": 1.0, "kl": 0.5, "lr": 5e-4, "seconds": 2.0})
    logger.close()
    header, rows = read_csv(tmp_path / "log.csv")
    assert header == ["step", "loss", "kl", "lr", "val_loss", "seconds"]
    assert [(r["step"], r["loss"], r["val_loss"]) for r in rows] == [
        ("50", "1.5", ""), ("50", "", "1.75"), ("100", "1.0", "")]  # fmt: skip


def test_csv_new_run_replaces_an_old_file(tmp_path):
    (tmp_path / "log.csv").write_text("step,loss\n999,1.0\n")
    logger = CsvLogger(tmp_path)  # resume_step=0: a new run
    logger.log(TRAIN_1)
    logger.close()
    assert [r["step"] for r in read_csv(tmp_path / "log.csv")[1]] == ["50"]


def test_csv_row_without_step_is_refused(tmp_path):
    logger = CsvLogger(tmp_path)
    with pytest.raises(ValueError, match="step"):
        logger.log({"loss": 1.0})
    logger.close()


def test_tags():
    assert [tensorboard_tag(k) for k in ("loss", "kl", "val_loss", "val_bpd", "lr")] == [
        "train/loss", "train/kl", "val/loss", "val/bpd", "lr"]  # fmt: skip
    assert tensorboard_tag("step") is None and tensorboard_tag("seconds") is None


def event_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] read back with tensorboard's event accumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_scalars(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    for row in (TRAIN_1, VAL_1, TRAIN_2, VAL_2):
        logger.log(row)
    logger.close()
    scalars = event_scalars(tmp_path / "tensorboard")
    assert set(scalars) == {"train/loss", "train/kl", "lr", "val/loss"}
    assert scalars["train/loss"] == [(50, 1.5), (100, 1.125)]
    assert scalars["val/loss"] == [(50, 1.75), (100, 1.0625)]
    assert [s for s, _ in scalars["lr"]] == [50, 100]


def test_tensorboard_resume_purges_later_events(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    for row in (TRAIN_1, TRAIN_2):
        logger.log(row)
    logger.close()
    logger = TensorBoardLogger(tmp_path, resume_step=50)
    logger.log({"step": 100, "loss": 0.75, "lr": 5e-4, "seconds": 2.0})
    logger.close()
    assert event_scalars(tmp_path / "tensorboard")["train/loss"] == [(50, 1.5), (100, 0.75)]


def test_missing_tensorboard_is_a_clear_value_error(tmp_path, monkeypatch):
    """Without the package, torch's import fails; make_loggers says how to install it, and
    writes nothing (not even the csv file asked for beside it)."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import -> ImportError
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ValueError, match=r"pip install 'genlab\[tensorboard\]'") as info:
        make_loggers(("csv", "tensorboard"), tmp_path / "run")
    assert not isinstance(info.value, ImportError)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="tensorboard package"):
        TensorBoardLogger(tmp_path)


def test_make_loggers(tmp_path):
    made = make_loggers("csv", tmp_path)
    assert [type(m) for m in made] == [CsvLogger]
    for m in made:
        m.close()
    made = make_loggers(["csv", "csv"], tmp_path)
    assert len(made) == 1
    made[0].close()
    assert make_loggers((), tmp_path) == []


@pytest.mark.parametrize(
    "names, error, fragment",
    [
        (("csv", "wandb"), ValueError, "unknown logger 'wandb': use csv or tensorboard"),
        ("csv,nope", ValueError, "'nope'"),
        ([1], TypeError, "loggers must be names"),
        (None, TypeError, "loggers must be names"),
    ],
)
def test_bad_names(names, error, fragment, tmp_path):
    with pytest.raises(error, match=fragment):
        make_loggers(names, tmp_path)
    assert not (tmp_path / "log.csv").exists()


def test_bad_resume_step(tmp_path):
    with pytest.raises(ValueError, match="resume_step must be an integer >= 0"):
        make_loggers(("csv",), tmp_path, resume_step=-1)


def test_logger_protocol():
    assert set(loggers.LOGGERS) == {"csv", "tensorboard"}
    for cls in loggers.LOGGERS.values():
        assert callable(cls.log) and callable(cls.close)
