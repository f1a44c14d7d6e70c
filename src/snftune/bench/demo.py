"""The offline demo: the shipped backbone (``snftune-vit-tiny``) tuned on generated VTAB-like
tasks with the paper's methods, through the same suite runner as ``snftune bench``; then the
paper-style table (Markdown, CSV, JSON) and a t-SNE figure of the features (untouched
backbone, linear probing, SNF). Runs on a CPU in a few minutes; never downloads, never pretrains.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_json
from ..data.generated import GENERATED_TASKS, generated_task_names
from ..engine import cleanup_distributed, setup_distributed
from ..engine.acceleration import idle_threads, use_threads
from ..runs import RunFailedError, RunRequest, SettingsError
from .plots import plot_run_features
from .runner import plan_suite, run_suite
from .suites import Suite, SuiteTask, load_suite
from .tables import build_table, collect_results, format_table, write_tables

__all__ = ["DemoOptions", "run_demo", "idle_threads", "FIGURE_NAME", "SUMMARY_NAME", "QUICK_METHODS", "TABLE_METHODS"]

QUICK_METHODS = ["linear", "snf-shallow"]
TABLE_METHODS = ["linear", "full", "bitfit", "vpt-deep", "adapter", "lora", "snf-shallow", "snf-deep"]
"""What ``snftune demo`` runs by default: the paper's eight at one fixed learning rate (about 5
minutes on a CPU). The demo suite's other methods (the field's, each with a search) run when named."""
FIGURE_NAME = "features.png"
SUMMARY_NAME = "demo.json"
FIGURE_TITLES = {"linear": "linear probing", "snf-shallow": "SNF-shallow", "snf-deep": "SNF-deep"}


@dataclass
class DemoOptions:
    """What the demo runs (defaults: the ``demo`` suite as shipped)."""

    out: Path = Path("snftune-demo")
    quick: bool = False
    epochs: int | None = None
    tasks: list[str] | None = None
    methods: list[str] | None = None
    suite: str = "demo"
    threads: int | None = None
    device: str | None = None
    resume: bool = False
    figure: bool = True
    progress: bool = True


def demo_suite(options: DemoOptions) -> Suite:
    """The demo suite restricted to the chosen tasks and methods (``tasks=["all"]``: every generated task)."""
    suite = load_suite(options.suite)
    tasks = options.tasks
    if tasks == ["all"]:
        suite.tasks = [
            SuiteTask(f"generated/{name}", name.capitalize(), GENERATED_TASKS[name].group.capitalize())
            for name in generated_task_names()
        ]
        tasks = None
    default = TABLE_METHODS if options.suite == "demo" else None
    methods = options.methods or (QUICK_METHODS if options.quick else default)
    if options.quick and not tasks:
        tasks = [suite.tasks[0].data]
    return suite.select(methods, tasks)


def demo_overrides(options: DemoOptions) -> dict[str, Any]:
    values: dict[str, Any] = {"progress": options.progress}
    if options.device:
        values["device"] = options.device
    if options.quick:
        values.update(epochs=1, warmup_epochs=0.2, data_options={"n_test": 200})
    if options.epochs is not None:
        values["epochs"] = options.epochs
    return values


def run_demo(options: DemoOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs the demo in ``options.out`` and returns its summary (also written as ``demo.json``)."""
    saved_threads = torch.get_num_threads()
    use_threads(options.threads)
    try:
        return _run_demo(options, log)
    finally:
        torch.set_num_threads(saved_threads)  # run_demo may be called in-process (tests, notebooks)


def _run_demo(options: DemoOptions, log: Callable[[str], None]) -> dict[str, Any]:
    start = time.perf_counter()
    out = Path(options.out)
    if out.exists() and any(out.iterdir()) and not options.resume:
        raise SettingsError(f"{out} is not empty; pass --resume to continue that demo, or choose another --out")
    suite = demo_suite(options)
    overrides = demo_overrides(options)
    request = RunRequest(overrides)
    plan = plan_suite(suite, request)
    methods = list(dict.fromkeys(p.cell.method.label for p in plan))
    tasks = list(dict.fromkeys(p.cell.task.data for p in plan))
    log(
        f"snftune demo: {len(methods)} methods x {len(tasks)} tasks on {suite.models[0].model} "
        f"({torch.get_num_threads()} CPU threads); writing to {out}"
    )
    dist = setup_distributed(overrides.get("device"))
    try:
        failures = run_suite(suite, plan, out, overrides=request, dist=dist, log=log)
    finally:
        cleanup_distributed()
    if failures:
        raise RunFailedError(
            f"{len(failures)} demo run(s) failed; tracebacks in " + ", ".join(str(f.log) for f in failures)
        )
    figure = _figure(suite, out, options, log) if options.figure else None
    tables = write_tables(suite, out)
    table = build_table(suite, collect_results(suite, out))
    summary = {
        "command": "snftune " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["demo"] else "snftune demo",
        "wall_s": round(time.perf_counter() - start, 1),
        "torch_threads": torch.get_num_threads(),
        "model": suite.models[0].model,
        "methods": methods,
        "tasks": tasks,
        "settings": {k: v for k, v in overrides.items() if k != "progress"},
        "runs": [
            {"row": c["row"], "data": c["data"], "top1": c["top1"], "tuned_parameters": c["tuned_parameters"]}
            for c in table["cells"]
        ],
        "tables": {fmt: str(path) for fmt, path in tables.items()},
        "figure": str(figure) if figure else None,
        "table": format_table(table, "markdown"),
    }
    atomic_write_json(out / SUMMARY_NAME, summary)
    return summary


def _figure(suite: Suite, out: Path, options: DemoOptions, log: Callable[[str], None]) -> Path | None:
    """t-SNE of the first task's features: untouched backbone, linear probing, SNF (as in the paper)."""
    labels = [m.label for m in suite.methods]
    chosen = [m for m in FIGURE_TITLES if m in labels]
    if "snf-shallow" in chosen and "snf-deep" in chosen:
        chosen.remove("snf-deep")
    cells = [c for c in suite.cells() if c.task == suite.tasks[0] and c.method.label in chosen]
    if not cells:
        log("figure skipped: it needs linear probing or an SNF run among the methods")
        return None
    log(f"t-SNE of {suite.tasks[0].data} features ...")
    drawn = plot_run_features(
        [c.folder(out) for c in cells],
        out / FIGURE_NAME,
        labels=[FIGURE_TITLES[c.method.label] for c in cells],
        max_samples=200 if options.quick else 400,
        device=options.device,
    )
    return drawn["path"]
