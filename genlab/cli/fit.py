"""`genlab fit <family>`: one command per registered family, generated from its config.

Every field of a family's config declared with `option(...)` (and not `cli=False`) becomes an
option of `genlab fit <family>`: its flag, help text and default are the field's, and the
value is checked by the field's constraint as it is read (a broken rule is a usage error,
exit code 2); rules across fields are the config's own (`genlab: error: ...`, exit code 1).
So the command-line defaults are the Python defaults, and a new family needs no edit here.
Beside its config, every command takes the options of the run: --data, --n, --root, --out,
--device, --progress, and where the family has them --conditional, --checkpoint-every and
--resume.

The model is saved before it is scored: a failure while scoring the fitted model (for
example a text whose validation part holds a symbol the training part lacks) prints a line
`genlab: warning: ...` and the command still succeeds (exit code 0) with the model saved.
The --out folder must be empty, new, or a genlab run (`genlab.runs.check_out_folder`), and
one run at a time holds it (`genlab.runs.run_lock`).
"""

from __future__ import annotations

import inspect
import math
import time
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.markup import escape

from genlab import evaluation, runs
from genlab.cli.common import (
    DATA_HELP,
    NOption,
    RootOption,
    app,
    data_name,
    echo_err,
    error_message,
    print_table,
)
from genlab.data import Dataset, load_dataset
from genlab.models import FAMILIES, GenerativeModel
from genlab.models.base import TrainingData
from genlab.options import Option, options

fit_app = typer.Typer(
    help="Fit a model to a data set's train split and save it to a folder.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
app.add_typer(fit_app, name="fit")

SCALARS = {int: ("INTEGER", "an integer"), float: ("FLOAT", "a number"), str: ("TEXT", "text")}
"""The scalar types a field may have: the help's name of the value, and the error's."""


# -- a config field as an option ------------------------------------------------------------------
def unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """(X, True) for `X | None`, else (annotation, False)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0], True
    return annotation, False


def value_parser(opt: Option, config_name: str) -> tuple[Callable[[Any], Any], str]:
    """(parse, metavar) of a non-flag field: parse reads the command line's text as the
    field's type ("none" is None for `X | None` fields) and checks the field's constraint,
    raising `typer.BadParameter` with the constraint's message."""
    inner, optional = unwrap_optional(opt.annotation)
    if typing.get_origin(inner) is Literal:
        values = {str(v): v for v in typing.get_args(inner)}
        metavar, word = "[" + "|".join(values) + "]", f"one of {', '.join(values)}"
        convert: Callable[[str], Any] = values.__getitem__
    elif inner in SCALARS:
        (metavar, word), convert = SCALARS[inner], inner
    else:
        raise TypeError(
            f"{config_name}.{opt.name}: the command line cannot read a {opt.annotation}; "
            "declare it with option(..., cli=False)"
        )
    if optional:
        metavar, word = f"{metavar}|none", f"{word} or none"

    def parse(value: Any) -> Any:
        if not isinstance(value, str):  # the default, already a value
            return value
        if optional and value.lower() == "none":
            result = None
        else:
            try:
                result = convert(value)
            except (KeyError, ValueError):
                raise typer.BadParameter(f"{value!r} is not {word}") from None
        if opt.check is not None:
            try:
                opt.check.check(opt.name, result)
            except ValueError as e:
                raise typer.BadParameter(str(e)) from None
        return result

    return parse, metavar


def field_parameter(opt: Option, config_name: str) -> inspect.Parameter:
    """The keyword parameter of a generated command for one config field."""
    short = (opt.short,) if opt.short else ()
    if opt.annotation is bool:
        flags = (f"{opt.flag}/--no-{opt.flag.removeprefix('--')}", *short)
        info = typer.Option(*flags, help=escape(opt.help))
        annotation: Any = Annotated[bool, info]
    else:
        parse, metavar = value_parser(opt, config_name)
        info = typer.Option(opt.flag, *short, help=escape(opt.help), parser=parse, metavar=metavar)
        annotation = Annotated[str, info]
    return keyword(opt.name, opt.default, annotation)


def cli_fields(cls: type[GenerativeModel]) -> list[Option]:
    """The config fields of a family that `genlab fit <family>` shows."""
    return [opt for opt in options(cls.config_class) if opt.cli]


def trains_networks(cls: type[GenerativeModel]) -> bool:
    """Whether the family trains with `genlab.train.fit` (checkpoints, --resume)."""
    return cls.resumable


# -- the options of the run -----------------------------------------------------------------------
DataOption = Annotated[str, typer.Option("--data", "-d", help=DATA_HELP)]
ProgressOption = Annotated[
    bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")
]
ConditionalOption = Annotated[
    bool,
    typer.Option(
        "--conditional", help="Condition on the data set's labels (a class-conditional model)."
    ),
]
CheckpointEveryOption = Annotated[
    int | None,
    typer.Option(
        "--checkpoint-every",
        min=1,
        help="Steps between checkpoints in the --out folder (one is always written at the end).",
    ),
]
ResumeOption = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue exactly from OUT/checkpoint.pt (same options; --max-steps and "
        "--max-time may grow).",
    ),
]


DeviceOption = Annotated[
    str | None,
    typer.Option(
        "--device", help="Where to fit: cpu, cuda or cuda:N (default: cuda when present)."
    ),
]


def out_option(family: str) -> Any:
    help_ = (
        "Model folder: config.json, model.safetensors and, for trained networks, "
        f"checkpoint.pt and log.jsonl (default: runs/DATA-{family}). It must be new, empty "
        "or a genlab run."
    )
    return Annotated[str | None, typer.Option("--out", "-o", help=help_)]


def keyword(name: str, default: Any, annotation: Any) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


def run_parameters(cls: type[GenerativeModel]) -> list[inspect.Parameter]:
    """--data, --n, --root, --out, --device, --progress, and --conditional,
    --checkpoint-every, --resume where the family has them (names end in "_": no config
    field's clash)."""
    params = [
        keyword("data_", cls.example_data, DataOption),
        keyword("n_", None, NOption),
        keyword("root_", None, RootOption),
        keyword("out_", None, out_option(cls.family)),
        keyword("device_", None, DeviceOption),
        keyword("progress_", True, ProgressOption),
    ]
    if cls.takes_labels:
        params.append(keyword("conditional_", False, ConditionalOption))
    if trains_networks(cls):
        params.append(keyword("checkpoint_every_", None, CheckpointEveryOption))
        params.append(keyword("resume_", False, ResumeOption))
    return params


def check_flags(family: str, params: list[inspect.Parameter]) -> None:
    """Raise TypeError when two options of one command share a flag."""
    seen: dict[str, str] = {}
    for p in params:
        info = typing.get_args(p.annotation)[1]  # in Annotated, the first flag is `default`
        decls = [info.default, *(info.param_decls or ())]
        for decl in (d for d in decls if isinstance(d, str)):
            for flag in decl.split("/"):
                if flag in seen:
                    raise TypeError(
                        f"genlab fit {family}: {p.name} and {seen[flag]} both use the flag "
                        f"{flag}; give one of them another flag= in its option(...)"
                    )
                seen[flag] = p.name


# -- the command ----------------------------------------------------------------------------------
def fit_command(cls: type[GenerativeModel]) -> Callable[..., None]:
    """The callback of `genlab fit <family>`, with an explicit signature built from the
    family's config fields and the run's options."""
    fields = cli_fields(cls)
    config_name = cls.config_class.__name__
    data, *others = run_parameters(cls)
    params = [data, *(field_parameter(opt, config_name) for opt in fields), *others]
    check_flags(cls.family, params)

    def command(**given: Any) -> None:
        config = {opt.name: given.pop(opt.name) for opt in fields}
        fit_and_report(cls, config, **{k.removesuffix("_"): v for k, v in given.items()})

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__name__ = f"fit_{cls.family}"
    command.__doc__ = command_help(cls)
    return command


def command_help(cls: type[GenerativeModel]) -> str:
    """The first paragraph of the family's docstring."""
    first = inspect.cleandoc(cls.__doc__ or f"Fit a {cls.family} model.").split("\n\n")[0]
    return " ".join(first.split())


def fit_and_report(
    cls: type[GenerativeModel],
    config: dict[str, Any],
    *,
    data: str,
    n: int | None,
    root: Path | None,
    out: str | None,
    progress: bool,
    device: str | None = None,
    conditional: bool = False,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> None:
    """Construct `cls(**config)`, fit it on the train split in the --out folder (checked,
    and locked for the run), save it, then score it and print a summary."""
    model = cls(**config, device=device)
    seed = config.get("seed")
    seed = 0 if seed is None else seed
    folder = Path("runs") / f"{data_name(data)}-{cls.family}" if out is None else out
    folder = runs.check_out_folder(folder)
    train = load_dataset(data, split="train", n=n, seed=seed, root=root)
    if conditional and train.y is None:
        raise ValueError(f"--conditional needs labels, and {data!r} has none")
    labels = train.y if conditional else None
    refuse_unsupported(cls, train, labels)
    kwargs: dict[str, Any] = {"progress": progress}
    if trains_networks(cls):
        kwargs |= {"out": folder, "checkpoint_every": checkpoint_every, "resume": resume}
    with runs.run_lock(folder):
        start = time.perf_counter()
        model.fit(train, y=labels, **kwargs)
        seconds = time.perf_counter() - start
        model.save(folder)
    try:  # the model is saved: a scoring failure costs nothing but the score
        score = score_row(model, train, data, root, seed)
    except Exception as e:
        echo_err(f"genlab: warning: the model is saved in {folder}, but scoring it failed: "
                 f"{error_message(e)}")  # fmt: skip
        score = {}
    rows = {**score, **model.fit_summary()}
    if cls.takes_labels:
        rows["conditional"] = conditional
    rows |= {"parameters": model.n_parameters, "time": f"{seconds:.2f} s"}
    unit = "characters" if model.is_text else "samples"
    print_table(f"{cls.family} on {data_name(data)} ({len(train)} train {unit})", rows)
    typer.echo(f"saved {folder}")


def refuse_unsupported(cls: type[GenerativeModel], train: Dataset, labels: Any) -> None:
    """Raise the family's own reason (`unsupported`) when it cannot model the data, naming
    the registered families that can, before anything is trained."""
    data = TrainingData.from_input(train, labels)
    reason = cls.unsupported(data)
    if reason is None:
        return
    able = [name for name, other in FAMILIES.items() if other.unsupported(data) is None]
    hint = f"; for {data.kind} data use the {' or '.join(able)} family" if able else ""
    raise ValueError(f"{reason}{hint}")


def score_row(
    model: GenerativeModel, train: Dataset, data: str, root: Path | None, seed: int
) -> dict[str, str]:
    """The first row of the summary: the model's quick train score (`score_rows`), or for a
    text model its validation loss on the test split.

    Raises:
        ValueError: the score is NaN or infinite (and whatever scoring raises).
    """
    if model.is_text:
        test = load_dataset(data, split="test", root=root)
        scores = evaluation.evaluate_model(model, test, seed)
        loss, bits = scores["loss"], scores["bits_per_char"]
        label, value = "validation loss", loss
        text = f"{loss:.4f} nats/char ({bits:.4f} bits/char)"
    else:
        label, value = model.score_rows(train)
        text = f"{value:.5g} nats/sample"
    if not math.isfinite(value):
        raise ValueError(f"the {label} is {value}")
    return {label: text}


for _name, _cls in FAMILIES.items():
    fit_app.command(_name)(fit_command(_cls))
