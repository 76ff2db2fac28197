"""What every `genlab` command shares: the app, the common options, printing, and `run`, which
turns bad input into one line `genlab: error: ...` and an exit code.

Errors in the user's input (unknown options, bad values, unknown data sets, missing or corrupt
model folders) end the program with one line `genlab: error: ...` on stderr and exit code 2
(usage: the command line itself is wrong) or 1 (runtime: the input it names is); set
GENLAB_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from genlab.data import BUILTINS

USER_ERRORS = (ValueError, TypeError, OSError)
"""Exceptions that report bad input or a missing file; shown as one line, not a traceback."""

DATA_HELP = (
    f"Data set: one of {', '.join(BUILTINS)}, a .npy/.csv file, or text:FILE.txt (a UTF-8 "
    "corpus for text models)."
)

console = Console(highlight=False)

app = typer.Typer(
    name="genlab",
    help="Generative modelling: fit a distribution to data, sample from it, evaluate, plot.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# -- options shared by several commands -----------------------------------------------------------
NOption = Annotated[
    int | None,
    typer.Option(
        "--n",
        min=1,
        help="Number of data points (toys: drawn; others: the first N of the split). "
        "Default: the whole split (toys: 10,000 train, 2,000 test).",
    ),
]
SeedOption = Annotated[
    int, typer.Option("--seed", min=0, help="Seed of the data draw and of the model's randomness.")
]
RootOption = Annotated[
    Path | None,
    typer.Option("--root", help="Folder holding the MNIST files (default: $GENLAB_DATA)."),
]
ModelDir = Annotated[
    Path,
    typer.Argument(
        metavar="MODEL_DIR", help="A model folder written by `genlab fit`.", show_default=False
    ),
]


def check_suffix(allowed: tuple[str, ...]) -> Callable[[Path | None], Path | None]:
    """A typer callback rejecting --out paths without one of the allowed suffixes."""

    def check(path: Path | None) -> Path | None:
        if path is not None and path.suffix.lower() not in allowed:
            raise typer.BadParameter(f"{str(path)!r} must end in {' or '.join(allowed)}")
        return path

    return check


# -- printing -------------------------------------------------------------------------------------
def data_name(name: str) -> str:
    """A short name for titles and default folders: "moons", or a file's stem."""
    return name if name in BUILTINS else Path(name).stem


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def print_table(title: str, rows: Mapping[str, Any]) -> None:
    """Two columns, name and value, under a title (rich markup in either is shown as is)."""
    table = Table(title=escape(title), show_header=False, box=None, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows.items():
        table.add_row(escape(str(key)), escape(format_value(value)))
    console.print(table)


def echo_err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Print each warning raised inside as one line `genlab: warning: ...` on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        yield
    for w in caught:
        echo_err(f"genlab: warning: {one_line(str(w.message))}")


# -- entry point ----------------------------------------------------------------------------------
def one_line(message: str) -> str:
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on `argv` (default: sys.argv[1:]) and return the exit code.

    0 on success (and for --help), 2 for usage errors (unknown options, bad values), 1 for
    runtime errors in the user's input (unknown data set, missing or corrupt model folder,
    options a config refuses together).
    """
    command = typer.main.get_command(app)
    debug = os.environ.get("GENLAB_DEBUG", "") not in ("", "0")
    try:
        with warnings_as_lines():
            result = command.main(
                args=None if argv is None else list(argv), prog_name="genlab", standalone_mode=False
            )
    except typer.TyperException as e:  # click's usage errors (exit code 2) and file errors
        message = one_line(e.format_message())
        if not message:  # no arguments: the help was printed
            return e.exit_code
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None and e.exit_code == 2 else ""
        echo_err(f"genlab: error: {message}{hint}")
        return e.exit_code
    except typer.Abort:
        echo_err("genlab: error: aborted")
        return 1
    except USER_ERRORS as e:
        if debug:
            raise
        echo_err(f"genlab: error: {one_line(str(e)) or type(e).__name__}")
        return 1
    return result if isinstance(result, int) else 0


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point: run the CLI and exit with its code."""
    sys.exit(run(argv))
