"""`genlab eval`: a saved model on a data set's test split (`genlab.evaluation.evaluate_model`),
as a table or as one strict JSON object."""

from __future__ import annotations

import json
from typing import Annotated

import typer

import genlab
from genlab import evaluation
from genlab.cli.common import (
    DATA_HELP,
    ChannelsOption,
    ModelDir,
    NOption,
    RootOption,
    SeedOption,
    SizeOption,
    TargetOption,
    app,
    image_options,
    print_table,
)
from genlab.data import load_dataset
from genlab.report import json_safe


@app.command("eval")
def evaluate(
    model_dir: ModelDir,
    data: Annotated[str, typer.Option("--data", "-d", help=DATA_HELP)],
    n: NOption = None,
    seed: SeedOption = 0,
    root: RootOption = None,
    channels: ChannelsOption = None,
    size: SizeOption = None,
    target: TargetOption = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print one JSON object and nothing else (null for NaN or infinity)."
        ),
    ] = False,
) -> None:
    """Evaluate a saved model on a data set's test split.

    Reports nll (mean negative log-likelihood, nats per sample), bits_per_dim (of the discrete
    data for quantised images, evaluated at dequantised pixels; else of the continuous
    density), log_prob_kind (exact, bound or estimate), and mmd, sliced_wasserstein and
    energy_distance between as many model samples as test points and the test data.
    A text model on text (--data text:FILE.txt, whose test split is the last 10% of the
    characters) reports loss (nats/char, exact), bits_per_char, nats_per_token, window_loss
    (nanoGPT's validation loss: nats/token over consecutive block_size windows) and counts.
    A table (.csv with text columns, .parquet) adds the table metrics of as many samples as
    test rows: per-column KS / total variation, the association-matrix difference, ML
    efficacy of --target, and the DCR privacy test against the train split (the JSON has
    every detail in table_details).
    """
    model = genlab.load(model_dir)
    images = image_options(channels, size)  # an image folder's --channels / --size
    test = load_dataset(data, split="test", n=n, seed=seed, root=root, **images)
    table = {}
    if getattr(test, "frame", None) is not None:  # a table: train rows for ML efficacy and DCR
        table = {"train": load_dataset(data, split="train", seed=seed, root=root), "target": target}
    result = evaluation.evaluate_model(model, test, seed, **table)
    if as_json:
        typer.echo(json.dumps(json_safe(result), allow_nan=False))
    else:
        result.pop("table_details", None)
        print_table(f"{model_dir} on {data} (test split)", result)
