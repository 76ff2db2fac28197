"""Which network should flow matching and diffusion use on small images, at the budget?

    python benchmarks/net_choice.py [--data digits] [--budget 20] [--seeds 1] [--threads 1]
    python benchmarks/net_choice.py --data mnist --budget 120 --samples 500

The families' `net="auto"` rule (`genlab.models.continuous.auto_net`) picks an MLP for points
and for images of at most 256 pixels, the UNet for larger square images. This script measures
that choice where it matters for the main job: each of flow and diffusion is trained with
`net="mlp"` and with `net="unet"` for the same wall-clock budget (one torch thread, runs
interleaved so that a busy machine slows both alike), then sampled with the family's default
sampler and scored by the Fréchet distance in the features of the small feature classifier
(`genlab.evaluation.feature_classifier`) against the test split, with the steps each net
trained for. The UNet / MLP ratio of the distance is printed side by side (> 1: the MLP wins).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time
from pathlib import Path

import torch

from genlab import metrics
from genlab.data import load_dataset
from genlab.evaluation import feature_classifier
from genlab.models import FAMILIES

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
N_TRAIN = 9000


def frechet(model, classifier, test_features, n: int, seed: int, levels: int | None) -> float:
    samples = model.sample(n, seed=seed).detach().cpu().float()
    if levels:
        samples = metrics.quantize(samples, levels)
    features, _ = classifier.features_and_labels(samples)
    return metrics.frechet_distance(test_features, features)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of training per run")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--root", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.data == "mnist":  # the shared folder holds MNIST's test set: 9,000 / 1,000
        images = load_dataset("mnist", split="test", root=args.root or DATA)
        x = images.x if isinstance(images.x, torch.Tensor) else images.x[:]
        train = dataclasses.replace(images, x=x[:N_TRAIN], y=images.y[:N_TRAIN])
        test = dataclasses.replace(images, x=x[N_TRAIN:], y=images.y[N_TRAIN:])
    else:
        train = load_dataset(args.data, split="train", root=args.root)
        test = load_dataset(args.data, split="test", root=args.root)
    classifier = feature_classifier(train, test, seed=0)
    test_x = test.x if isinstance(test.x, torch.Tensor) else test.x[:]
    test_features, _ = classifier.features_and_labels(test_x.float())
    print(f"# {args.data}: {len(train)} train / {len(test)} test, budget {args.budget:g} s, "
          f"{args.threads} thread(s), {platform.processor() or platform.machine()}")  # fmt: skip
    print("| family | net | seed | steps | steps/s | Fréchet (classifier) |")
    print("|---|---|---|---|---|---|")
    results: dict[tuple[str, str], list[float]] = {}
    for seed in range(args.seeds):
        for family in ("flow", "diffusion"):
            for net in ("mlp", "unet"):
                start = time.perf_counter()
                model = FAMILIES[family](net=net, max_time=args.budget, seed=seed)
                model.fit(train, progress=False)
                seconds = time.perf_counter() - start
                steps = model.train_result_.steps
                fd = frechet(model, classifier, test_features, args.samples, seed, train.levels)
                results.setdefault((family, net), []).append(fd)
                print(f"| {family} | {net} | {seed} | {steps} | {steps / seconds:.1f} | "
                      f"{fd:.2f} |", flush=True)  # fmt: skip
    print()
    for family in ("flow", "diffusion"):
        mlp = sum(results[family, "mlp"]) / args.seeds
        unet = sum(results[family, "unet"]) / args.seeds
        print(f"{family}: mean Fréchet mlp {mlp:.2f}, unet {unet:.2f}, unet / mlp {unet / mlp:.2f}")


if __name__ == "__main__":
    main()
