"""``snftune plot``: figures from benchmark results and run folders, as PNG files."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import CLIError


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
    tradeoff = kinds.add_parser(
        "tradeoff",
        help="mean top-1 against tuned parameters, one point per method (with seed spread)",
        description="The field's trade-off figure from a results.json: the plain mean over tasks (or, with "
        "--average groups, the mean of group means) against tuned parameters on a log scale.",
        epilog="example: snftune plot tradeoff bench/vtab/results.json --out tradeoff.png",
    )
    tradeoff.add_argument("results", help="results.json written by snftune bench")
    tradeoff.add_argument("--average", choices=["tasks", "groups"], default="tasks")
    tradeoff.add_argument("--out", default="tradeoff.png")
    tradeoff.set_defaults(run=run_tradeoff)
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
    lipschitz = kinds.add_parser(
        "lipschitz",
        help="per-site Lipschitz constants, error bound and growth, CKA (redraws snftune analyze's figure)",
        epilog="example: snftune plot lipschitz analysis/analysis.json --out lipschitz.png",
    )
    lipschitz.add_argument("analysis", help="analysis.json written by snftune analyze")
    lipschitz.add_argument("--out", default="lipschitz.png")
    lipschitz.set_defaults(run=run_lipschitz)


def _read_results(path: Path, few_shot: bool = False) -> dict:
    """The results.json checked at the door (a damaged one is one line): as ``bench --compare``
    reads it for the trade-off, and for its list of cells for the few-shot curves."""
    from ..bench.compare import ResultsError, read_results
    from ..inputs import read_json_record

    if not few_shot:
        return read_results(path)
    if not path.is_file():
        raise CLIError(f"{path} does not exist; pass the results.json written by snftune bench")
    return read_json_record(path, {"cells": list}, ResultsError, "pass the results.json written by snftune bench")


def run_fewshot(args: argparse.Namespace) -> int:
    from ..bench.plots import plot_fewshot

    path = Path(args.results)
    results = _read_results(path, few_shot=True)
    try:
        written = plot_fewshot(results, args.out)
    except ValueError as error:
        raise CLIError(f"{path}: {error}") from error
    print(f"wrote {written}")
    return 0


def run_tradeoff(args: argparse.Namespace) -> int:
    from ..bench.plots import plot_tradeoff

    path = Path(args.results)
    results = _read_results(path)
    try:
        written = plot_tradeoff(results, args.out, "mean of groups" if args.average == "groups" else "mean")
    except ValueError as error:
        raise CLIError(f"{path}: {error}") from error
    print(f"wrote {written}")
    return 0


def run_features(args: argparse.Namespace) -> int:
    from ..bench.plots import plot_run_features

    drawn = plot_run_features(
        args.runs,
        args.out,
        labels=args.labels,
        split=args.split,
        max_samples=args.max_samples,
        include_backbone=not args.no_backbone,
        device=args.device,
        seed=args.seed,
    )
    print(f"wrote {drawn['path']} ({drawn['images']} images of {drawn['task']}:{drawn['split']})")
    return 0


def run_lipschitz(args: argparse.Namespace) -> int:
    from ..analysis import plot_lipschitz, read_analysis

    print(f"wrote {plot_lipschitz(read_analysis(args.analysis), args.out)}")
    return 0
