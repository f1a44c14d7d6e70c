"""``snftune plot``: figures from benchmark results and run folders, as PNG files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..engine import TUNED_NAME
from .common import CLIError, build_backbone, input_config, read_config, settings_from_record


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("plot", help="figures: few-shot curves, t-SNE of features")
    kinds = parser.add_subparsers(dest="figure", required=True)
    fewshot = kinds.add_parser(
        "fewshot",
        help="top-1 against shots (paper Figure 4)",
        description="One panel per dataset, one line per method, from the results.json of a fewshot bench.",
        epilog="example: snftune plot fewshot bench/fewshot/results.json --out fewshot.png",
    )
    fewshot.add_argument("results", help="results.json written by snftune bench --suite fewshot")
    fewshot.add_argument("--out", default="fewshot.png")
    fewshot.set_defaults(run=run_fewshot)
    features = kinds.add_parser(
        "features",
        help="t-SNE of pooled features: untouched backbone and tuned runs side by side",
        description="Pooled features of the evaluation split from the untouched backbone (the first run's) "
        "and from each run's tuned model (e.g. linear probing and SNF), mapped to 2-D with t-SNE.",
        epilog="example: snftune plot features runs/dtd-linear runs/dtd-snf --out features.png",
    )
    features.add_argument("runs", nargs="+", help="run folders (written by snftune train)")
    features.add_argument("--labels", nargs="+", help="panel titles, one per run (default: the method)")
    features.add_argument("--split", help="split to embed (default: the first run's evaluation split)")
    features.add_argument("--max-samples", type=int, default=500)
    features.add_argument("--no-backbone", action="store_true", help="leave out the untouched backbone's panel")
    features.add_argument("--device", help="cpu or cuda")
    features.add_argument("--seed", type=int, default=0)
    features.add_argument("--out", default="features.png")
    features.set_defaults(run=run_features)


def run_fewshot(args: argparse.Namespace) -> int:
    from ..bench.plots import plot_fewshot

    path = Path(args.results)
    if not path.is_file():
        raise CLIError(f"{path} does not exist; pass the results.json of a fewshot bench")
    try:
        written = plot_fewshot(json.loads(path.read_text()), args.out)
    except ValueError as error:
        raise CLIError(f"{path}: {error}") from error
    print(f"wrote {written}")
    return 0


def run_features(args: argparse.Namespace) -> int:
    from ..bench.plots import evenly_spaced, plot_features, pooled_features
    from ..data import build_transform, resolve_task
    from ..tuning import load_tuned

    if args.labels and len(args.labels) != len(args.runs):
        raise CLIError(f"--labels has {len(args.labels)} names for {len(args.runs)} runs")
    records = []
    for run in map(Path, args.runs):
        if not (run / TUNED_NAME).is_file():
            raise CLIError(f"{run} is not a finished run folder ({TUNED_NAME} is missing)")
        records.append(settings_from_record(read_config(run)))
    first = records[0]
    task = resolve_task(first.data, first.data_dir, **(first.data_options or {}))
    split = args.split or first.eval_split or task.eval_split
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    backbone = build_backbone(first, drop_path=0.0)
    transform = build_transform(task.protocol, input_config(backbone, first), train=False)
    dataset = evenly_spaced(task.dataset(split, transform=transform), args.max_samples)
    panels = []
    if not args.no_backbone:
        panels.append(("untouched backbone", *pooled_features(backbone, dataset, device=device)))
    for index, (run, settings) in enumerate(zip(args.runs, records, strict=True)):
        if settings.data != first.data:
            raise CLIError(f"{run} was trained on {settings.data}, the first run on {first.data}: compare one task")
        model = build_backbone(settings, drop_path=0.0)
        load_tuned(model, Path(run) / TUNED_NAME)
        title = args.labels[index] if args.labels else model.snftune_state.label
        panels.append((title, *pooled_features(model, dataset, device=device)))
    written = plot_features(panels, args.out, seed=args.seed, class_names=list(task.class_names or []) or None)
    print(f"wrote {written} ({len(dataset)} images of {task.name}:{split})")
    return 0
