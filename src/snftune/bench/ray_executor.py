"""``snftune bench --executor ray``: the cells of a grid as Ray tasks, on one machine or a cluster.

Ray schedules, not us: each cell is one task that asks for one GPU where the cluster has GPUs
(else ``cpus_per_cell`` CPUs, with as many torch threads inside the task), so Ray runs as many
cells at once as there is room for, on whichever node has it. A task runs its cell with the
serial runner's own function (:func:`~snftune.bench.runner.run_planned_cell`: cell lock, resume,
``error.log``, ``cell.json``) in the shared ``--out`` folder, which every node must see at the
same path, and returns the outcome to the driver; the driver logs it and rewrites the tables as
cells end, so a partial table is always on disk. A cell evaluated with another cell's weights
(``train_from``) takes the source's task as an argument, so Ray starts it once the source has
ended.

Ray is an optional dependency (``pip install -e ".[ray]"``); importing this module does not
import Ray, :func:`import_ray` does, and says how to install it when it is missing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_text
from ..errors import MissingExtraError
from ..runs import RunRequest
from .runner import ERROR_LOG_NAME, CellOutcome, CellReport, PlannedCell, run_planned_cell
from .suites import Suite

__all__ = ["INSTALL_HINT", "RayExecutor", "RayUnavailableError", "import_ray"]

INSTALL_HINT = 'pip install -e ".[ray]"'
"""How to install the 'ray' extra in a checkout of the repository."""


class RayUnavailableError(MissingExtraError, RuntimeError):
    """Ray is not installed in this environment."""

    package = "Ray"
    used_by = "--executor ray"
    extra = "ray"


def import_ray() -> Any:
    """The ``ray`` module, or :class:`RayUnavailableError` saying how to install it."""
    try:
        import ray
    except ImportError as error:
        raise RayUnavailableError(f"{error}; in a checkout of snftune: {INSTALL_HINT}") from None
    return ray


class RayExecutor:
    """Runs cells as Ray tasks.

    ``address``: ``"auto"`` (the cluster ``ray start`` made on this machine) or ``HOST:PORT``
    joins a running cluster; None starts Ray on this machine for the grid and stops it at the
    end (``num_cpus``: how many CPUs it may use, default all). When this process is already
    connected to Ray (a notebook, a test), that connection is used and left open.
    ``cpus_per_cell``: CPUs Ray reserves for each cell, and the torch threads the cell uses.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        cpus_per_cell: int = 1,
        num_cpus: int | None = None,
        log: Callable[[str], None] = print,
    ):
        if cpus_per_cell < 1:
            raise ValueError(f"cpus_per_cell must be >= 1, got {cpus_per_cell}")
        self.address = address
        self.cpus_per_cell = cpus_per_cell
        self.num_cpus = num_cpus
        self.log = log

    def run(
        self,
        suite: Suite,
        cells: list[tuple[str, PlannedCell]],
        out: Path,
        overrides: RunRequest,
        report: CellReport,
    ) -> None:
        if not cells:
            return
        ray = import_ray()
        connected_here = not ray.is_initialized()
        if connected_here:
            os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # cells' progress lines look alike; keep each one
            if self.address:
                ray.init(address=self.address, log_to_driver=True)
            else:
                ray.init(address="local", num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=True)
        try:
            self._run(ray, suite, cells, out, overrides, report)
        finally:
            if connected_here:
                ray.shutdown()  # stops a Ray started here; only disconnects from a cluster that was joined

    def _run(
        self,
        ray: Any,
        suite: Suite,
        cells: list[tuple[str, PlannedCell]],
        out: Path,
        overrides: RunRequest,
        report: CellReport,
    ) -> None:
        resources = ray.cluster_resources()
        use_gpus = resources.get("GPU", 0) >= 1 and not str(overrides.get("device") or "").startswith("cpu")
        options: dict[str, Any] = {"num_cpus": self.cpus_per_cell, "max_retries": 0}
        if use_gpus:
            options["num_gpus"] = 1
        self.log(
            f"Ray: {len(cells)} cell(s) as tasks on {resources.get('CPU', 0):g} CPU(s), {resources.get('GPU', 0):g} "
            f"GPU(s); each cell takes {'1 GPU and ' if use_gpus else ''}{self.cpus_per_cell} CPU(s)"
        )
        task = ray.remote(_run_cell_task).options(**options)
        shared = ray.put((suite, out, overrides))  # sent to the object store once, not once per cell
        by_folder: dict[Path, Any] = {}
        pending: dict[Any, tuple[str, PlannedCell]] = {}
        for label, planned in cells:
            after = []
            if planned.cell.task.train_from:
                source = suite.source_cell(planned.cell).folder(out)
                after = [by_folder[source]] if source in by_folder else []
            ref = task.remote(shared, planned, label, self.cpus_per_cell, *after)
            by_folder[planned.cell.folder(out)] = ref
            pending[ref] = (label, planned)
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            label, planned = pending.pop(ref)
            try:
                outcome = ray.get(ref)
            except Exception as error:  # the task died (worker killed, node lost) or its source's did
                outcome = _lost(planned.cell.folder(out), error)
            report(label, planned, outcome)


def _run_cell_task(
    shared: tuple[Suite, Path, RunRequest], planned: PlannedCell, label: str, threads: int, *after: CellOutcome
) -> CellOutcome:
    """One cell in a Ray worker. ``after``: the outcomes of the cells it is evaluated from (only
    there so that Ray starts this task once they have ended)."""
    suite, out, overrides = shared
    torch.set_num_threads(threads)
    return run_planned_cell(suite, planned, out, label, overrides=overrides, log=_print, executor="ray")


def _print(line: str) -> None:
    print(line, flush=True)  # Ray forwards a worker's output to the driver, prefixed with the task and pid


def _lost(folder: Path, error: BaseException) -> CellOutcome:
    """A cell whose task never returned: its ``error.log`` holds what Ray said."""
    error_log = folder / ERROR_LOG_NAME
    atomic_write_text(error_log, f"the Ray task of this cell did not return:\n{error}\n")
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return CellOutcome(folder, CellOutcome.FAILED, message=f"{type(error).__name__}: {first}", log=error_log)
