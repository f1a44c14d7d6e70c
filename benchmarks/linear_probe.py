"""Linear probing on cached features against end to end, measured in one run.

Speed (default): two linear-probing runs through ``snftune.runs.train_run`` (what ``snftune
train --method linear`` does) with the same settings, one after the other in this process:
the default, whose head trains on backbone features computed once, and ``--no-feature-cache``,
which runs the frozen backbone on every image of every epoch. VTAB-style: 100 epochs on the
1,000 images of train800val200, evaluated on 1,000 test images after every epoch (the
engine's default). Prints both wall times, their ratio and both top-1. Drop-path is 0 in both,
so that both compute the same function (end to end otherwise applies drop-path to the frozen
blocks while training; ``--suite`` measures what that changes).

Accuracy (``--suite``): every generated task, top-1 on test after ``--epochs`` epochs, of the
head trained on cached features and of end-to-end runs at drop-path 0 and at the protocol's 0.1.

    python benchmarks/linear_probe.py                         # shipped snftune-vit-tiny, generated/shapes
    python benchmarks/linear_probe.py --suite --epochs 10     # the nine generated tasks
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from snftune.data.generated import GENERATED_TASKS
from snftune.runs import resolve_settings, train_run


def run(values: dict, out: Path) -> tuple[float, dict]:
    """Wall time and metrics of one run, settings resolution and data building included."""
    start = time.perf_counter()
    metrics = train_run(resolve_settings(values), out, resume=False)
    return time.perf_counter() - start, metrics


def base_values(args: argparse.Namespace, task: str) -> dict:
    return {
        "model": args.model,
        "method": "linear",
        "data": f"generated/{task}",
        "data_options": {"n_test": args.test_images},
        "epochs": args.epochs,
        "warmup_epochs": min(10, args.epochs / 10),
        "workers": args.workers,
        "progress": False,
        "seed": args.seed,
        **({"pretrained": args.pretrained} if args.pretrained else {}),
        **({"eval_every": args.eval_every} if args.eval_every is not None else {}),
    }


def speed(args: argparse.Namespace, folder: Path) -> None:
    values = {**base_values(args, args.task), "drop_path": 0.0}
    cached_s, cached = run(values, folder / "features")
    e2e_s, e2e = run({**values, "feature_cache": False}, folder / "end-to-end")
    inputs = cached["settings"]["inputs"]
    print(
        f"{args.model} on generated/{args.task}: {args.epochs} epochs, 1000 training images, "
        f"{args.test_images} test images evaluated every {values.get('eval_every', 1)} epoch(s)"
    )
    print(
        f"  cached features: {cached_s:8.1f} s  (features of {inputs['images']} images in {inputs['extract_s']:.1f} s)"
    )
    print(f"  end to end:      {e2e_s:8.1f} s")
    print(f"  ratio end to end / cached features: {e2e_s / cached_s:.1f}x")
    print(f"  top-1: cached features {cached['top1']:.2f}, end to end {e2e['top1']:.2f}")


def suite(args: argparse.Namespace, folder: Path) -> None:
    rows = []
    print(f"{'task':<12} {'features':>9} {'e2e dp0':>9} {'e2e dp0.1':>10}")
    for task in GENERATED_TASKS:
        values = base_values(args, task)
        top1 = [
            run({**values, "drop_path": 0.0}, folder / task / "features")[1]["top1"],
            run({**values, "drop_path": 0.0, "feature_cache": False}, folder / task / "e2e-dp0")[1]["top1"],
            run({**values, "drop_path": 0.1, "feature_cache": False}, folder / task / "e2e-dp0.1")[1]["top1"],
        ]
        rows.append(top1)
        print(f"{task:<12} {top1[0]:9.2f} {top1[1]:9.2f} {top1[2]:10.2f}", flush=True)
    means = [sum(column) / len(rows) for column in zip(*rows, strict=True)]
    print(f"{'mean':<12} {means[0]:9.2f} {means[1]:9.2f} {means[2]:10.2f}")
    gaps = [abs(row[0] - row[1]) for row in rows]
    print(
        f"largest |features - e2e dp0|: {max(gaps):.2f} points; mean e2e dp0.1 - features: {means[2] - means[0]:+.2f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"tasks": list(GENERATED_TASKS), "top1": rows}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="snftune-vit-tiny", help="the shipped pretrained tiny ViT (32 px)")
    parser.add_argument("--pretrained", help="weights for --model (default: the model's own)")
    parser.add_argument("--task", default="shapes", help="generated task of the speed run")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--eval-every", type=int, help="evaluate every k epochs (default: the engine's 1)")
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--suite", action="store_true", help="accuracy on every generated task instead of speed")
    parser.add_argument("--json", help="--suite: also write the table as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        (suite if args.suite else speed)(args, Path(tmp))
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
