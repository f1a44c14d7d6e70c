"""``snftune demo``: the offline tour (:mod:`snftune.bench.demo`): the shipped backbone tuned on
generated VTAB-like tasks with the paper's methods; prints the table, writes it with a t-SNE figure."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..inputs import THREADS
from .common import ranged


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="offline demo: tune the shipped backbone on generated tasks, table + t-SNE figure",
        description="Tunes the backbone shipped with snftune (snftune-vit-tiny, pretrained by this project on "
        "the generated upstream set) on generated VTAB-like tasks with linear probing, full fine-tuning, BitFit, "
        "VPT-deep, Adapter, LoRA, SNF-shallow and SNF-deep; prints the result table with the tuned parameters, "
        "writes it as Markdown/CSV/JSON, and draws the t-SNE of the features (untouched backbone, linear "
        "probing, SNF). No network, no GPU needed; the default takes about 5 minutes on 2 CPU cores.",
        epilog="example: snftune demo --out snftune-demo   (quick check: snftune demo --quick)",
    )
    parser.add_argument("--out", default="snftune-demo", help="output folder (default: snftune-demo)")
    parser.add_argument("--quick", action="store_true", help="one task, two methods, one short epoch (for CI)")
    parser.add_argument("--epochs", type=int, help="epochs per run (default: the demo suite's, 2)")
    parser.add_argument("--tasks", nargs="+", help="generated tasks (e.g. shapes terrain count, or 'all')")
    parser.add_argument(
        "--methods",
        nargs="+",
        help="methods (default: the eight of the table; the suite has more, e.g. adaptformer ln-tune)",
    )
    parser.add_argument("--suite", default="demo", help="suite name or YAML file (default: demo)")
    parser.add_argument(
        "--threads",
        type=ranged(THREADS),
        help="torch CPU threads (default: the idle cores, from the load average; at least 1)",
    )
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--resume", action="store_true", help="continue a demo in --out, keeping its finished runs")
    parser.add_argument("--no-figure", dest="figure", action="store_false", help="skip the t-SNE figure")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..bench.demo import FIGURE_NAME, SUMMARY_NAME, DemoOptions, run_demo

    options = DemoOptions(
        out=Path(args.out),
        quick=args.quick,
        epochs=args.epochs,
        tasks=args.tasks,
        methods=args.methods,
        suite=args.suite,
        threads=args.threads,
        device=args.device,
        resume=args.resume,
        figure=args.figure,
        progress=args.progress,
    )
    summary = run_demo(options, log=lambda line: print(line, flush=True))
    print()
    print(summary["table"], end="")
    tables = [Path(path).name for path in summary["tables"].values()]
    written = [*tables, *([FIGURE_NAME] if summary["figure"] else []), SUMMARY_NAME]
    print(f"\ndone in {summary['wall_s']:.0f}s. Results in {options.out}/: {', '.join(written)}")
    return 0
