"""``snftune data check``: is a dataset on disk what its benchmark expects? One line per task;
exit status 0 when every task is clean, 1 when something is wrong, 2 when there is no dataset."""

from __future__ import annotations

import argparse
import os
import sys

from .common import CLIError, check_output_file, parse_key_values, write_json_result


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="inspect datasets on disk",
        description="Commands about the datasets snftune reads (docs/data.md).",
    )
    commands = parser.add_subparsers(dest="data_command", required=True)
    check = commands.add_parser(
        "check",
        help="check split sizes, classes, images and train/test duplicates of a task",
        description="Reads every split of a task as training would and reports, one line per task: split sizes "
        "against the benchmark's (VTAB-1k 800/200/1000 and each task's test size, VPT's FGVC splits, k images "
        "per class in few-shot lists, the DG test sets), classes absent from a split, missing or undecodable "
        "images, and test images whose bytes equal a training image's. Exit status 1 when anything is wrong.",
        epilog="examples: snftune data check vtab1k --data-dir /data;  snftune data check fgvc/cub --data-dir "
        "/data --json cub-check.json;  snftune data check folder:my_images",
    )
    check.add_argument(
        "spec",
        help="task spec: vtab1k/<task>, vtab1k (all 19), fgvc/<dataset>, fgvc (all 5), "
        "fewshot/<dataset>/<k>shot/seed<s>, dg/<target>, folder:<path>, list:<path>",
    )
    check.add_argument("--data-dir", help="folder holding the datasets")
    check.add_argument("--data-options", nargs="+", metavar="KEY=VALUE", help="task options, e.g. num_classes=10")
    check.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="processes decoding images (0: this one; default: the CPU count, at most 8)",
    )
    check.add_argument("--json", help="also write the full report to this JSON file")
    check.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    check.set_defaults(run=run_check)


def run_check(args: argparse.Namespace) -> int:
    from ..data import check_data

    if args.workers < 0:
        raise CLIError(f"--workers must be 0 or more, got {args.workers}")
    check_output_file(args.json, "--json")
    options = parse_key_values(args.data_options, "--data-options")
    report = check_data(args.spec, args.data_dir, options, workers=args.workers, progress=args.progress)
    if args.json:
        write_json_result(args.json, report.to_dict())
    for task in report.tasks:
        print(task.summary())
    failed = sum(not task.ok for task in report.tasks)
    if len(report.tasks) > 1:
        print(f"{len(report.tasks) - failed} of {len(report.tasks)} tasks ok")
    if failed:
        print(f"snftune data check: {failed} of {len(report.tasks)} task(s) have problems", file=sys.stderr)
        return 1
    return 0
