"""Grids larger than one machine: ``snftune bench`` as Ray tasks (``--executor ray``), as SLURM-style
slices (``--shard K/N``) merged into one table (``--merge``), and ``--status`` read from the folder.

Every way of running the tiny grid below must give the table of one serial run, byte for byte
(same cells, same seeds). The grid has a cell evaluated with another cell's weights
(``train_from``), which must wait for its source wherever the cells run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from snftune.bench.runner import ERROR_LOG_NAME, plan_suite
from snftune.bench.shards import Shard, shard_cells
from snftune.bench.status import grid_status, recorded_suite
from snftune.bench.suites import load_suite
from snftune.bench.tracking import CELL_LOCK_NAME, cell_lock, read_cell_record
from snftune.cli import main
from snftune.data.generated import DOWNSTREAM_SHAPES, generate_split
from snftune.runs import RunRequest, SettingsError

SRC = Path(__file__).resolve().parents[1] / "src"
TABLES = ("results.md", "results.csv")


# One torch thread, as in a Ray task with one CPU, so that every way of running agrees to the bit.
pytestmark = pytest.mark.usefixtures("one_thread")


def shifted_shapes(root: Path) -> Path:
    """``generated/shapes`` drawn with another seed, as an ImageFolder tree (same 8 classes, in order)."""
    images, labels = generate_split("shapes", "test", seed=1, image_size=32, n_test=48)
    for split in ("train", "test"):
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / split / f"{label}-{DOWNSTREAM_SHAPES[label]}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(image)).save(folder / f"{index:03d}.png")
    return root


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> tuple[Path, list[str]]:
    """The suite file and the bench arguments: 2 methods x (2 trained tasks + 1 evaluated from
    shapes' weights), 2 seeds, one epoch on 200 images of a 1-block, 48-wide ViT."""
    folder = tmp_path_factory.mktemp("grid")
    shifted = shifted_shapes(folder / "shapes-shifted")
    suite = {
        "name": "tiny",
        "model": "vit_tiny_patch16_224",
        "pretrained": "random",
        "model_kwargs": {"depth": 1, "patch_size": 8, "embed_dim": 48, "num_heads": 2},
        "img_size": 32,
        "train": {"epochs": 1, "warmup_epochs": 0.2, "batch_size": 100, "train_split": "val200", "drop_path": 0.0},
        "methods": ["linear", "snf-shallow"],
        "groups": ["Natural", "Specialized"],
        "seeds": [0, 1],
        "tasks": [
            {"data": "generated/shapes", "column": "Shapes", "group": "Natural"},
            {"data": "generated/cells", "column": "Cells", "group": "Specialized"},
            {"data": f"folder:{shifted}", "column": "Shapes-shifted", "train_from": "generated/shapes"},
        ],
    }
    (folder / "suite.yaml").write_text(yaml.safe_dump(suite))
    return folder / "suite.yaml", ["--suite", str(folder / "suite.yaml"), "--workers", "0", "--no-progress"]


def bench(out: Path, args: list[str], *extra: str) -> int:
    return main(["bench", *args, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def serial(grid, tmp_path_factory) -> Path:
    """The reference: one serial run of the whole grid."""
    out = tmp_path_factory.mktemp("serial") / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert bench(out, grid[1]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def same_table(a: Path, b: Path) -> None:
    for name in TABLES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    cells_a, cells_b = (json.loads((o / "results.json").read_text())["cells"] for o in (a, b))
    assert [(c["folder"], c["seed"], c["top1"]) for c in cells_a] == [
        (c["folder"], c["seed"], c["top1"]) for c in cells_b
    ]


def subprocess_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = "1"
    return env


# ---------------------------------------------------------------------------------------------- shards


def test_the_serial_run_records_each_cells_wall_time_and_device(serial):
    table = json.loads((serial / "results.json").read_text())
    assert len(table["cells"]) == 2 * 3 * 2  # rows x columns x seeds: every cell finished
    record = read_cell_record(serial / "snf-shallow" / "generated-cells")
    assert record["outcome"] == "finished" and record["executor"] == "serial" and not record["resumed"]
    assert record["device"] == "cpu (1 thread)" and record["wall_s"] > 0 and record["host"]
    assert not (serial / "snf-shallow" / "generated-cells" / CELL_LOCK_NAME).exists()  # released at the end


def test_shards_partition_the_cells_and_keep_a_source_with_the_cells_evaluated_from_it(grid):
    suite = load_suite(str(grid[0]))
    plan = plan_suite(suite, RunRequest())

    def slices(count: int) -> list[list[str]]:
        return [
            [p.cell.folder(Path()).as_posix() for p in shard_cells(suite, plan, Shard(k, count))]
            for k in range(1, count + 1)
        ]

    everything = sorted(p.cell.folder(Path()).as_posix() for p in plan)
    for count in (1, 2, 3, 4, 7):
        parts = slices(count)
        assert sorted(f for part in parts for f in part) == everything  # disjoint, and every cell once
        assert slices(count) == parts  # deterministic
        for planned in (p for p in plan if p.cell.task.train_from):
            source = suite.source_cell(planned.cell).folder(Path()).as_posix()
            assert [planned.cell.folder(Path()).as_posix() in part for part in parts] == [
                source in part for part in parts
            ]
    assert [len(part) for part in slices(2)] == [4, 2]  # (shapes + the task evaluated from it) per row, cells
    assert Shard.parse(" 2/8 ") == Shard(2, 8)
    for bad in ("0/2", "3/2", "2", "a/b", "1/0"):
        with pytest.raises(SettingsError, match="--shard"):
            Shard.parse(bad)


def test_shards_run_one_after_the_other_then_merged_give_the_serial_table(grid, serial, tmp_path, capsys):
    out = tmp_path / "out"
    assert bench(out, grid[1], "--shard", "1/2") == 0
    first = capsys.readouterr().out
    assert "shard 1/2: 4 of the 6 cells" in first
    partial = json.loads((out / "results.json").read_text())
    assert len(partial["cells"]) == 4 * 2  # the table of what is on disk so far: this shard's cells, 2 seeds each
    assert bench(out, grid[1], "--shard", "2/2") == 0
    second = capsys.readouterr().out
    assert "shard 2/2: 2 of the 6 cells" in second and "finished, skipped" not in second  # disjoint
    for name in TABLES:
        (out / name).unlink()
    assert main(["bench", "--merge", "--out", str(out)]) == 0  # the grid from results.json: --out alone
    merged = capsys.readouterr().out
    assert ": training" not in merged and "6 cells: 6 finished, 0 running, 0 failed, 0 pending" in merged
    same_table(out, serial)
    assert read_cell_record(out / "snf-shallow" / "generated-cells")["executor"] == "serial, shard 2/2"
    assert bench(out, grid[1]) == 0  # a plain rerun over the folder merges too, training nothing
    assert capsys.readouterr().out.count("finished, skipped") == 6
    same_table(out, serial)


def test_a_killed_shard_resumes_and_gives_the_serial_numbers(grid, serial, tmp_path, capsys):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "snftune", "bench", *grid[1], "--out", str(out), "--shard", "1/2"]
    process = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None and not list(out.glob("*/*/seed*/metrics.json")):
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)  # as soon as the first run has finished: inside its cell
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    assert list(out.glob(f"*/*/{CELL_LOCK_NAME}"))  # the lock of the cell it was killed in, left behind
    status = grid_status(recorded_suite(out), out)
    assert status.counts()["running"] == 0  # a dead process's lock is not a running cell
    assert status.counts()["finished"] + status.counts()["pending"] == 6

    assert bench(out, grid[1], "--shard", "1/2") == 0  # the same command again
    log = capsys.readouterr().out
    assert "linear / generated/shapes: resuming" in log or "linear / generated/shapes: finished, skipped" in log
    assert bench(out, grid[1], "--shard", "2/2") == 0
    same_table(out, serial)


# ------------------------------------------------------------------------------------ locks and status


def test_a_cell_that_another_process_runs_is_skipped_and_not_run_twice(grid, tmp_path, capsys):
    out = tmp_path / "out"
    only = ["--methods", "linear", "--tasks", "Cells"]
    held = out / "linear" / "generated-cells"
    with cell_lock(held):  # as another shard running this cell would
        assert bench(out, grid[1], *only) == 0
        log = capsys.readouterr().out
        assert "skipped, another process runs it" in log and f"process {os.getpid()}" in log
        assert not list(held.glob("seed*/metrics.json")) and not (held / ERROR_LOG_NAME).exists()
        assert grid_status(recorded_suite(out), out).counts() == {
            "finished": 0,
            "running": 1,
            "failed": 0,
            "pending": 0,
        }
    assert bench(out, grid[1], *only) == 0
    assert len(list(held.glob("seed*/metrics.json"))) == 2


def test_status_counts_finished_running_failed_and_pending_cells(serial, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(serial, out)
    evaluated = next(p.name for p in (out / "linear").iterdir() if p.name.startswith("folder"))
    running = out / "linear" / evaluated
    (running / "seed1" / "metrics.json").unlink()
    started = out / "linear" / "generated-cells"  # pending, one seed done, and a lock its dead writer left
    (started / "seed1" / "metrics.json").unlink()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (started / CELL_LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    failed = out / "snf-shallow" / "generated-cells"
    (failed / "seed1" / "metrics.json").unlink()
    (failed / ERROR_LOG_NAME).write_text("Traceback ...\n")
    shutil.rmtree(out / "snf-shallow" / "generated-shapes")  # pending, not started
    shutil.rmtree(out / "snf-shallow" / evaluated)
    with cell_lock(running):
        assert main(["bench", "--status", "--out", str(out)]) == 0  # the grid from results.json
    text = capsys.readouterr().out
    assert text.splitlines()[0] == (
        f"{out}: 6 cells: 1 finished, 1 running, 1 failed, 3 pending (1 of them started: a rerun resumes them)"
    )
    assert "linear / folder:" in text and f"(process {os.getpid()} on {socket.gethostname()} since" in text
    assert f"snf-shallow / generated/cells  {failed / ERROR_LOG_NAME}" in text
    slowest = text.split("slowest finished cells:\n")[1].splitlines()
    assert len(slowest) == 1 and "linear / generated/shapes  on cpu (1 thread), serial on" in slowest[0]


def test_bench_options_for_scale_are_checked_before_anything_runs(grid, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert bench(out, grid[1], "--shard", "3/2") == 2
    assert "--shard 3/2: K must be between 1 and N" in capsys.readouterr().err
    assert bench(out, grid[1], "--ray-address", "auto") == 2
    assert "--ray-address go with --executor ray" in capsys.readouterr().err
    assert main(["bench", "--status", "--out", str(out)]) == 2
    assert "holds no results.json" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as where Ray is not installed
    assert bench(out, grid[1], "--executor", "ray") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("snftune bench: error: Ray is not installed")
    assert "pip install 'snftune[ray]'" in err
    assert 'pip install -e ".[ray]"' in err
    assert not out.exists()


# ------------------------------------------------------------------------------------------------- Ray


def ray_or_skip():
    try:
        import ray
    except ImportError:
        pytest.skip('Ray is not installed (pip install -e ".[ray]"); the Ray executor is not tested here')
    return ray


def test_ray_starts_locally_reports_a_failed_cell_with_its_log_and_finishes_the_others(grid, tmp_path, capsys):
    """No address and no connection: the executor starts Ray on this machine and stops it at the end."""
    ray = ray_or_skip()
    assert not ray.is_initialized()
    suite = yaml.safe_load(grid[0].read_text())
    broken = tmp_path / "broken"
    shutil.copytree(suite["tasks"][2]["data"].split(":", 1)[1], broken)
    next((broken / "test").rglob("*.png")).write_bytes(b"not a png")  # fails when evaluated, in the Ray task
    suite["tasks"][2] = {"data": f"folder:{broken}", "column": "Broken", "train_from": "generated/shapes"}
    suite["methods"], suite["seeds"] = ["linear"], [0]
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    out = tmp_path / "out"
    args = ["--suite", str(tmp_path / "suite.yaml"), "--workers", "0", "--no-progress", "--executor", "ray"]
    assert bench(out, args) == 1
    text = capsys.readouterr().out
    error_log = next((out / "linear").glob("folder*")) / ERROR_LOG_NAME
    assert "FAILED: UnreadableImageError: cannot decode image" in text and f"(traceback in {error_log})" in text
    assert "1 cell(s) failed" in text and "UnreadableImageError" in error_log.read_text()
    assert (out / "linear" / "generated-shapes" / "seed0" / "metrics.json").is_file()
    assert (out / "linear" / "generated-cells" / "seed0" / "metrics.json").is_file()
    assert read_cell_record(out / "linear" / "generated-cells")["executor"] == "ray"
    assert not ray.is_initialized()  # stopped at the end


@pytest.fixture(scope="module")
def ray_cluster():
    """A running Ray cluster with 2 CPUs, started by the test (as ``ray start --head --num-cpus 2``
    would), that the bench joins with --ray-address."""
    ray_or_skip()
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "include_dashboard": False, "object_store_memory": 200 * 2**20},
    )
    yield cluster.address
    cluster.shutdown()


def test_ray_on_a_running_cluster_gives_the_serial_table(ray_cluster, grid, serial, tmp_path, capsys):
    ray = ray_or_skip()
    out = tmp_path / "out"
    assert bench(out, grid[1], "--executor", "ray", "--ray-address", ray_cluster) == 0
    assert "Ray: 6 cell(s) as tasks on 2 CPU(s), 0 GPU(s); each cell takes 1 CPU(s)" in capsys.readouterr().out
    same_table(out, serial)
    records = [read_cell_record(cell) for cell in out.glob("*/*") if cell.is_dir()]
    assert len(records) == 6 and all(r["executor"] == "ray" and r["device"] == "cpu (1 thread)" for r in records)
    assert not ray.is_initialized()  # the driver left; the cluster goes on
