"""MNIST as a folder of PNG files: the folder loader gives the IDX loader's pixels and, trained
at equal steps, the same bits/dim, in memory and streamed from disk.

    OMP_NUM_THREADS=1 python benchmarks/image_folder_mnist.py [--steps 200] [--n-test 500]
        [--families gmm,vae,...] [--threads 1] [--quick] [--root DIR] [--folder DIR]

1. Writes the shared MNIST test images (t10k IDX files, 10,000 images; the shared folder has
   no training images) as PNG files in class sub-folders 0/ ... 9/ (`save_image_folder`,
   file `<label>/<index>.png`), in a temporary folder or --folder.
2. Loads the folder (in memory, and streamed: an `ImageFolderArray`) and checks every pixel
   and label against the IDX rows of the same files: they must be equal (exit code 1 if not).
   Prints the seconds of each load beside the IDX loader's.
3. Trains every image family three times at equal optimiser steps (EM iterations for the
   mixtures), the same seed and options: (a) on the IDX rows in the folder's train order,
   (b) on the folder in memory, (c) on the folder streamed (data_window=1, so its batches hold
   the same rows as (a) and (b)); then scores each on the same --n-test test images (the
   folder's test split, and the IDX rows of those files) with `genlab.evaluation.held_out_nll`
   (bits/dim of the discrete data). Identical images must give identical bits/dim: the
   differences (b) - (a) and (c) - (a) are printed, and any non-zero one fails the run (exit
   code 1; the latent family's streamed run trains on other rows, see `OTHER_ROWS_STREAMED`).
   The seconds per step of (c) over (b) is the cost of decoding PNGs batch by batch.

--quick: 1,000 images, 3 steps, 32 test images, small nets (under a minute on one core).
Options per family are small (`FAMILY_OPTIONS`): this checks the loaders, it is not a
quality benchmark.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from genlab import evaluation
from genlab.data import load_dataset, save_image_folder
from genlab.models import FAMILIES

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
BATCH = 64
FAMILY_OPTIONS: dict[str, dict[str, Any]] = {
    "gmm": {"n_components": 10, "covariance_type": "diag"},
    "bgmm": {"n_components": 10, "covariance_type": "diag"},
    "latent": {"autoencoder_options": {"data_window": 1}},  # its prior: a GMM (EM)
}
"""Options beside the step budget; neural families use their recipe for images."""
QUICK_OPTIONS: dict[str, dict[str, Any]] = {
    "flow": {"base_channels": 8, "hidden": 32}, "diffusion": {"base_channels": 8, "hidden": 32},
    "vae": {"hidden": 32}, "autoencoder": {"hidden": 32, "depth": 1},
    "latent": {"autoencoder_options": {"data_window": 1, "hidden": 32, "depth": 1}},
    "autoregressive": {"n_layer": 1, "n_embd": 32, "n_head": 2},
    "masked_diffusion": {"n_layer": 1, "n_embd": 32, "n_head": 2},
}  # fmt: skip
"""Smaller nets for --quick (a check of the loaders, not of the models)."""
OTHER_ROWS_STREAMED = {"latent"}
"""Families whose streamed run trains on other rows: the latent model's autoencoder holds out
validation rows (`fit_for_budget`), which for a lazily read array are its last rows instead of
random ones (`genlab.train.split_validation`). Their streamed bits/dim are shown, not required
to be equal."""


def image_families() -> list[str]:
    return sorted(name for name, cls in FAMILIES.items() if "image" in cls.data_kinds)


def field_names(cls: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(cls.config_class)}


def build(name: str, steps: int, quick: bool) -> Any:
    """The family at `steps` optimiser steps (EM iterations for mixtures), seed 0."""
    cls = FAMILIES[name]
    fields = field_names(cls)
    options = {**FAMILY_OPTIONS.get(name, {}), **(QUICK_OPTIONS.get(name, {}) if quick else {})}
    options = {k: v for k, v in options.items() if k in fields}
    budget = {"max_steps": steps, "batch_size": BATCH, "data_window": 1} if "max_steps" in fields \
        else {"max_iter": steps, "tol": 0.0}  # fmt: skip
    if not set(budget) & fields:
        raise ValueError(f"the {name} family has neither max_steps nor max_iter")
    options |= {k: v for k, v in budget.items() if k in fields}
    return cls(seed=0, device="cpu", **options)


def score(model: Any, test: Any, seed: int = 0) -> float:
    torch.manual_seed(seed)  # a family drawing from the global RNG draws the same each time
    options = dict(getattr(model, "quick_log_prob", {}))
    with torch.no_grad():
        return float(evaluation.held_out_nll(model, test, seed, **options).bits_per_dim)


def train_and_score(name: str, train: Any, test: Any, steps: int, quick: bool) -> dict[str, Any]:
    model = build(name, steps, quick)
    start = time.perf_counter()
    model.fit(train)
    seconds = time.perf_counter() - start
    return {"bpd": score(model, test), "seconds": seconds, "steps": steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--n-images", type=int, default=None, help="first N IDX images")
    parser.add_argument("--families", default=None, help="comma-separated (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--root", type=Path, default=Path(os.environ.get("GENLAB_DATA", DATA)))
    parser.add_argument("--folder", type=Path, default=None, help="where to write the PNGs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = 3 if args.quick else args.steps
    n_test = 32 if args.quick else args.n_test
    n_images = 1000 if args.quick and args.n_images is None else args.n_images
    families = args.families.split(",") if args.families else image_families()

    start = time.perf_counter()
    idx = load_dataset("mnist", split="test", root=args.root)
    idx_seconds = time.perf_counter() - start
    x_idx, y_idx = idx.x[:n_images], idx.y[:n_images]
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp) / "mnist-png"
        start = time.perf_counter()
        save_image_folder(x_idx, folder, y_idx)
        write_seconds = time.perf_counter() - start
        loads, seconds = {}, {}
        for stream in (False, True):
            for split in ("train", "test"):
                start = time.perf_counter()
                loads[stream, split] = load_dataset(folder, split=split, stream=stream)
                seconds[stream, split] = time.perf_counter() - start
        print(f"{len(x_idx)} MNIST images: IDX read {idx_seconds:.2f} s (all 10,000); PNGs "
              f"written {write_seconds:.2f} s; folder loads (train + test) in memory "
              f"{seconds[False, 'train'] + seconds[False, 'test']:.2f} s, streamed (decode "
              f"check only) {seconds[True, 'train'] + seconds[True, 'test']:.2f} s")  # fmt: skip
        ok = True
        same_order = {}
        for split in ("train", "test"):
            memory, lazy = loads[False, split], loads[True, split]
            rows = torch.tensor([int(Path(f).stem) for f in memory.files])
            same_order[split] = dataclasses.replace(idx, x=x_idx[rows], y=y_idx[rows], name="idx")
            equal = (torch.equal(memory.x, same_order[split].x) and torch.equal(lazy.x[:], memory.x)
                     and torch.equal(memory.y, same_order[split].y))  # fmt: skip
            names_ok = memory.label_names == tuple(str(k) for k in range(10))
            print(f"{split}: {len(memory)} images, pixels and labels equal to the IDX rows: "
                  f"{equal}; label names 0..9: {names_ok}")  # fmt: skip
            ok &= equal and names_ok
        tests = {
            "idx": dataclasses.replace(same_order["test"], x=same_order["test"].x[:n_test],
                                       y=None),
            "folder": dataclasses.replace(loads[False, "test"], x=loads[False, "test"].x[:n_test],
                                          y=None),
        }  # fmt: skip
        trains = {"idx": dataclasses.replace(same_order["train"], y=None),
                  "memory": dataclasses.replace(loads[False, "train"], y=None),
                  "streamed": dataclasses.replace(loads[True, "train"], y=None)}  # fmt: skip
        header = (
            f"{'family':18} {'bits/dim IDX':>12} {'folder':>10} {'streamed':>10} "
            f"{'d(folder)':>10} {'d(stream)':>10} {'s/step mem':>11} {'stream/mem':>10}"
        )
        print(f"\ntrained at {steps} steps (mixtures: EM iterations), test bits/dim on {n_test} "
              f"images, {args.threads} thread(s)\n{header}")  # fmt: skip
        failed: list[str] = []
        for name in families:
            try:
                r = {
                    "idx": train_and_score(name, trains["idx"], tests["idx"], steps, args.quick),
                    "memory": train_and_score(name, trains["memory"], tests["folder"], steps,
                                              args.quick),
                    "streamed": train_and_score(name, trains["streamed"], tests["folder"],
                                                steps, args.quick),
                }  # fmt: skip
            except Exception as e:  # report the family and go on with the others
                print(f"{name:18} failed: {type(e).__name__}: {' '.join(str(e).split())}")
                failed.append(name)
                continue
            d_memory = r["memory"]["bpd"] - r["idx"]["bpd"]
            d_stream = r["streamed"]["bpd"] - r["idx"]["bpd"]
            per_step = r["memory"]["seconds"] / steps
            ratio = r["streamed"]["seconds"] / max(r["memory"]["seconds"], 1e-9)
            print(f"{name:18} {r['idx']['bpd']:12.5f} {r['memory']['bpd']:10.5f} "
                  f"{r['streamed']['bpd']:10.5f} {d_memory:10.2g} {d_stream:10.2g} "
                  f"{per_step:11.4f} {ratio:10.2f}", flush=True)  # fmt: skip
            ok &= d_memory == 0 and (d_stream == 0 or name in OTHER_ROWS_STREAMED)
    print("\nidentical images, identical bits/dim:", "yes" if ok else "NO")
    if failed:
        print(f"failed to train (not compared): {', '.join(failed)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
