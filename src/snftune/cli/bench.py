"""``snftune bench``: run a suite's grid (one run folder per method x task), resuming where
it stopped, and write the paper-style table as Markdown, CSV and JSON. The cells run here one
after the other (also under torchrun), as Ray tasks (``--executor ray``), or as one of N
slices (``--shard K/N``, for SLURM arrays); ``--merge`` and ``--status`` read the folder."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..bench.suites import suite_names  # the suites folder's listing: no torch, for --help
from ..inputs import THREADS
from .common import CLIError, add_train_options, apply_threads, parse_search, ranged, values_from_args

if TYPE_CHECKING:
    from ..bench.suites import Suite


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
        "--merge",
        action="store_true",
        help="write the table of every finished cell (after --shard jobs) and count what is missing; trains "
        "nothing. With --out alone, the grid is the one DIR/results.json was written for",
    )
    parser.add_argument(
        "--status",
        action="store_true",
        help="print how many cells are finished, running, failed and pending in --out, and the slowest; "
        "--out alone is enough",
    )
    scale = parser.add_argument_group("grids larger than one machine (README: 'Grids larger than one machine')")
    scale.add_argument(
        "--executor",
        choices=["serial", "ray"],
        default="serial",
        help="serial: the cells one after the other here (default; torchrun for DDP); ray: each cell a Ray task "
        "with 1 GPU where the cluster has GPUs (needs pip install -e '.[ray]')",
    )
    scale.add_argument(
        "--ray-address",
        metavar="auto|HOST:PORT",
        help="join a running Ray cluster (default: start Ray on this machine for the grid, stop it at the end)",
    )
    scale.add_argument(
        "--cpus-per-cell",
        type=ranged(THREADS),
        metavar="N",
        help="with --executor ray: CPUs Ray reserves per cell, and its torch threads (default 1)",
    )
    scale.add_argument(
        "--shard",
        metavar="K/N",
        help="run only the K-th of N disjoint slices of the cells (same command for every K; cells "
        "evaluated with another cell's weights stay with it); then --merge",
    )
    parser.add_argument(
        "--rerun-changed",
        action="store_true",
        help="cells whose folder holds a run with other settings: move it aside (<cell>.previous-N) and run again",
    )
    add_train_options(parser, with_run=False)
    parser.set_defaults(run=run)


def _select(args: argparse.Namespace, suite: Suite) -> Suite:
    from ..bench.suites import SuiteModel

    suite = suite.select(args.methods, args.tasks, args.models)
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
    from ..bench.runner import CellExecutor, SerialExecutor, changed_cells, plan_suite, run_suite, state_of
    from ..bench.shards import Shard, shard_cells
    from ..bench.status import format_status, grid_status, recorded_suite
    from ..bench.suites import load_suite
    from ..engine import DistInfo, cleanup_distributed, setup_distributed
    from ..runs import RunRequest

    if args.compare:
        return _compare(*args.compare)
    if not args.out:
        raise CLIError("bench needs --suite and --out (or --compare A B; --status and --merge need only --out)")
    out = Path(args.out)
    if args.status or args.merge:
        suite = _select(args, load_suite(args.suite) if args.suite else recorded_suite(out))
        if args.merge:
            _print_table(suite, out)
        print(format_status(grid_status(suite, out)), end="")
        return 0
    if not args.suite:
        raise CLIError("bench needs --suite and --out (or --compare A B; --status and --merge need only --out)")
    suite = _select(args, load_suite(args.suite))
    if args.table_only:
        _print_table(suite, out)
        return 0
    shard = Shard.parse(args.shard) if args.shard else None
    _check_executor_options(args)
    overrides, notes = values_from_args(args, leave=("pretrained",))
    for note in notes:
        print(note, flush=True)
    pretrained_in_file = overrides.pop("pretrained", None)
    pretrained = args.pretrained or pretrained_in_file
    overrides.pop("out", None)
    request = RunRequest(overrides)
    plan = plan_suite(suite, request, [pretrained] if isinstance(pretrained, str) else pretrained, log=_log)
    if shard is not None:
        whole = len(plan)
        plan = shard_cells(suite, plan, shard)
        print(f"shard {shard}: {len(plan)} of the {whole} cells", flush=True)
    if not args.dry_run:
        apply_threads(args.threads)
    if args.dry_run:
        changed = changed_cells(suite, plan, out)
        for planned in plan:
            state = "changed" if planned.cell.folder(out) in changed else state_of(suite, planned, out)
            print(f"{state:9s} {planned.cell.row:24s} {planned.cell.task.data}")
        return 0
    executor: CellExecutor
    if args.executor == "ray":  # the driver: the cells run in Ray's worker processes
        from ..bench.ray_executor import RayExecutor

        dist, executor = DistInfo(), RayExecutor(args.ray_address, args.cpus_per_cell or 1, log=_log)
    else:
        dist = setup_distributed(overrides.get("device"))
        executor = SerialExecutor(dist, _log, name=f"serial, shard {shard}" if shard else "serial")
    try:
        failures = run_suite(
            suite,
            plan,
            out,
            overrides=request,
            dist=dist,
            log=_log,
            rerun_changed=args.rerun_changed,
            executor=executor,
        )
    finally:
        cleanup_distributed()
    if dist.is_main:
        _print_table(suite, out)
        if failures:
            print(f"{len(failures)} cell(s) failed: " + "; ".join(f"{f.label} ({f.log})" for f in failures))
            return 1
    return 0


def _log(line: str) -> None:
    print(line, flush=True)


def _check_executor_options(args: argparse.Namespace) -> None:
    """Executor options that cannot work are refused before any planning or training."""
    if args.executor != "ray":
        given = [
            flag
            for flag, value in (("--ray-address", args.ray_address), ("--cpus-per-cell", args.cpus_per_cell))
            if value
        ]
        if given:
            raise CLIError(f"{' and '.join(given)} go with --executor ray")
        return
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise CLIError("--executor ray runs each cell in a process of its own; start it with python, not torchrun")
    from ..bench.ray_executor import RayUnavailableError, import_ray

    try:
        import_ray()
    except RayUnavailableError as error:
        raise CLIError(str(error)) from None


def _print_table(suite: Suite, out: Path) -> None:
    from ..bench.tables import build_table, collect_results, format_table, write_tables

    written = write_tables(suite, out)
    print(format_table(build_table(suite, collect_results(suite, out)), "markdown"), end="")
    print(f"tables: {', '.join(str(path) for path in written.values())}")


def _show(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _compare(path_a: str, path_b: str) -> int:
    from ..bench.compare import compare_results, read_results

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
