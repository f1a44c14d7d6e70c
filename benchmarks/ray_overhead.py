"""What running ``snftune bench`` cells as Ray tasks costs per cell, against the serial runner.

The same grid of tiny cells runs twice in fresh folders, through the real code paths
(``run_suite`` with :class:`SerialExecutor`, then with :class:`RayExecutor`):

- serially in this process, warm (the data drawn and the model code loaded by a warm-up run);
- as Ray tasks on a local Ray with one CPU, so that Ray too runs one cell at a time and the
  difference is Ray's own: scheduling, sending the cell and its result, the worker process
  (its one worker warmed up the same way).

The two alternate ``--rounds`` times (each in fresh folders) and the medians are compared, so
that a load change on a shared machine does not land on one side only. Ray can come out a
little ahead: its driver rewrites the table while the worker already runs the next cell,
where the serial runner does one after the other.

Ray's start, the first task of a fresh worker (imports, data) and Ray's stop are one-time costs,
printed apart and spread over the grid. The two tables must be the same. Absolute times belong
to the machine named in the output; the goal is an overhead under 2 s per cell.

    python benchmarks/ray_overhead.py                  # 8 cells, 3 rounds
    python benchmarks/ray_overhead.py --tasks 4        # 16 cells
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from snftune.bench.ray_executor import RayExecutor, import_ray
from snftune.bench.runner import SerialExecutor, plan_suite, run_suite
from snftune.bench.suites import Suite, parse_suite
from snftune.runs import RunRequest

METHODS = ["linear", "bitfit", "snf-shallow", "lora"]
TASKS = ["shapes", "cells", "textures", "terrain", "count", "position", "orientation", "distance"]


def tiny_suite(tasks: int) -> Suite:
    return parse_suite(
        {
            "name": "overhead",
            "model": "vit_tiny_patch16_224",
            "pretrained": "random",  # the overhead of running cells, not their accuracy
            "model_kwargs": {"depth": 1, "patch_size": 8, "embed_dim": 48, "num_heads": 2},
            "img_size": 32,
            "train": {"epochs": 1, "warmup_epochs": 0.2, "batch_size": 100, "train_split": "val200"},
            "data_options": {"n_test": 200},
            "methods": METHODS,
            "tasks": [f"generated/{task}" for task in TASKS[:tasks]],
        }
    )


def run_grid(suite: Suite, out: Path, executor) -> float:
    overrides = RunRequest({"workers": 0, "progress": False})
    plan = plan_suite(suite, overrides)
    start = time.perf_counter()
    failures = run_suite(suite, plan, out, overrides=overrides, log=lambda line: None, executor=executor)
    elapsed = time.perf_counter() - start
    if failures:
        raise SystemExit(f"{len(failures)} cell(s) failed: {[f.log for f in failures]}")
    return elapsed


def warm_up(suite: Suite, folder: Path) -> None:
    """One cell per task, so that the process has drawn every task's data and loaded the code."""
    warm = dataclasses.replace(suite, methods=suite.methods[:1])
    run_grid(warm, folder, SerialExecutor(log=lambda line: None))


def _warm_worker(suite: Suite, folder: str) -> int:
    torch.set_num_threads(1)
    warm_up(suite, Path(folder))
    return os.getpid()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--tasks", type=int, default=2, help=f"generated tasks (1..{len(TASKS)}), x {len(METHODS)} methods"
    )
    parser.add_argument("--rounds", type=int, default=3, help="serial and Ray runs of the grid, alternating")
    args = parser.parse_args()
    ray = import_ray()
    suite = tiny_suite(args.tasks)
    cells = len(suite.cells())
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        warm_up(suite, root / "warm-serial")
        start = time.perf_counter()
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
        start_s = time.perf_counter() - start
        start = time.perf_counter()
        ray.get(ray.remote(_warm_worker).options(num_cpus=1).remote(suite, str(root / "warm-ray")))
        first_task_s = time.perf_counter() - start
        serial_runs, ray_runs = [], []
        for index in range(args.rounds):
            serial_runs.append(run_grid(suite, root / f"serial-{index}", SerialExecutor(log=lambda line: None)))
            ray_runs.append(run_grid(suite, root / f"ray-{index}", RayExecutor(cpus_per_cell=1, log=lambda line: None)))
        start = time.perf_counter()
        ray.shutdown()
        stop_s = time.perf_counter() - start
        tables = [root / f"{kind}-{index}" for kind in ("serial", "ray") for index in range(args.rounds)]
        same = all(
            (folder / name).read_bytes() == (tables[0] / name).read_bytes()
            for folder in tables
            for name in ("results.md", "results.csv")
        )
    serial_s, ray_s = statistics.median(serial_runs), statistics.median(ray_runs)
    per_cell = (ray_s - serial_s) / cells
    once = start_s + first_task_s + stop_s
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
        f"torch {torch.__version__}, ray {ray.__version__}; one torch thread per cell"
    )
    print(
        f"grid: {cells} cells ({len(METHODS)} methods x {args.tasks} generated tasks; one epoch on 200 images, "
        "a 1-block ViT)"
    )
    for name, median, runs in (
        ("serial, in this process", serial_s, serial_runs),
        ("Ray tasks on 1 CPU", ray_s, ray_runs),
    ):
        rounds = ", ".join(f"{r:.2f}" for r in runs)
        print(f"{name + ' (warm), median:':39s} {median:6.2f} s = {median / cells:5.2f} s per cell (rounds: {rounds})")
    verdict = "OK" if per_cell < 2 else "OVER"
    print(f"Ray overhead per cell:                   {per_cell:+6.2f} s  (goal: under 2 s: {verdict})")
    print(
        f"one-time: start Ray {start_s:.2f} s, first task of a fresh worker (imports, data) {first_task_s:.2f} s, "
        f"stop Ray {stop_s:.2f} s = {once:.2f} s; spread over these {cells} cells {once / cells:.2f} s per cell, "
        f"over the 190 cells of VTAB-1k x 10 methods {once / 190:.2f} s"
    )
    print(f"the same table from every run: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
