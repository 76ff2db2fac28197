"""`genlab compare`: fit families on the same data and budget (`genlab.compare.compare`),
print one table per data set and write the report (`genlab.report.write_report`)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from genlab import compare as comparison
from genlab import report as reporting
from genlab.cli.common import (
    NOption,
    RootOption,
    SeedOption,
    TargetOption,
    ThreadsOption,
    app,
    choose_threads,
    console,
    data_name,
    torch_threads,
)
from genlab.cli.fit import split_items
from genlab.data import BUILTINS


def parse_budget_option(text: str) -> comparison.Budget:
    try:
        return comparison.parse_budget(text)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def parse_options(items: list[str] | None, families: list[str]) -> dict[str, dict[str, Any]]:
    """--options "FAMILY.KEY=VALUE" items (repeatable, or comma-separated) as compare's
    per-family options; VALUE is read as JSON (numbers, true/false, null) or else as text.
    FAMILY is a name or variant label of --families (e.g. "flow:meanflow").

    Raises:
        typer.BadParameter: an item not of that form, a family not in --families, or a key
            that is not an option of the family.
    """
    parsed: dict[str, dict[str, Any]] = {}
    for item in [part for text in items or [] for part in split_items(text) if part.strip()]:
        match = re.fullmatch(r"\s*([^.=\s]+)\.([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(.*?)\s*", item)
        if match is None:
            raise typer.BadParameter(
                f"--options {item!r}: give FAMILY.KEY=VALUE, e.g. flow.objective=meanflow"
            )
        family, key, text = match.group(1), match.group(2).replace("-", "_"), match.group(3)
        if family not in families:
            raise typer.BadParameter(
                f"--options {item!r}: {family!r} is not one of --families ({', '.join(families)})"
            )
        cls = comparison.family_class(family)
        keys = {f.name for f in dataclasses.fields(cls.config_class)}
        keys |= {"components", "extend_components"} if cls.component_study else set()
        if key not in keys:
            raise typer.BadParameter(
                f"--options {item!r}: the {cls.family} family has no option {key!r}; its "
                f"options are {', '.join(sorted(keys))}"
            )
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        parsed.setdefault(family, {})[key] = value
    return parsed


def print_comparison(records: list[dict[str, Any]], title: str) -> None:
    """One column per family (and the floor row), one row per measure: fits 80 columns."""
    columns = reporting.table_columns(records)
    table = Table(title=escape(title), title_justify="left", box=None, padding=(0, 1))
    table.add_column("", style="bold")
    for r in records:
        table.add_column(escape(r["family"]), justify="right")
    cells = reporting.summary_rows(records, columns)
    for i, (key, heading) in enumerate(columns):
        if key != "family":
            table.add_row(escape(heading), *(escape(row[i]) for row in cells))
    console.print(table)
    for r in records:
        if r["status"] != "ok":
            console.print(escape(f"  {r['family']}: {r['status']}: {r['error']}"))


@app.command("compare")
def compare_families(
    data: Annotated[
        str,
        typer.Option(
            "--data",
            "-d",
            help="Data set(s), comma-separated (one report section each): "
            f"{', '.join(BUILTINS)}, or .npy/.csv files.",
        ),
    ] = "digits",
    families: Annotated[
        str, typer.Option("--families", "-f", help="Families to compare, comma-separated.")
    ] = ",".join(comparison.DEFAULT_FAMILIES),
    budget: Annotated[
        str,
        typer.Option(
            "--budget",
            "-b",
            help="Training budget of each family: seconds ('120s', '2m', '1h') or optimisation "
            "steps ('500steps', or a plain 500).",
        ),
    ] = "120s",
    out: Annotated[
        str,
        typer.Option("--out", "-o", help="Folder of report.html, report.md, records.json."),
    ] = "runs/compare",
    samples: Annotated[
        int, typer.Option("--samples", min=2, help="Model samples measured per family.")
    ] = 1000,
    n: NOption = None,
    n_test: Annotated[
        int | None,
        typer.Option("--n-test", min=2, help="Test samples (default: the whole test split)."),
    ] = None,
    options: Annotated[
        list[str] | None,
        typer.Option(
            "--options",
            help="Options of one family, FAMILY.KEY=VALUE (repeatable or comma-separated), over "
            "its defaults and recipe: e.g. --options flow.hidden=256. A variant label "
            "FAMILY:NAME in --families runs the family again with its own options: "
            "--families gmm,flow,flow:meanflow --options flow:meanflow.objective=meanflow.",
        ),
    ] = None,
    seed: SeedOption = 0,
    root: RootOption = None,
    progress: Annotated[bool, typer.Option(help="Show progress and training bars.")] = True,
    threads: ThreadsOption = None,
    target: TargetOption = None,
) -> None:
    """Fit families on the same data with the same budget; compare NLL, samples and cost.

    Each family trains on the train split (neural families for --budget; the GMM picks its
    components by BIC within it) and is measured on the test split: NLL in bits/dim on one
    scale (labelled exact, bound or estimate), MMD and sliced W2 of samples, and for labelled
    images the Fréchet distance, precision/recall and class entropy in the features of a small
    classifier (cached in $GENLAB_CACHE or ~/.cache/genlab); training and sampling time, NFE
    and parameters. On a table (a .csv with text columns, a .parquet file) also the table
    metrics of the decoded samples: per-column KS / total variation, the association-matrix
    difference, ML efficacy of --target and the DCR privacy test (genlab.table_metrics).
    A family that cannot model the data is reported as not applicable, one
    that fails with its error. Every family name and data set is checked before anything
    trains. Writes OUT/report.html (self-contained), OUT/report.md and the figures.
    """
    parsed = parse_budget_option(budget)
    names = [d.strip() for d in data.split(",") if d.strip()]
    wanted = [f.strip() for f in families.split(",") if f.strip()]
    if not names or not wanted:
        raise typer.BadParameter("--data and --families must each name at least one")
    comparison.check_families(wanted)
    family_options = parse_options(options, wanted)
    if not out.strip() or Path(out) == Path("."):
        raise ValueError(
            f"--out {out!r} names no folder (the report would go into the current directory): "
            "give a folder name, e.g. --out runs/compare"
        )
    out = Path(out)
    pairs = {name: comparison.load_pair(name, n_train=n, n_test=n_test, seed=seed, root=root)
             for name in dict.fromkeys(names)}  # fmt: skip
    settings = comparison.Settings(n_samples=samples, table_target=target)
    records: list[dict[str, Any]] = []
    choice = choose_threads(threads)
    if threads is None:  # small nets train faster on one thread (compare.fit_threads)
        trains = [train for train, _ in pairs.values()]
        choice = dataclasses.replace(choice, threads=comparison.fit_threads(trains, choice.threads))
    with torch_threads(choice) as chosen:
        typer.echo(f"comparing {', '.join(wanted)} with {chosen.describe()}")
        for name in names:
            train, test = pairs[name]
            found = comparison.compare(train, wanted, test=test, budget_seconds=parsed.seconds,
                                       budget_steps=parsed.steps, out=out, seed=seed,
                                       options=family_options,
                                       settings=settings, progress=progress,
                                       report=False)  # fmt: skip
            title = f"{data_name(name)}: test split, budget {parsed} per family"
            print_comparison(found, title)
            records += found
    paths = reporting.write_report(records, out)
    typer.echo(f"wrote {paths['html']}, {paths['md']} and {paths['json']}")
