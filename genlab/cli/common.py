"""What every `genlab` command shares: the app, the common options, printing, and `run`, which
turns bad input into one line `genlab: error: ...` and an exit code.

Every failure ends the program with one line `genlab: error: ...` on stderr, never a
traceback: exit code 2 for usage errors (the command line itself is wrong), 1 for everything
else (bad or missing input, impossible sizes, a diverged run, memory, a bug), 130 when
interrupted (Ctrl-C). Set GENLAB_DEBUG=1 to see the traceback instead.

Also here: `genlab --version`, the `--threads` option (the one place genlab sets torch's
thread counts: `torch_threads`, default `default_threads`) and `--config FILE.toml`
(`config_file_callback`: a file of option values, the command line's win).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import io
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from genlab.data import BUILTINS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover  (Python 3.10: the tomli backport, a dependency there)
    import tomli as tomllib

USER_ERRORS = (ValueError, TypeError, OSError, FloatingPointError)
"""Exceptions that report bad input, a missing file or a diverged run (`DivergedError` is both
a FloatingPointError and a ValueError): their message is shown as is."""

EXIT_INTERRUPTED = 130
"""Exit code after Ctrl-C (128 + SIGINT, as shells report it; typer's own code for it)."""

DATA_HELP = (
    f"Data set: one of {', '.join(BUILTINS)}, a .npy/.csv file, a folder of PNG/JPEG/WebP "
    "images (labels from its sub-folders), or text:FILE.txt (a UTF-8 corpus for text models)."
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


def genlab_version() -> str:
    """The installed distribution's version (importlib.metadata), else `genlab.__version__`."""
    try:
        return importlib.metadata.version("genlab")
    except importlib.metadata.PackageNotFoundError:
        from genlab import __version__

        return __version__


def print_version(value: bool) -> None:
    if value:
        typer.echo(f"genlab {genlab_version()}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=print_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    pass


# -- threads --------------------------------------------------------------------------------------
BUSY_SAMPLE_SECONDS = 0.2
"""How long `default_threads` watches /proc/stat for the cores other processes keep busy."""


@dataclass(frozen=True)
class ThreadChoice:
    """The threads a run uses and why: `usable` cores (affinity, cgroup quota,
    OMP_NUM_THREADS), `busy`: how many of them other processes kept busy (None: not
    measured, or given by --threads)."""

    threads: int
    usable: int
    busy: float | None = None
    capped_from: int | None = None  # --threads asked for more than the process has

    def describe(self) -> str:
        """ "1 thread (2 usable cores, 1.0 kept busy by other processes)"."""
        plural = "" if self.threads == 1 else "s"
        why = f"{self.usable} usable core{'' if self.usable == 1 else 's'}"
        if self.busy is not None:
            why += f", {self.busy:.1f} kept busy by other processes"
        if self.capped_from is not None:
            why += f"; {self.capped_from} asked, but this process runs {self.threads}"
        return f"{self.threads} thread{plural} ({why})"


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota
    (/sys/fs/cgroup/cpu.max, containers' --cpus) and by OMP_NUM_THREADS when set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1:
        cores = min(cores, int(omp))
    return max(cores, 1)


def _cpu_times(cpus: set[int]) -> tuple[float, float] | None:
    """(busy, total) jiffies summed over the given CPUs from /proc/stat, or None."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = total = 0.0
    for line in lines:
        name, *fields = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        values = [float(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        idle = values[3] + values[4]
        busy, total = busy + sum(values) - idle, total + sum(values)
    return (busy, total) if total > 0 else None


def busy_cores(seconds: float = BUSY_SAMPLE_SECONDS) -> float:
    """How many of this process's cores other processes keep busy: the busy share of each
    CPU in its affinity over `seconds` (this process sleeps meanwhile), summed; without
    /proc/stat, the 1-minute load average scaled to the affinity."""
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        cpus = set(range(os.cpu_count() or 1))
    before = _cpu_times(cpus)
    if before is None:
        try:
            load = os.getloadavg()[0]
        except OSError:
            return 0.0
        return min(load, os.cpu_count() or 1) * len(cpus) / (os.cpu_count() or 1)
    time.sleep(seconds)
    after = _cpu_times(cpus) or before
    spent = after[1] - before[1]
    return len(cpus) * (after[0] - before[0]) / spent if spent > 0 else 0.0


def default_threads() -> ThreadChoice:
    """The usable cores minus those other processes keep busy (a core counts when it is more
    than half busy), at least 1: never more threads than free cores, because OpenMP threads
    spin-wait on a shared core (measured on 2 cores beside a busy process: a flow fit did
    741 steps in 10 s on two threads, 2,654 on one)."""
    usable = usable_cores()
    if usable == 1:
        return ThreadChoice(1, 1)
    busy = busy_cores()
    return ThreadChoice(max(1, usable - math.floor(busy + 0.5)), usable, busy)


def choose_threads(threads: int | None) -> ThreadChoice:
    """--threads N as given, or `default_threads()` when None."""
    return default_threads() if threads is None else ThreadChoice(threads, usable_cores())


@contextmanager
def torch_threads(choice: ThreadChoice) -> Iterator[ThreadChoice]:
    """Run the block with torch's intra-op threads set to `choice.threads` (and the inter-op
    pool too, which torch allows once per process, before any parallel work).

    Within one process the count is only ever lowered: asking for more threads than the
    process has now gives the current count (the choice that comes back says so), and the
    count is not raised back afterwards. Raising torch's thread count after lowering it
    breaks MKL's batched LAPACK in torch 2.13 on the CPU (measured: `torch.linalg.inv` of a
    (2, 200, 200) batch after set_num_threads(1) then (2) printed DLASWP parameter errors and
    hung), so a CLI run in-process (tests, notebooks) may leave the caller with fewer
    threads, never with a broken pool. A CLI process starts at torch's default (its cores),
    so there the count is what was asked, up to the cores. The library never sets threads.
    """
    current = torch.get_num_threads()
    if choice.threads > current:
        choice = dataclasses.replace(choice, threads=current, capped_from=choice.threads)
    if choice.threads < current:
        torch.set_num_threads(choice.threads)
    with contextlib.suppress(RuntimeError):  # set already, or parallel work began: keep it
        torch.set_num_interop_threads(choice.threads)
    yield choice


TargetOption = Annotated[
    str | None,
    typer.Option(
        "--target",
        help="On a table: the column ML efficacy predicts (a random forest trained on "
        "samples vs on the train split, scored on the test split); default: not measured.",
    ),
]

ThreadsOption = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="CPU threads for torch (default: the cores this process may use, less those other "
        "processes keep busy, measured at start; never more: contended threads spin-wait).",
    ),
]


# -- --config FILE.toml ---------------------------------------------------------------------------
def read_toml(path: Path) -> dict[str, Any]:
    """The top-level table of a TOML file.

    Raises:
        typer.BadParameter: the file cannot be read or is not TOML.
    """
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise typer.BadParameter(f"cannot read {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise typer.BadParameter(f"{path} is not valid TOML: {e}") from None


def option_keys(command: Any, skip: str) -> dict[str, Any]:
    """Every spelling of a command's options a config file may use as a key -> the option:
    the long flags without dashes ("max-steps", and with underscores "max_steps") and the
    parameter's own name ("n_components" beside its flag "components")."""
    keys: dict[str, Any] = {}
    for param in command.params:  # typer's click parameters (typer vendors its own click)
        if param.param_type_name != "option" or param.name == skip:
            continue
        spellings = [param.name.removesuffix("_")]
        spellings += [o.removeprefix("--") for o in param.opts if o.startswith("--")]
        for word in spellings:
            keys[word] = keys[word.replace("-", "_")] = keys[word.replace("_", "-")] = param
    return keys


def config_file_callback(ctx: typer.Context, param: typer.CallbackParam, path: Path | None):
    """Read --config FILE.toml into the command's defaults (click's `default_map`), so every
    option may come from the file and a value given on the command line wins.

    Keys are option names with dashes or underscores (`max-steps = 500`, `batch_size = 64`,
    `data = "digits"`, `progress = false`); each value is checked as the command line's
    text would be. An unknown key, a table or an array is a usage error naming it.
    """
    if path is None or ctx.resilient_parsing:
        return path
    table = read_toml(path)
    keys = option_keys(ctx.command, param.name)
    unknown = [k for k in table if k not in keys]
    if unknown:
        raise typer.BadParameter(
            f"{path}: unknown option(s) {', '.join(map(repr, unknown))}; the keys are the "
            f"options of '{ctx.command_path}' (see its --help), with dashes or underscores"
        )
    defaults: dict[str, Any] = {}
    for key, value in table.items():
        target = keys[key]
        if target.name in defaults:
            raise typer.BadParameter(f"{path}: the option {key!r} is given twice")
        if isinstance(value, dict | list):
            raise typer.BadParameter(f"{path}: {key} must be a single value, not a table or list")
        text = value if isinstance(value, bool) and target.is_flag else str(value)
        try:
            target.process_value(ctx, text)  # the conversion and checks of the command line
        except typer.BadParameter as e:
            raise typer.BadParameter(f"{path}: {key} = {value!r}: {e.format_message()}") from None
        defaults[target.name] = text
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return path


ConfigFileOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        is_eager=True,
        callback=config_file_callback,
        dir_okay=False,
        help="A TOML file of option values (keys: the option names, e.g. max-steps = 500); "
        "options given on the command line win.",
    ),
]


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
ChannelsOption = Annotated[
    int | None,
    typer.Option(
        "--channels",
        min=1,
        max=4,
        help="Image folders: 1 (grey), 3 (RGB) or 4 (RGBA). Default: as the files are (grey "
        "files 1, colour files 3).",
    ),
]
SizeOption = Annotated[
    str | None,
    typer.Option(
        "--size",
        help="Image folders: resize and centre-crop every image to N x N (--size N) or H x W "
        "(--size HxW). Default: the files' own size, which must be the same for all.",
    ),
]
LabelOption = Annotated[
    str | None,
    typer.Option(
        "--label",
        help="Class label of every sample (conditional models): its name (an image folder's "
        "sub-folder) or its number.",
    ),
]


def parse_size(text: str | None) -> int | tuple[int, int] | None:
    """--size "32" as 32, "32x24" as (32, 24) (height x width); the loader checks the values.

    Raises:
        ValueError: anything else, naming the two forms.
    """
    if text is None:
        return None
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) in (1, 2) and all(part.isdecimal() for part in parts):
        values = tuple(int(part) for part in parts)
        return values[0] if len(values) == 1 else values
    raise ValueError(f"--size must be N or HxW (e.g. 32 or 32x48), got {text!r}")


def image_options(channels: int | None, size: str | None) -> dict[str, Any]:
    """The keyword arguments of `load_dataset` that --channels and --size give (the ones
    given only: other data refuses them)."""
    chosen = {"channels": channels, "size": parse_size(size)}
    return {k: v for k, v in chosen.items() if v is not None}


def parse_label(text: str | None, names: Sequence[str] | None) -> int | str | None:
    """--label as the model's `sample` takes it: a class name of the model (`label_names_`)
    as it is, else a number as an int, else the text (which the model refuses, naming its
    labels)."""
    if text is None or (names is not None and text in names):
        return text
    return int(text) if text.isdecimal() else text


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
