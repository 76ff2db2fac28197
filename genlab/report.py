"""The comparison report: a summary table, the figures records name, report.html and report.md.

    from genlab.report import write_report
    write_report(records, "runs/cmp")   # records from `genlab.compare.compare`

`compare` measures and draws (with `genlab.plots`); this module only formats. A record is a
plain dict (see `genlab.compare.RECORD_KEYS`): the table shows its numbers, and its "figures"
name PNG files under the output folder. report.html embeds them as data URIs (inline CSS, no
script, no external request), so it is one self-contained file; report.md links them.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

FLOOR = "data"
"""The family name of the floor row: real train samples measured like a model's samples."""

QUALITY_LABELS = {
    "frechet_classifier": "Fréchet distance (classifier features)",
    "sliced_wasserstein": "sliced W2",
}


def json_safe(value: Any) -> Any:
    """JSON-safe values: NaN and infinities become None; tensors and NumPy scalars, numbers;
    dicts, lists and tuples are converted recursively (tuples to lists)."""
    if isinstance(value, torch.Tensor | np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


# -- the table ------------------------------------------------------------------------------------
COLUMNS: tuple[tuple[str, str], ...] = (
    ("family", "family"),
    ("status", "status"),
    ("bits_per_dim", "NLL bits/dim"),
    ("log_prob_kind", "NLL is"),
    ("mmd", "MMD²"),
    ("sliced_wasserstein", "sliced W2"),
    ("frechet_classifier", "Fréchet (classifier features)"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("class_entropy_bits", "class entropy (bits)"),
    ("column_score", "column score"),
    ("ks_mean", "KS (numbers)"),
    ("tv_mean", "TV (categories)"),
    ("association_difference", "association diff."),
    ("ml_efficacy", "ML efficacy"),
    ("dcr_ratio", "DCR ratio"),
    ("share_closer_to_train", "closer to train"),
    ("bits_per_char", "bits/char"),
    ("bits_per_char_stderr", "± stderr"),
    ("reference_bits_per_char", "ref. bits/char of samples"),
    ("ngram_tv", "n-gram TV (1/2/3/4)"),
    ("known_words", "known words"),
    ("sample_seconds_per_1000_chars", "sample s / 1k chars"),
    ("train_seconds", "train s"),
    ("sample_seconds_per_1000", "sample s / 1k"),
    ("nfe", "NFE"),
    ("n_parameters", "parameters"),
)
"""(record key, heading) of the summary table's columns."""

NOTES = (
    "NLL bits/dim: of the discrete data for quantised images (densities at uniformly "
    "dequantised test points, an upper bound in expectation; log-masses exactly), else of the "
    "density; 'NLL is' says what the family's log_prob returns (exact, bound or estimate).",
    "MMD² (unbiased, Gaussian kernels at 0.25-4 times the median distance), sliced W2 and, for "
    "labelled images, the Fréchet distance, k-NN precision/recall (k=3) and the entropy of the "
    "classes assigned to samples, in the features of a classifier trained on the train split; "
    "all against the test split. Image samples are put on the data's grid first.",
    "The 'data' row measures real train samples the same way: the floor of each metric.",
    "NFE: network evaluations per sample of the default sampler ('–': the family samples in "
    "one pass and does not count them). Times are wall-clock seconds on this machine.",
)

TABLE_NOTE = (
    "Tables (genlab.table_metrics), samples decoded to the table's columns against the test "
    "rows: KS (numbers) and TV (categories) are the mean per-column Kolmogorov-Smirnov and "
    "total variation distances (0: identical marginals), column score 1 - their mean; "
    "association diff. the mean |difference| of the association matrices (Pearson's r, "
    "Cramér's V, correlation ratio); ML efficacy the macro F1 (R² for a number) on the test "
    "rows of a random forest trained on samples over one trained on the train rows (the "
    "target: compare's table_target); DCR ratio the median distance (Gower) of samples to "
    "their closest train row over the test rows' (≈ 1 or more: no copying); closer to train "
    "the share of samples whose closest real row is a train row (fresh data: n_train / "
    "(n_train + n_test); copies: 1). The 'data' row are train rows: copies by construction."
)


TEXT_NOTE = (
    "Text (genlab.compare._measure_text): bits/char of the test text, exact for an exact "
    "log_prob, else a bound (masked diffusion's ELBO: an upper bound on the bits, ± its "
    "Monte-Carlo standard error); ref. bits/char of samples: the first exact family's "
    "(autoregressive) bits/char of each family's samples and of real train excerpts (the "
    "'data' row); n-gram TV: total variation between the character n-gram frequencies of "
    "the samples and of the test text (the 'data' row: the floor at this sample size); known "
    "words: the share of the samples' words found in the train text; sampling seconds per "
    "1,000 characters at the default steps (the curve: at each of compare's text_steps)."
)


def _notes(rows: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """The notes under one data set's table (with `TABLE_NOTE` when it is a table,
    `TEXT_NOTE` for text)."""
    table = (TABLE_NOTE,) if any(r.get("column_score") is not None for r in rows) else ()
    text = (TEXT_NOTE,) if any(r.get("ngram_tv") is not None for r in rows) else ()
    return NOTES + table + text


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "–"
    if key == "n_parameters":
        return f"{int(value):,}"
    if isinstance(value, Mapping):  # e.g. n-gram distances by n
        return "/".join(_cell(key, v) for v in value.values())
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def table_columns(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """The `COLUMNS` that some record fills (family and status always)."""
    return [
        (key, heading)
        for key, heading in COLUMNS
        if key in ("family", "status") or any(r.get(key) is not None for r in records)
    ]


def summary_rows(
    records: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]] = COLUMNS
) -> list[list[str]]:
    """The table's cells: one row per record, one cell per column (None shows as "–")."""
    return [[_cell(key, r.get(key)) for key, _ in columns] for r in records]


def markdown_table(records: Sequence[Mapping[str, Any]]) -> str:
    """The summary table of one data set's records in Markdown (the columns some record fills)."""
    columns = table_columns(records)
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cells) + " |" for cells in summary_rows(records, columns)]
    return "\n".join(lines)


def _by_data(records: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault(str(r.get("data")), []).append(r)
    return groups


def _figures(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[tuple[str, str]]]]:
    """[(heading, [(caption, relative path), ...]), ...] of one data set's figures."""
    floor = next((r for r in rows if r["family"] == FLOOR), {"figures": {}})
    families = [r for r in rows if r["family"] != FLOOR]
    samples = (
        [("real test data", floor["figures"]["samples"])] if floor["figures"].get("samples") else []
    )
    for r in families:
        for key, caption in (
            ("samples", "samples"),
            ("density", "density and samples"),
            ("reconstructions", "test images and reconstructions"),
        ):
            if r["figures"].get(key):
                samples.append((f"{r['family']}: {caption}", r["figures"][key]))
    groups = [("Samples next to real data", samples)]
    if floor["figures"].get("quality_vs_nfe"):
        groups.append(
            (
                "Sample quality vs NFE (iterative families)",
                [("quality vs NFE", floor["figures"]["quality_vs_nfe"])],
            )
        )
    for r in families:
        if r["figures"].get("nll_vs_components"):
            groups.append(
                (
                    f"{r['family']}: test NLL vs components as the dimension grows",
                    [("NLL vs K per PCA dimension", r["figures"]["nll_vs_components"])],
                )
            )
    return [(h, items) for h, items in groups if items]


def _data_summary(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    floor = next((r for r in rows if r["family"] == FLOOR), None)
    if floor is None:
        return []
    d = floor["details"]
    if d.get("kind") == "text":
        return _text_summary(rows, d)
    lines = [
        f"{d.get('n_train')} train / {d.get('n_test')} test samples of shape "
        f"{tuple(d.get('event_shape') or ())}"
        + (f", {d['levels']} grey levels" if d.get("levels") else "")
        + f"; budget per family: {d.get('budget')}; seed {d.get('seed')}."
    ]
    c = d.get("classifier")
    if c:
        lines.append(
            f"Feature classifier: test accuracy {c['test_accuracy']:.3f} "
            f"({c['n_classes']} classes{', from the cache' if c['cached'] else ''})."
        )
    for r in rows:
        recipe = (r.get("details") or {}).get("recipe")
        if recipe:
            lines.append(f"{r['family']} defaults: {recipe} (genlab.models.recipes).")
        lines += _encoder_lines(r)
        curve = r.get("nfe_curve")
        if curve:
            pts = ", ".join(
                f"NFE {p['nfe']}: {_cell('x', p.get(curve['metric']))}" for p in curve["points"]
            )
            lines.append(f"{r['family']} quality vs NFE ({curve['metric']}): {pts}.")
        study = r["details"].get("nll_vs_components") if r.get("details") else None
        if study:
            best = []
            for d_, row in zip(study["dims"], study["test_bits_per_dim"], strict=True):
                vals = [(v, k) for k, v in zip(study["components"], row, strict=True) if v]
                if vals:
                    best.append(f"d={d_}: K={min(vals)[1]}")
            lines.append(f"{r['family']} test NLL is lowest at " + ", ".join(best) + ".")
            free = study.get("bic_free") or {}
            kept = [f"d={d_}: {k}" for d_, k in zip(study["dims"], free.get(
                "effective_components", []), strict=False) if k is not None]  # fmt: skip
            if kept:
                lines.append(f"Without BIC, a Dirichlet-process mixture ({free['family']}, "
                             f"K={free['n_components']}) keeps components of weight > 0.01 at "
                             + ", ".join(kept) + ".")  # fmt: skip
    return lines


def _encoder_lines(r: Mapping[str, Any]) -> list[str]:
    """A latent family's budget split between its two stages, and the reconstruction error of
    a family with an encoder."""
    d = r.get("details") or {}
    lines = []
    split = d.get("split")
    if split:

        def stage(name: str) -> str:
            seconds, steps = split.get(f"{name}_seconds"), split.get(f"{name}_steps")
            text = "–" if seconds is None else f"{seconds:.1f} s"
            return text + (f" ({steps} steps)" if steps else "")

        how = split.get("autoencoder", "")
        lines.append(
            f"{r['family']} budget split: autoencoder {stage('autoencoder')} ({how}), encoding "
            f"{split.get('encode_seconds') or 0:.1f} s, prior {stage('prior')}; latent "
            f"{split.get('latent_kind')} {tuple(split.get('latent_shape') or ())}."
        )
    if d.get("reconstruction_mse") is not None:
        lines.append(f"{r['family']} reconstruction error (MSE, test images): "
                     f"{_cell('x', d['reconstruction_mse'])}.")  # fmt: skip
    return lines


def _text_summary(rows: Sequence[Mapping[str, Any]], d: Mapping[str, Any]) -> list[str]:
    """The lines above a text table: the split, the reference, each family's steps curve."""
    lines = [
        f"{d.get('n_train'):,} train / {d.get('n_test'):,} test characters "
        f"({d.get('test_chars_scored'):,} scored); budget per family: {d.get('budget')}; seed "
        f"{d.get('seed')}; samples scored by the {d.get('reference') or '(no exact family)'} "
        "model."
    ]
    for r in rows:
        curve = r.get("nfe_curve")
        if curve:
            pts = "; ".join(
                f"{p['steps']} steps (NFE {p['nfe']}): {_cell('x', p['seconds_per_1000_chars'])} "
                f"s, {_cell('x', p.get('reference_bits_per_char'))} bits/char, 3-gram TV "
                f"{_cell('x', p.get('trigram_tv'))}"
                for p in curve["points"]
            )
            lines.append(f"{r['family']} sampling per 1,000 characters: {pts}.")
    return lines


def _problems(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        if r.get("status") not in ("ok", "partial"):  # failed, not applicable
            out.append(f"{r['family']} ({r['status']}): {r.get('error')}")
        for what, message in (r.get("errors") or {}).items():
            out.append(f"{r['family']}: {what}: {message}")
    return out


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;max-width:1200px;
padding:0 1rem;color:#222}
table{border-collapse:collapse;font-size:.85rem;margin:1rem 0}
th,td{border:1px solid #ccc;padding:.3rem .5rem;text-align:right}
th{background:#f3f3f3}td:first-child,td:nth-child(2),td:nth-child(4){text-align:left}
tr.floor td{background:#f7fbff;font-style:italic}
.figs{display:flex;flex-wrap:wrap;gap:1rem}
figure{margin:0;max-width:380px}figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.8rem;color:#555}
.notes,.problems{font-size:.8rem;color:#444}
"""


def _html(records: Sequence[Mapping[str, Any]], out: Path, title: str) -> str:
    e = html.escape
    parts = [
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    for name, rows in _by_data(records).items():
        parts.append(f"<section><h2>{e(name)}</h2>")
        parts += [f"<p>{e(line)}</p>" for line in _data_summary(rows)]
        columns = table_columns(rows)
        head = "".join(f"<th>{e(h)}</th>" for _, h in columns)
        body = "".join(
            ('<tr class="floor">' if r["family"] == FLOOR else "<tr>")
            + "".join(f"<td>{e(c)}</td>" for c in cells)
            + "</tr>"
            for r, cells in zip(rows, summary_rows(rows, columns), strict=True)
        )
        parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        notes = "".join(f"<li>{e(n)}</li>" for n in _notes(rows))
        parts.append(f'<ul class="notes">{notes}</ul>')
        for heading, items in _figures(rows):
            parts.append(f'<h3>{e(heading)}</h3><div class="figs">')
            for caption, rel in items:
                png = out / rel
                if png.is_file():
                    data = base64.b64encode(png.read_bytes()).decode("ascii")
                    img = f'<img src="data:image/png;base64,{data}" alt="{e(caption)}">'
                else:
                    img = f"<p>(figure {e(rel)} is missing)</p>"
                parts.append(f"<figure>{img}<figcaption>{e(caption)}</figcaption></figure>")
            parts.append("</div>")
        problems = _problems(rows)
        if problems:
            parts.append(
                '<h3>Problems</h3><ul class="problems">'
                + "".join(f"<li>{e(p)}</li>" for p in problems)
                + "</ul>"
            )
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _markdown(records: Sequence[Mapping[str, Any]], title: str) -> str:
    lines = [f"# {title}", ""]
    for name, rows in _by_data(records).items():
        lines += [f"## {name}", ""] + [f"{line}\n" for line in _data_summary(rows)]
        lines.append(markdown_table(rows))
        lines += [""] + [f"- {n}" for n in _notes(rows)] + [""]
        for heading, items in _figures(rows):
            lines += [f"### {heading}", ""] + [f"![{c}]({rel})" for c, rel in items] + [""]
        problems = _problems(rows)
        if problems:
            lines += ["### Problems", ""] + [f"- {p}" for p in problems] + [""]
    return "\n".join(lines)


def write_report(
    records: Sequence[Mapping[str, Any]],
    out: str | os.PathLike,
    *,
    title: str = "genlab compare",
) -> dict[str, Path]:
    """Write out/records.json, out/report.md (linking the PNGs under out/figures/) and a
    self-contained out/report.html (figures embedded as data URIs, inline CSS, no script).

    Records of several data sets give one section each. Returns {"json", "md", "html"} paths.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = [json_safe(dict(r)) for r in records]
    paths = {"json": out / "records.json", "md": out / "report.md", "html": out / "report.html"}
    paths["json"].write_text(json.dumps(records, indent=1) + "\n")
    paths["md"].write_text(_markdown(records, title))
    paths["html"].write_text(_html(records, out, title))
    return paths
