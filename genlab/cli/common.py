"""What every `genlab` command shares: the app, the common options, printing, and `run`, which
turns bad input into one line `genlab: error: ...` and an exit code.

Every failure ends the program with one line `genlab: error: ...` on stderr, never a
traceback: exit code 2 for usage errors (the command line itself is wrong), 1 for everything
else (bad or missing input, impossible sizes, a diverged run, memory, a bug), 130 when
interrupted (Ctrl-C). Set GENLAB_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import io
import math
import os
import re
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

USER_ERRORS = (ValueError, TypeError, OSError, FloatingPointError)
"""Exceptions that report bad input, a missing file or a diverged run (`DivergedError` is both
a FloatingPointError and a ValueError): their message is shown as is."""

EXIT_INTERRUPTED = 130
"""Exit code after Ctrl-C (128 + SIGINT, as shells report it; typer's own code for it)."""

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
    every other failure (`error_message` says what it was), 130 when interrupted. Each
    failure prints one line `genlab: error: ...` (GENLAB_DEBUG=1: the traceback instead).
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
    except (typer.Abort, KeyboardInterrupt) as e:  # click turns Ctrl-C into Abort
        if debug and isinstance(e, KeyboardInterrupt):
            raise
        interrupted = isinstance(e, KeyboardInterrupt) or isinstance(e.__cause__, KeyboardInterrupt)
        echo_err("genlab: error: interrupted" if interrupted else "genlab: error: aborted")
        return EXIT_INTERRUPTED if interrupted else 1
    except BrokenPipeError:  # `genlab sample ... | head`: the reader left; nothing to say
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (silence the flush at exit)
        return 1
    except Exception as e:
        if debug:
            raise
        echo_err(f"genlab: error: {error_message(e)}")
        return 1
    if result == EXIT_INTERRUPTED:  # typer turns Ctrl-C into this exit code, silently
        echo_err("genlab: error: interrupted")
    return result if isinstance(result, int) else 0


MEMORY_ERROR = re.compile(r"can't allocate memory|out of memory|not enough memory", re.I)
ALLOCATION = re.compile(r"(?:tried to allocate|allocate) ([0-9.]+) ?(bytes|[KMGTP]i?B)", re.I)


def error_message(e: BaseException) -> str:
    """One line saying what went wrong and what to do: the message of a user error as is;
    allocation failures (MemoryError, torch's "can't allocate memory" / "out of memory") as
    the memory they would need; text that is not UTF-8 with the file it came from; anything
    else as an internal error, with how to see its traceback."""
    text = one_line(str(e))
    if isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and MEMORY_ERROR.search(text)):
        found = ALLOCATION.search(text)
        size = f" (tried to allocate {format_bytes(found)})" if found else ""
        return (
            f"this would need more memory than the machine has{size}: use smaller sizes "
            "(fewer samples -n/--n, a smaller --batch-size, --hidden or model) or a bigger machine"
        )
    if isinstance(e, UnicodeDecodeError):
        where = file_being_read(e)
        return (
            f"{where or 'a file'} is not UTF-8 text (byte {e.start}: {e.reason}); convert it "
            "to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        )
    if isinstance(e, USER_ERRORS):
        return text or type(e).__name__
    return (
        f"internal error ({type(e).__name__}: {text}); this is a bug in genlab, or an input "
        "it does not check: rerun with GENLAB_DEBUG=1 to see the traceback, and report it"
    )


def format_bytes(found: re.Match[str]) -> str:
    """ "8 TB" from an allocation message's "8000000000000 bytes" (other units as given)."""
    value, unit = float(found.group(1)), found.group(2)
    if unit.lower() != "bytes":
        return f"{value:g} {unit}"
    power = min(int(math.log10(max(value, 1.0)) // 3), 4)
    return f"{value / 1000**power:.3g} {('bytes', 'KB', 'MB', 'GB', 'TB')[power]}"


def file_being_read(e: BaseException) -> str | None:
    """The name of the text file whose decoding raised `e` (the open file object of the
    innermost frame that holds one), or None."""
    tb, name = e.__traceback__, None
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, io.TextIOWrapper) and isinstance(value.name, str):
                name = value.name
        tb = tb.tb_next
    return name


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point: run the CLI and exit with its code."""
    sys.exit(run(argv))
