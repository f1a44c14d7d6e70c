"""Where a grid stands, read from its folder alone: ``snftune bench --status`` and ``--merge``.

Every process that runs cells (a serial run, SLURM shards, Ray tasks on other machines) leaves
the same marks in the shared folder, so one look at the folder counts them all:

- *finished*: every final run of the cell has its ``metrics.json``;
- *running*: a live process holds the cell's lock (:mod:`snftune.bench.tracking`); a lock left
  by a killed process does not count;
- *failed*: its last attempt left ``error.log`` and nobody runs it now;
- *pending*: the rest; *started* ones hold runs that a rerun resumes.

The suite is the one given, or the one the folder's ``results.json`` was written for (every
run writes it when it starts), so ``--status --out DIR`` needs nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..inputs import read_json_record
from ..runs import RunRequest
from .runner import ERROR_LOG_NAME, plan_cell
from .suites import Cell, Suite, SuiteError, parse_suite
from .tracking import cell_holder, read_cell_record

__all__ = ["CellStatus", "GridStatus", "STATES", "format_status", "grid_status", "recorded_suite"]

STATES = ("finished", "running", "failed", "pending")


@dataclass(frozen=True)
class CellStatus:
    cell: Cell
    folder: Path
    state: str
    """One of :data:`STATES`."""
    started: bool
    """Pending with runs on disk (a rerun resumes them)."""
    holder: dict[str, Any] | None
    """Running: the lock's ``pid``, ``host`` and ``since``."""
    record: dict[str, Any] | None
    """The cell's ``cell.json`` (wall time, device, executor of its last execution)."""

    @property
    def name(self) -> str:
        return f"{self.cell.row} / {self.cell.task.data}"


@dataclass(frozen=True)
class GridStatus:
    out: Path
    cells: list[CellStatus]

    def counts(self) -> dict[str, int]:
        return {state: sum(c.state == state for c in self.cells) for state in STATES}

    def slowest(self, count: int = 5) -> list[CellStatus]:
        """Finished cells with a recorded wall time, slowest first."""
        timed = [c for c in self.cells if c.state == "finished" and (c.record or {}).get("outcome") == "finished"]
        return sorted(timed, key=lambda c: -c.record["wall_s"])[:count]


def _status_of(suite: Suite, cell: Cell, out: Path) -> CellStatus:
    folder = cell.folder(out)
    seeds = tuple(suite.seeds) if suite.seeds else None
    request = RunRequest({"method": cell.method.method, "method_options": dict(cell.method.options)})
    state = plan_cell(request, None, seeds, checked=False).state(folder)  # the folder alone tells
    holder = cell_holder(folder) if state != "done" else None
    if state == "done":
        label = "finished"
    elif holder is not None:
        label = "running"
    elif (folder / ERROR_LOG_NAME).is_file():
        label = "failed"
    else:
        label = "pending"
    return CellStatus(cell, folder, label, state == "resume", holder, read_cell_record(folder))


def grid_status(suite: Suite, out: Path) -> GridStatus:
    """The state of every cell of ``suite`` in ``out``."""
    return GridStatus(out, [_status_of(suite, cell, out) for cell in suite.cells()])


def recorded_suite(out: Path) -> Suite:
    """The suite that ``out/results.json`` was written for (with the selection of its last run)."""
    path = out / "results.json"
    if not path.is_file():
        raise SuiteError(f"{out} holds no results.json (no grid has run there yet); pass --suite to name the grid")
    recover = "pass --suite to name the grid (a run of it writes results.json again)"
    return parse_suite(read_json_record(path, {"settings": dict}, SuiteError, recover)["settings"], str(path))


def format_status(status: GridStatus, slowest: int = 5) -> str:
    """The counts on one line, then the running, failed and slowest cells."""
    counts = status.counts()
    started = sum(c.started for c in status.cells if c.state == "pending")
    line = f"{status.out}: {len(status.cells)} cells: " + ", ".join(f"{counts[s]} {s}" for s in STATES)
    lines = [line + (f" ({started} of them started: a rerun resumes them)" if started else "")]
    running = [c for c in status.cells if c.state == "running"]
    if running:
        lines.append("running:")
        for c in running:
            pid, host, since = ((c.holder or {}).get(key) for key in ("pid", "host", "since"))
            lines.append(f"  {c.name}  (process {pid} on {host} since {since})")
    failed = [c for c in status.cells if c.state == "failed"]
    if failed:
        lines.append("failed (rerun the same command to retry them):")
        lines += [f"  {c.name}  {c.folder / ERROR_LOG_NAME}" for c in failed]
    timed = status.slowest(slowest)
    if timed:
        lines.append("slowest finished cells:")
        for c in timed:
            record = c.record
            lines.append(
                f"  {record['wall_s']:9.1f} s  {c.name}  on {record.get('device')}, "
                f"{record.get('executor')} on {record.get('host')}"
            )
    return "\n".join(lines) + "\n"
