"""``snftune demo``: the offline tour. Tunes the shipped backbone (``snftune-vit-tiny``) on
generated VTAB-like tasks with the paper's methods, prints the paper-style table and writes it
(Markdown, CSV, JSON) with a t-SNE figure of the features (untouched backbone, linear probing,
SNF). Runs on a CPU in a few minutes; it never downloads and never pretrains."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from ..bench.suites import Suite, SuiteError, SuiteTask, load_suite
from ..bench.tables import build_table, collect_results, format_table, write_tables
from ..engine import METRICS_NAME, cleanup_distributed, setup_distributed
from .bench import cell_state, cell_values
from .common import CLIError, resolve_settings, run_training

QUICK_METHODS = ["linear", "snf-shallow"]
FIGURE_NAME = "features.png"
SUMMARY_NAME = "demo.json"


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
    parser.add_argument("--methods", nargs="+", help="methods (default: the eight of the table)")
    parser.add_argument("--suite", default="demo", help="suite name or YAML file (default: demo)")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: the idle cores, from the load average; at least 1)"
    )
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--resume", action="store_true", help="continue a demo in --out, keeping its finished runs")
    parser.add_argument("--no-figure", dest="figure", action="store_false", help="skip the t-SNE figure")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.set_defaults(run=run)


def idle_threads() -> int:
    """Threads for the cores nobody else is using. Torch's CPU kernels spin-wait for each other, so
    one thread more than the idle cores makes a run many times slower (15x measured on 2 cores with
    one busy), while one thread less costs at most a factor of the thread count."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    return max(1, min(torch.get_num_threads(), cores - busy))


def _suite(args: argparse.Namespace) -> Suite:
    try:
        suite = load_suite(args.suite)
        tasks = args.tasks
        if tasks == ["all"]:
            from ..data.generated import generated_task_names

            suite.tasks = [
                SuiteTask(f"generated/{name}", name.capitalize(), _group(name)) for name in generated_task_names()
            ]
            tasks = None
        methods = args.methods or (QUICK_METHODS if args.quick else None)
        if args.quick and not tasks:
            tasks = [suite.tasks[0].data]
        return suite.select(methods, tasks)
    except SuiteError as error:
        raise CLIError(str(error)) from error


def _group(task: str) -> str:
    from ..data.generated import GENERATED_TASKS

    return GENERATED_TASKS[task].group.capitalize()


def _overrides(args: argparse.Namespace, suite: Suite) -> dict:
    values: dict = {"progress": args.progress}
    if args.device:
        values["device"] = args.device
    if args.quick:
        values.update(epochs=1, warmup_epochs=0.2, data_options={"n_test": 200})
    if args.epochs is not None:
        if args.epochs < 1:
            raise CLIError(f"--epochs must be >= 1, got {args.epochs}")
        values["epochs"] = args.epochs
    return values


def _check_out(out: Path, resume: bool) -> None:
    if out.exists() and any(out.iterdir()) and not resume:
        raise CLIError(f"{out} is not empty; pass --resume to continue that demo, or choose another --out")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    if args.threads is not None and args.threads < 1:
        raise CLIError(f"--threads must be >= 1, got {args.threads}")
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or idle_threads())
    try:
        return _run(args, start)
    finally:
        torch.set_num_threads(saved_threads)  # main() may be called in-process (tests, notebooks)


def _run(args: argparse.Namespace, start: float) -> int:
    suite = _suite(args)
    out = Path(args.out)
    _check_out(out, args.resume)
    overrides = _overrides(args, suite)
    plan = []
    for cell in suite.cells():
        values = cell_values(suite, cell, overrides)
        plan.append((cell, resolve_settings(values)))
    methods = list(dict.fromkeys(cell.method.label for cell, _ in plan))
    tasks = list(dict.fromkeys(cell.task.data for cell, _ in plan))
    print(
        f"snftune demo: {len(methods)} methods x {len(tasks)} tasks on {suite.models[0].model} "
        f"({torch.get_num_threads()} CPU threads); writing to {out}",
        flush=True,
    )
    dist = setup_distributed(overrides.get("device"))
    runs = []
    try:
        for index, (cell, (settings, task, method_config)) in enumerate(plan, 1):
            folder = cell.folder(out)
            label = f"[{index}/{len(plan)}] {cell.row:12s} {cell.task.data:22s}"
            if cell_state(folder) != "done":
                run_training(settings, task, method_config, folder, True, dist)
            metrics = json.loads((folder / METRICS_NAME).read_text())
            runs.append(
                {
                    "row": cell.row,
                    "data": cell.task.data,
                    "top1": metrics["top1"],
                    "tuned_parameters": metrics["tuned_parameters"],
                    "train_s": round(metrics["timing"]["train_s"], 1),
                }
            )
            print(
                f"{label} top-1 {metrics['top1']:6.2f}%  {metrics['tuned_parameters']:>9,} tuned  "
                f"{metrics['timing']['train_s']:5.1f}s  (elapsed {time.perf_counter() - start:5.0f}s)",
                flush=True,
            )
            write_tables(suite, out)
    finally:
        cleanup_distributed()
    figure = _figure(suite, out, args, overrides.get("device")) if args.figure else None
    tables = write_tables(suite, out)
    wall = time.perf_counter() - start
    print()
    print(format_table(build_table(suite, collect_results(suite, out)), "markdown"), end="")
    summary = {
        "command": "snftune " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["demo"] else "snftune demo",
        "wall_s": round(wall, 1),
        "torch_threads": torch.get_num_threads(),
        "model": suite.models[0].model,
        "methods": methods,
        "tasks": tasks,
        "settings": {k: v for k, v in overrides.items() if k != "progress"},
        "runs": runs,
        "tables": {fmt: str(path) for fmt, path in tables.items()},
        "figure": str(figure) if figure else None,
    }
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\ndone in {wall:.0f}s. Results in {out}/: results.md, results.csv, results.json", end="")
    print(f", {FIGURE_NAME}" if figure else "", end="")
    print(f", {SUMMARY_NAME}")
    return 0


def _figure(suite: Suite, out: Path, args: argparse.Namespace, device: str | None) -> Path | None:
    """t-SNE of the first task's features: untouched backbone, linear probing, SNF (as in the paper)."""
    from .plot import run_features

    labels = [m.label for m in suite.methods]
    chosen = [m for m in ("linear", "snf-shallow", "snf-deep") if m in labels]
    if "snf-shallow" in chosen and "snf-deep" in chosen:
        chosen.remove("snf-deep")
    cells = [c for c in suite.cells() if c.task == suite.tasks[0] and c.method.label in chosen]
    if not cells:
        print("figure skipped: it needs linear probing or an SNF run among the methods")
        return None
    names = {"linear": "linear probing", "snf-shallow": "SNF-shallow", "snf-deep": "SNF-deep"}
    print(f"t-SNE of {suite.tasks[0].data} features ...", flush=True)
    path = out / FIGURE_NAME
    run_features(
        argparse.Namespace(
            runs=[str(c.folder(out)) for c in cells],
            labels=[names[c.method.label] for c in cells],
            split=None,
            max_samples=200 if args.quick else 400,
            no_backbone=False,
            device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
            seed=0,
            out=str(path),
        )
    )
    return path
