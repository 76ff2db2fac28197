"""`genlab fit <family>`: one command per registered family, generated from its config.

Every field of a family's config declared with `option(...)` (and not `cli=False`) becomes an
option of `genlab fit <family>`: its flag, help text and default are the field's, and the
value is checked by the field's constraint as it is read (a broken rule is a usage error,
exit code 2); rules across fields are the config's own (`genlab: error: ...`, exit code 1).
So the command-line defaults are the Python defaults, and a new family needs no edit here.
Beside its config, every command takes the options of the run: --data, --n, --root, --out,
--device, --progress, --threads, --config FILE.toml, and where the family has them
--conditional, --checkpoint-every, --resume, --val and --loggers (families trained by
`genlab.train`), and --precision for a family that computes in a --dtype instead (the GMM:
fp32 is --dtype float32; 16-bit floats are refused).

Families trained by `genlab.train` validate on the data set's test split by default (`--val`),
and the summary gives the best step, its validation loss and the folder OUT/best/ holding that
model.

The model is saved before it is scored: a failure while scoring the fitted model (for
example a text whose validation part holds a symbol the training part lacks) prints a line
`genlab: warning: ...` and the command still succeeds (exit code 0) with the model saved.
The --out folder must be empty, new, or a genlab run (`genlab.runs.check_out_folder`), and
one run at a time holds it (`genlab.runs.run_lock`).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import time
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.markup import escape

from genlab import evaluation, loggers, runs
from genlab.cli.common import (
    DATA_HELP,
    ChannelsOption,
    ConfigFileOption,
    NOption,
    RootOption,
    SizeOption,
    ThreadsOption,
    app,
    choose_threads,
    data_name,
    echo_err,
    error_message,
    image_options,
    print_table,
    torch_threads,
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


def split_items(text: str) -> list[str]:
    """text split at its commas, except those inside brackets or double quotes (a JSON list
    or object is one item): "a=1,b=[2,3]" -> ["a=1", "b=[2,3]"]."""
    items, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(text):
        quoted = not quoted if ch == '"' else quoted
        depth += 0 if quoted else (ch in "[{") - (ch in "]}")
        if ch == "," and depth == 0 and not quoted:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return items


def parse_pairs(text: str) -> dict[str, Any]:
    """{"hidden": 256, "levels": [8, 5]} from "hidden=256,levels=[8,5]": comma-separated
    KEY=VALUE pairs (commas inside brackets or quotes belong to the value), each VALUE read
    as JSON (numbers, true/false, null, lists) or else as text; "" is {}.

    Raises:
        ValueError: an item without "=" or with an empty key.
    """
    pairs: dict[str, Any] = {}
    for item in (i.strip() for i in split_items(text) if i.strip()):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{item!r} is not KEY=VALUE")
        try:
            pairs[key.strip().replace("-", "_")] = json.loads(value.strip())
        except json.JSONDecodeError:
            pairs[key.strip().replace("-", "_")] = value.strip()
    return pairs


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
    elif typing.get_origin(inner) is dict:  # another family's options (the latent's prior)
        metavar, word, convert = "KEY=VALUE,...", "KEY=VALUE pairs", parse_pairs
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


def choice_parser(choices: tuple[str, ...]) -> Callable[[Any], Any]:
    """A typer parser accepting one of `choices` (a usage error names them)."""

    def parse(value: Any) -> Any:
        if isinstance(value, str) and value not in choices:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}")
        return value

    return parse


def choice_option(flag: str, choices: tuple[str, ...], help_: str) -> Any:
    """An optional text option taking one of `choices` (shown as [a|b|...]; any other value
    is a usage error naming them)."""
    parser = choice_parser(choices)
    metavar = "[" + "|".join(choices) + "]"
    return Annotated[str | None, typer.Option(flag, parser=parser, metavar=metavar, help=help_)]


VAL_CHOICES = ("test", "none")
ValOption = choice_option(
    "--val",
    VAL_CHOICES,
    "Validation data: the data set's test split, or none (default: test, unless "
    "--val-fraction holds out part of the train split instead). The validation loss is "
    "logged every --eval-every steps and the best model kept in OUT/best/.",
)


def parse_loggers(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return loggers.check_logger_names(text)
    except (TypeError, ValueError) as e:
        raise typer.BadParameter(str(e)) from None


LoggersOption = Annotated[
    str | None,
    typer.Option(
        "--loggers",
        parser=parse_loggers,
        metavar="csv,tensorboard",
        help="Also log to OUT/log.csv (csv) and/or OUT/tensorboard/ (tensorboard, needs "
        "pip install 'genlab[tensorboard]'), comma-separated; OUT/log.jsonl is always written.",
    ),
]
PRECISIONS = ("fp32", "bf16", "fp16")
PrecisionAsDtypeOption = choice_option(
    "--precision",
    PRECISIONS,
    "This family computes in --dtype: fp32 means --dtype float32; bf16 and fp16 are "
    "refused (too coarse for its statistics).",
)


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


def precision_as_dtype(cls: type[GenerativeModel]) -> bool:
    """Whether the family has no `precision` field but a `dtype` one (the GMM), so that
    --precision is read as a dtype."""
    names = {opt.name for opt in cli_fields(cls)}
    return "precision" not in names and "dtype" in names


def run_parameters(cls: type[GenerativeModel]) -> list[inspect.Parameter]:
    """--data, --n, --root, --out, --device, --progress, --config, --threads, and
    --precision (as a dtype), --conditional, --checkpoint-every, --resume, --val, --loggers
    where the family has them (names end in "_": no config field's clash)."""
    params = [
        keyword("data_", cls.example_data, DataOption),
        keyword("n_", None, NOption),
        keyword("root_", None, RootOption),
        keyword("channels_", None, ChannelsOption),
        keyword("size_", None, SizeOption),
        keyword("out_", None, out_option(cls.family)),
        keyword("device_", None, DeviceOption),
        keyword("progress_", True, ProgressOption),
        keyword("config_file_", None, ConfigFileOption),
        keyword("threads_", None, ThreadsOption),
    ]
    if precision_as_dtype(cls):
        params.append(keyword("precision_", None, PrecisionAsDtypeOption))
    if cls.takes_labels:
        params.append(keyword("conditional_", False, ConditionalOption))
    if trains_networks(cls):
        params.append(keyword("checkpoint_every_", None, CheckpointEveryOption))
        params.append(keyword("resume_", False, ResumeOption))
        params.append(keyword("val_", None, ValOption))
        params.append(keyword("loggers_", None, LoggersOption))
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
        # only options really given (command line, TOML --config) count as given: the others
        # are left to the family (its recipe for the data, `genlab.models.recipes`)
        source = given.pop("ctx_").get_parameter_source
        config = {opt.name: given.pop(opt.name) for opt in fields}
        config = {k: v for k, v in config.items() if getattr(source(k), "name", "") != "DEFAULT"}
        fit_and_report(cls, config, **{k.removesuffix("_"): v for k, v in given.items()})

    context = keyword("ctx_", None, typer.Context)  # typer passes the click context
    command.__signature__ = inspect.Signature([*params, context])  # type: ignore[attr-defined]
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
    config_file: Path | None = None,
    threads: int | None = None,
    precision: str | None = None,
    conditional: bool = False,
    checkpoint_every: int | None = None,
    resume: bool = False,
    val: str | None = None,
    loggers: tuple[str, ...] | None = None,
    channels: int | None = None,
    size: str | None = None,
) -> None:
    """Construct `cls(**config)`, fit it on the train split in the --out folder (checked,
    and locked for the run) with `threads` torch threads (None: `default_threads`) and,
    for trained networks, validation data (`validation_data`), save it, then score it and
    print a summary (with the best step and its validation loss when there was validation).
    `config_file` was read into the options already (`config_file_callback`)."""
    if precision is not None:
        config = dtype_for_precision(cls, config, precision)
    model = cls(**config, device=device)
    seed = config.get("seed")
    seed = 0 if seed is None else seed
    folder = Path("runs") / f"{data_name(data)}-{cls.family}" if out is None else out
    folder = runs.check_out_folder(folder)
    images = image_options(channels, size)  # an image folder's --channels / --size
    train = load_dataset(data, split="train", n=n, seed=seed, root=root, **images)
    if conditional and train.y is None:
        raise ValueError(f"--conditional needs labels, and {data!r} has none")
    labels = train.y if conditional else None
    refuse_unsupported(cls, train, labels)
    kwargs: dict[str, Any] = {"progress": progress}
    validation = None
    if trains_networks(cls):
        kwargs |= {"out": folder, "checkpoint_every": checkpoint_every, "resume": resume}
        val_data, validation = validation_data(val, config, data, root, seed, conditional,
                                               images)  # fmt: skip
        if val_data is not None:
            kwargs["val"] = val_data
        if loggers:
            kwargs["loggers"] = loggers
    unit = "characters" if train.kind == "text" else "samples"
    with torch_threads(choose_threads(threads)) as chosen:
        how = [f"{len(train)} train {unit}"]
        how += [] if validation is None else [f"validation: {validation}"]
        how += [chosen.describe(), f"device {model.device}"]
        typer.echo(f"fitting {cls.family} on {data_name(data)}: {'; '.join(how)}")
        with runs.run_lock(folder):
            start = time.perf_counter()
            model.fit(train, y=labels, **kwargs)
            seconds = time.perf_counter() - start
            model.save(folder)
        try:  # the model is saved: a scoring failure costs nothing but the score
            score = score_row(model, train, data, root, seed)
        except Exception as e:
            echo_err(f"genlab: warning: the model is saved in {folder}, but scoring it "
                     f"failed: {error_message(e)}")  # fmt: skip
            score = {}
    rows = {**score, **model.fit_summary(), **validation_rows(model, folder, validation)}
    if cls.takes_labels:
        rows["conditional"] = conditional
    rows |= {"parameters": model.n_parameters, "threads": chosen.threads,
             "time": f"{seconds:.2f} s"}  # fmt: skip
    print_table(f"{cls.family} on {data_name(data)} ({len(train)} train {unit})", rows)
    typer.echo(f"saved {folder}")


def dtype_for_precision(
    cls: type[GenerativeModel], config: dict[str, Any], precision: str
) -> dict[str, Any]:
    """The config with --precision read as its dtype (families with a dtype and no
    precision field): fp32 is float32.

    Raises:
        ValueError: bf16/fp16 (the family computes in float32 or float64), or a --dtype
            given beside --precision fp32 that disagrees.
    """
    default = next(opt.default for opt in cli_fields(cls) if opt.name == "dtype")
    if precision != "fp32":
        raise ValueError(
            f"--precision {precision}: the {cls.family} family computes in --dtype float32 "
            "or float64, not in 16-bit floats (too coarse for its sums of squares); use "
            "--precision fp32 (= --dtype float32) or --dtype"
        )
    if config.get("dtype", default) not in (default, "float32"):
        raise ValueError(
            f"--precision fp32 and --dtype {config['dtype']} disagree: give one of them"
        )
    return {**config, "dtype": "float32"}


def validation_data(
    val: str | None, config: dict[str, Any], data: str, root: Path | None, seed: int,
    conditional: bool, images: dict[str, Any] | None = None,
) -> tuple[Dataset | None, str]:  # fmt: skip
    """(the `val=` of fit, a description) for --val: the data set's test split ("test", and
    by default unless the config's val_fraction holds out train rows instead), or none.

    Raises:
        ValueError: --val given beside --val-fraction (both choose the validation data).
    """
    fraction = config.get("val_fraction")
    if val is not None and fraction is not None:
        raise ValueError(
            f"--val {val} and --val-fraction {fraction:g} both choose the validation data: "
            "give one (--val-fraction holds out that part of the train split)"
        )
    if fraction is not None:
        return None, f"{fraction:g} of the train split, held out"
    if val == "none":
        return None, "none"
    test = load_dataset(data, split="test", seed=seed, root=root, **(images or {}))
    if not conditional:
        test = dataclasses.replace(test, y=None)
    unit = "characters" if test.kind == "text" else "samples"
    return test, f"the test split ({len(test)} {unit})"


def validation_rows(model: GenerativeModel, folder: Path, validation: str | None) -> dict:
    """The summary's rows about validation beside the family's own (`fit_summary`: the best
    step, its validation loss, an early stop): what the validation data was, and the folder
    of the best model when the trainer wrote one."""
    if validation is None:
        return {}
    rows: dict[str, Any] = {"validation": validation}
    if (folder / "best").is_dir():
        rows["best model"] = str(folder / "best")
    return rows


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


for _name, _cls in FAMILIES.items():  # masked_diffusion is `genlab fit masked-diffusion`
    fit_app.command(_name.replace("_", "-"))(fit_command(_cls))
    if "_" in _name:
        fit_app.command(_name, hidden=True)(fit_command(_cls))
