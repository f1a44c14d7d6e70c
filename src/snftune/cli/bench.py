"""``snftune bench``: run a suite's grid (one run folder per method x task), resuming where
it stopped, and write the paper-style table as Markdown, CSV and JSON."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..bench.compare import compare_results, read_results
from ..bench.runner import changed_cells, plan_suite, run_suite, state_of
from ..bench.suites import Suite, SuiteModel, load_suite, suite_names
from ..bench.tables import build_table, collect_results, format_table, write_tables
from ..engine import cleanup_distributed, setup_distributed
from .common import CLIError, add_train_options, parse_search, values_from_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="run a benchmark suite (methods x tasks) and write its result table",
        description="Runs every (method, task) cell of a suite, one run folder each under --out, skipping "
        "finished cells and resuming interrupted ones, then writes results.md/.csv/.json. Training settings: "
        "the protocol's, then the suite's, then --config, then the options given here.",
        epilog="example: snftune bench --suite vtab1k --methods snf-shallow snf-deep --pretrained ViT-B_16.npz "
        f"--data-dir /data --out bench/vtab. Suites: {', '.join(suite_names())}, or a suite YAML file.",
    )
    parser.add_argument("--suite", help="a shipped suite name or a suite YAML file")
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        help="compare two results.json files: what made them differ first, then the cells that differ",
    )
    parser.add_argument("--methods", nargs="+", help="methods to run (suite labels or any method/preset name)")
    parser.add_argument("--tasks", nargs="+", help="only these tasks (specs or column names)")
    parser.add_argument("--models", nargs="+", help="only these backbones (suite labels or timm names)")
    parser.add_argument("--model", help="replace the suite's backbone (single-backbone suites)")
    parser.add_argument("--out", help="benchmark folder (one sub-folder per row and task)")
    parser.add_argument("--dry-run", action="store_true", help="list the cells and their state, run nothing")
    parser.add_argument("--table-only", action="store_true", help="only rebuild the tables from finished cells")
    parser.add_argument(
        "--rerun-changed",
        action="store_true",
        help="cells whose folder holds a run with other settings: move it aside (<cell>.previous-N) and run again",
    )
    add_train_options(parser, with_run=False)
    parser.set_defaults(run=run)


def _select(args: argparse.Namespace) -> Suite:
    suite = load_suite(args.suite).select(args.methods, args.tasks, args.models)
    if args.search:
        suite = suite.with_search(parse_search(args.search))
    if args.seeds:
        suite = dataclasses.replace(suite, seeds=list(args.seeds))
    if args.model:
        if len(suite.models) > 1:
            raise CLIError(f"suite {suite.name} has several backbones; pick them with --models, not --model")
        only = suite.models[0]
        suite.models = [SuiteModel(args.model, args.model, only.pretrained, only.model_kwargs, only.img_size)]
    return suite


def run(args: argparse.Namespace) -> int:
    if args.compare:
        return _compare(*args.compare)
    if not args.suite or not args.out:
        raise CLIError("bench needs --suite and --out (or --compare A B)")
    suite = _select(args)
    out = Path(args.out)
    if args.table_only:
        _print_table(suite, out)
        return 0
    overrides = values_from_args(args)
    pretrained = overrides.pop("pretrained", None)
    overrides.pop("out", None)
    plan = plan_suite(suite, overrides, [pretrained] if isinstance(pretrained, str) else pretrained)
    if args.dry_run:
        changed = changed_cells(suite, plan, out)
        for planned in plan:
            state = "changed" if planned.cell.folder(out) in changed else state_of(suite, planned, out)
            print(f"{state:9s} {planned.cell.row:24s} {planned.cell.task.data}")
        return 0
    dist = setup_distributed(overrides.get("device"))
    try:
        failures = run_suite(
            suite,
            plan,
            out,
            overrides=overrides,
            dist=dist,
            log=lambda line: print(line, flush=True),
            rerun_changed=args.rerun_changed,
        )
    finally:
        cleanup_distributed()
    if dist.is_main:
        _print_table(suite, out)
        if failures:
            print(f"{len(failures)} cell(s) failed: " + "; ".join(f"{f.label} ({f.log})" for f in failures))
            return 1
    return 0


def _print_table(suite: Suite, out: Path) -> None:
    write_tables(suite, out)
    print(format_table(build_table(suite, collect_results(suite, out)), "markdown"), end="")
    print(f"tables: {out / 'results.md'}, {out / 'results.csv'}, {out / 'results.json'}")


def _show(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _compare(path_a: str, path_b: str) -> int:
    found = compare_results(read_results(path_a), read_results(path_b))
    print(f"A: {path_a}\nB: {path_b}\n")
    print("What made them (provenance shared by each file's runs):")
    for key, (a, b) in found["provenance"].items():
        print(f"  {key}: {_show(a)}  ->  {_show(b)}")
    if not found["provenance"]:
        print("  the same")
    print("Suite settings:")
    for key, (a, b) in found["settings"].items():
        print(f"  {key}: {_show(a)}  ->  {_show(b)}")
    if not found["settings"]:
        print("  the same")
    print("Cells (top-1 %):")
    for row, column, a, b, delta in found["cells"]:
        change = f"{delta:+.2f}" if delta is not None else "n/a"
        print(f"  {row} / {column}: {_show(a)} -> {_show(b)} ({change})")
    if not found["cells"]:
        print("  the same")
    return 0
