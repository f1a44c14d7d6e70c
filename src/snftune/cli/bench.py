"""``snftune bench``: run a suite's grid (one run folder per method x task), resuming where
it stopped, and write the paper-style table as Markdown, CSV and JSON."""

from __future__ import annotations

import argparse
import json
import traceback
from pathlib import Path
from typing import Any

import torch

from ..bench.suites import Cell, Suite, SuiteError, load_suite, suite_names
from ..bench.tables import build_table, collect_results, format_table, write_tables
from ..engine import CHECKPOINT_NAME, METRICS_NAME, TUNED_NAME, cleanup_distributed, setup_distributed
from ..engine.distributed import broadcast_object
from .common import (
    CLIError,
    add_train_options,
    known_keys,
    read_config,
    resolve_settings,
    run_training,
    settings_from_record,
    values_from_args,
)
from .eval import evaluate_tuned


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
    parser.add_argument("--suite", required=True, help="a shipped suite name or a suite YAML file")
    parser.add_argument("--methods", nargs="+", help="methods to run (suite labels or any method/preset name)")
    parser.add_argument("--tasks", nargs="+", help="only these tasks (specs or column names)")
    parser.add_argument("--models", nargs="+", help="only these backbones (suite labels or timm names)")
    parser.add_argument("--model", help="replace the suite's backbone (single-backbone suites)")
    parser.add_argument("--out", required=True, help="benchmark folder (one sub-folder per row and task)")
    parser.add_argument("--dry-run", action="store_true", help="list the cells and their state, run nothing")
    parser.add_argument("--table-only", action="store_true", help="only rebuild the tables from finished cells")
    add_train_options(parser, with_run=False)
    parser.set_defaults(run=run)


def _select(args: argparse.Namespace) -> Suite:
    suite = load_suite(args.suite).select(args.methods, args.tasks, args.models)
    if args.model:
        if len(suite.models) > 1:
            raise CLIError(f"suite {suite.name} has several backbones; pick them with --models, not --model")
        only = suite.models[0]
        suite.models = [type(only)(args.model, args.model, only.pretrained, only.model_kwargs, only.img_size)]
    unknown = sorted(set(suite.train) - set(known_keys()))
    if unknown:
        raise CLIError(
            f"suite {suite.name}: unknown setting(s) {unknown} under 'train'; known: {', '.join(known_keys())}"
        )
    if not suite.methods:
        raise CLIError(f"suite {suite.name} lists no methods; pass --methods")
    return suite


def cell_values(suite: Suite, cell: Cell, overrides: dict[str, Any]) -> dict[str, Any]:
    """Settings of one cell: the suite's, then --config and the command line."""
    values: dict[str, Any] = {
        "model": cell.model.model,
        "pretrained": cell.model.pretrained,
        "model_kwargs": dict(cell.model.model_kwargs),
        "img_size": cell.model.img_size,
        "method": cell.method.method,
        "method_options": dict(cell.method.options),
        "data": cell.task.data,
        "data_options": dict(suite.data_options),
        **suite.train,
    }
    for key, value in overrides.items():
        if key in ("model_kwargs", "method_options", "data_options"):
            values[key] = {**values[key], **value}
        elif key == "pretrained" and isinstance(value, str) and "=" in value and len(suite.models) > 1:
            continue  # per-backbone weights are resolved in _pretrained_for
        else:
            values[key] = value
    return values


def _pretrained_for(cell: Cell, pretrained: list[str] | None) -> str | None:
    """--pretrained FILE, or LABEL=FILE pairs for multi-backbone suites."""
    if not pretrained:
        return cell.model.pretrained
    pairs = dict(item.split("=", 1) for item in pretrained if "=" in item)
    if pairs:
        return pairs.get(cell.model.label, pairs.get(cell.model.model, cell.model.pretrained))
    return pretrained[0]


def run(args: argparse.Namespace) -> int:
    try:
        suite = _select(args)
    except SuiteError as error:
        raise CLIError(str(error)) from error
    out = Path(args.out)
    if args.table_only:
        _print_table(suite, out)
        return 0
    overrides = values_from_args(args)
    pretrained = overrides.pop("pretrained", None)
    pretrained_list = [pretrained] if isinstance(pretrained, str) else pretrained
    overrides.pop("out", None)

    # Check every cell before training any: unknown methods, tasks or settings fail now.
    plan = []
    for cell in suite.cells():
        if cell.task.train_from:
            plan.append((cell, None))
            continue
        values = cell_values(suite, cell, overrides)
        values["pretrained"] = _pretrained_for(cell, pretrained_list)
        plan.append((cell, resolve_settings(values)))
    if args.dry_run:
        for cell, _ in plan:
            print(f"{cell_state(cell.folder(out)):9s} {cell.row:24s} {cell.task.data}")
        return 0

    device = overrides.get("device")
    dist = setup_distributed(device)
    failures = []
    try:
        for index, (cell, resolved) in enumerate(plan, 1):
            folder = cell.folder(out)
            state = broadcast_object(cell_state(folder))
            label = f"[{index}/{len(plan)}] {cell.row} / {cell.task.data}"
            if state == "done":
                if dist.is_main:
                    print(f"{label}: finished, skipped")
                continue
            if dist.is_main:
                print(f"{label}: {'resuming' if state == 'resume' else 'training'}", flush=True)
            try:
                if resolved is None:
                    if dist.is_main:
                        _evaluate_from(suite, cell, out, overrides)
                else:
                    settings, task, method_config = resolved
                    run_training(settings, task, method_config, folder, True, dist)
            except Exception as error:  # one failing cell must not lose the others
                if dist.enabled:
                    raise
                failures.append((label, error))
                print(f"{label}: FAILED: {type(error).__name__}: {error}")
                traceback.print_exc()
            if dist.is_main:
                write_tables(suite, out)
    finally:
        cleanup_distributed()
    if dist.is_main:
        _print_table(suite, out)
        if failures:
            print(f"{len(failures)} cell(s) failed: " + "; ".join(label for label, _ in failures))
            return 1
    return 0


def cell_state(folder: Path) -> str:
    if (folder / METRICS_NAME).is_file():
        return "done"
    if (folder / CHECKPOINT_NAME).is_file():
        return "resume"
    return "todo"


def _evaluate_from(suite: Suite, cell: Cell, out: Path, overrides: dict[str, Any]) -> None:
    """A task evaluated with the weights tuned on another task (domain generalisation)."""
    source = suite.source_cell(cell).folder(out)
    if not (source / TUNED_NAME).is_file():
        raise CLIError(f"{cell.task.data} is evaluated with the weights of {source}, which has not finished")
    source_metrics = json.loads((source / METRICS_NAME).read_text())
    settings = settings_from_record(read_config(source))
    settings.data, settings.eval_split = cell.task.data, None
    settings.data_options = {**suite.data_options, **overrides.get("data_options", {})}
    if overrides.get("data_dir"):
        settings.data_dir = overrides["data_dir"]
    device = overrides.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    result = evaluate_tuned(settings, source / TUNED_NAME, None, 256, settings.train.workers, device)
    metrics = {
        "top1": result["top1"],
        "reported": source_metrics.get("reported", "final"),
        "reported_as": f"top-1 on {result['data']}:{result['split']} of the weights tuned in {source}",
        "eval_split": result["split"],
        "evaluation": result,
        "tuned_parameters": source_metrics.get("tuned_parameters"),
        "trained_in": str(source),
    }
    folder = cell.folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / METRICS_NAME).write_text(json.dumps(metrics, indent=2) + "\n")


def _print_table(suite: Suite, out: Path) -> None:
    write_tables(suite, out)
    print(format_table(build_table(suite, collect_results(suite, out)), "markdown"), end="")
    print(f"tables: {out / 'results.md'}, {out / 'results.csv'}, {out / 'results.json'}")
