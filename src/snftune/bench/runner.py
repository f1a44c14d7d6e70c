"""Runs a suite's grid: every cell's settings are resolved and checked before any training,
then each cell is trained (or evaluated with the weights of the cell it names in
``train_from``) in its own run folder. Finished cells are skipped, interrupted ones resumed,
and the tables are rewritten after every cell, so a partial table is always on disk.

``snftune bench`` and ``snftune demo`` both run suites through :func:`run_suite`. Where the
cells run is an executor's business (:class:`CellExecutor`): one after the other in this
process (:class:`SerialExecutor`, the default, also under torchrun), or as Ray tasks
(:mod:`snftune.bench.ray_executor`). Wherever it runs, a cell is run by
:func:`run_planned_cell`, and its outcome comes back to :func:`run_suite`, which logs it and
rewrites the tables.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ..atomic import atomic_write_json, atomic_write_text
from ..engine import METRICS_NAME, TUNED_NAME, DistInfo, Metrics, RunLockedError, read_metrics
from ..engine.distributed import broadcast_object
from ..nas.noah import NoahPlan, plan_noah
from ..runs import (
    Plan,
    RunRequest,
    RunSpec,
    SettingsError,
    evaluate_tuned,
    final_folders,
    known_keys,
    merge_layers,
    read_run_config,
    run_state,
)
from ..selection import SearchSpace, SelectionPlan
from .suites import Cell, Suite
from .tables import write_tables
from .tracking import cell_lock, cell_record, write_cell_record

__all__ = [
    "ERROR_LOG_NAME",
    "CellExecutor",
    "CellFailure",
    "CellOutcome",
    "PlannedCell",
    "SerialExecutor",
    "cell_request",
    "cell_results",
    "changed_cells",
    "is_noah_search",
    "plan_cell",
    "plan_suite",
    "run_planned_cell",
    "run_suite",
    "set_aside",
    "state_of",
    "weights_by_backbone",
]

ERROR_LOG_NAME = "error.log"


@dataclass(frozen=True)
class PlannedCell:
    """A cell with its runs (None for a cell evaluated with another cell's weights)."""

    cell: Cell
    plan: Plan | None


SIZE_OPTIONS = ("subnet", "prompt", "lora", "adapter")


def is_noah_search(request: RunRequest) -> bool:
    """Method ``noah`` with nothing that fixes its sizes: the sizes are to be searched."""
    options = request.get("method_options") or {}
    return request.get("method") == "noah" and not any(key in options for key in SIZE_OPTIONS)


def plan_cell(
    request: RunRequest, space: SearchSpace | None, seeds: tuple[int, ...] | None, checked: bool = True
) -> Plan:
    """A cell's plan: NOAH's pipeline for method ``noah`` without sizes (its settings checked now,
    before anything trains, unless ``checked`` is False: ``--status`` reads only the folder), else
    selection (when there is a space) and the final runs. A NOAH cell's method options hold
    NOAH's settings (``param_limit``, ``population``, ..., ``supernet: {...}``); its retrained
    subnet is the cell's final run, so tables read it like any other."""
    if is_noah_search(request):
        return plan_noah(request, seeds, space) if checked else NoahPlan(request, seeds)
    plan = SelectionPlan(request, space, seeds)
    if checked:
        plan.check()
    return plan


@dataclass(frozen=True)
class CellFailure:
    label: str
    error: str
    """``Type: message`` of what failed (the traceback is in ``log``)."""
    log: Path


def cell_request(
    suite: Suite, cell: Cell, overrides: RunRequest, pretrained: str | None = None
) -> tuple[RunRequest, list[str]]:
    """One cell's run as asked for: the suite's settings, then the overrides (a settings file and
    the command line), merged by :func:`snftune.runs.merge_layers` (a changed length scales the
    warm-up), with ``pretrained`` (None: the suite's weights for the backbone); and the notes on
    its derived settings."""
    suite_values = {
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
    values, notes = merge_layers(suite_values, dict(overrides.given), names=(f"suite {suite.name}",))
    request = RunRequest(values)
    return (request if pretrained is None else request.replacing(pretrained=pretrained)), notes


def _split_weights_item(item: str) -> tuple[str | None, str]:
    """``LABEL=FILE`` -> (label, file); a bare file or hub tag -> (None, item). A path that exists
    is a file even when its name holds ``=``."""
    label, sep, path = item.partition("=")
    if not sep or Path(item).expanduser().exists() or not label:
        return None, item
    return label, path


def weights_by_backbone(suite: Suite, pretrained: list[str] | None) -> dict[str, str | None]:
    """Backbone label -> weights: the suite's own, replaced by one file (or hub tag) for every
    backbone, or by ``LABEL=FILE`` pairs (labels or timm names of the suite's backbones). A label
    that names no backbone, two files for one backbone, or a bare file beside pairs is refused."""
    chosen = {model.label: model.pretrained for model in suite.models}
    items = [_split_weights_item(item) for item in pretrained or []]
    bare = [path for label, path in items if label is None]
    pairs = [(label, path) for label, path in items if label is not None]
    if bare and (pairs or len(bare) > 1):
        raise SettingsError(
            f"--pretrained {' '.join(pretrained or [])}: give one file for every backbone, or LABEL=FILE pairs "
            f"(labels: {', '.join(chosen)})"
        )
    if bare:
        return dict.fromkeys(chosen, bare[0])
    given: dict[str, str] = {}
    for label, path in pairs:
        matches = [m.label for m in suite.models if label in (m.label, m.model)]
        if not matches:
            raise SettingsError(
                f"--pretrained {label}={path}: {label!r} names no backbone of suite {suite.name}; "
                f"its backbones: {', '.join(f'{m.label} ({m.model})' for m in suite.models)}"
            )
        for match in matches:
            if match in given and given[match] != path:
                raise SettingsError(f"--pretrained gives two files for {match}: {given[match]} and {path}; give one")
            given[match] = path
    return {**chosen, **given}


def plan_suite(
    suite: Suite,
    overrides: RunRequest,
    pretrained: list[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[PlannedCell]:
    """Every cell with its resolved settings: unknown methods, tasks or settings fail here,
    before any cell trains. ``log`` hears each note on derived settings (a scaled warm-up) once."""
    unknown = sorted(set(suite.train) - set(known_keys()))
    if unknown:
        raise SettingsError(
            f"suite {suite.name}: unknown setting(s) {unknown} under 'train'; known: {', '.join(known_keys())}"
        )
    if not suite.methods:
        raise SettingsError(f"suite {suite.name} lists no methods; pass --methods")
    weights = weights_by_backbone(suite, pretrained)
    said: set[str] = set()
    planned = []
    for cell in suite.cells():
        if cell.task.train_from:
            planned.append(PlannedCell(cell, None))
            continue
        request, notes = cell_request(suite, cell, overrides, weights[cell.model.label])
        seeds = tuple(suite.seeds) if suite.seeds else None
        plan = plan_cell(request, suite.search_space(cell.method), seeds)
        resolved = plan.check()
        for note in (*notes, *resolved.notes):
            if log is not None and note not in said:
                said.add(note)
                log(note)
        planned.append(PlannedCell(cell, plan))
    return planned


def state_of(suite: Suite, planned: PlannedCell, out: Path) -> str:
    """``done``, ``resume`` or ``todo`` for any cell."""
    folder = planned.cell.folder(out)
    if planned.plan is not None:
        return planned.plan.state(folder)
    states = [run_state(f) for f in final_folders(folder, tuple(suite.seeds) if suite.seeds else None)]
    return "done" if all(s == "done" for s in states) else "todo"


def changed_cells(suite: Suite, plan: list[PlannedCell], out: Path) -> dict[Path, list[str]]:
    """Cells whose folder holds runs made with other settings than the plan's: folder -> the
    differences. A cell evaluated with another cell's weights changes with that cell."""
    changed: dict[Path, list[str]] = {}
    for planned in plan:
        folder = planned.cell.folder(out)
        if planned.plan is not None and folder.is_dir():
            differences = planned.plan.differences(folder)
            if differences:
                changed[folder] = differences
    for planned in plan:
        folder = planned.cell.folder(out)
        if planned.plan is None and folder.is_dir():
            source = suite.source_cell(planned.cell).folder(out)
            if source in changed:
                changed[folder] = [f"evaluated with the weights of {source.relative_to(out)}, which change"]
    return changed


def set_aside(folder: Path) -> Path:
    """Renames a cell's old run to ``<folder>.previous-N`` (nothing is deleted)."""
    index = 1
    while (target := folder.with_name(f"{folder.name}.previous-{index}")).exists():
        index += 1
    folder.rename(target)
    return target


def _summary(metrics: dict[str, Any]) -> str:
    top1 = "–" if metrics.get("top1") is None else f"{metrics['top1']:6.2f}%"
    text = f"top-1 {top1}  {metrics.get('tuned_parameters') or 0:>9,} tuned"
    timing = metrics.get("timing")
    return text + (f"  {timing['train_s']:5.1f}s" if timing else "")


def run_suite(
    suite: Suite,
    plan: list[PlannedCell],
    out: Path,
    *,
    overrides: RunRequest | None = None,
    dist: DistInfo | None = None,
    log: Callable[[str], None] = print,
    rerun_changed: bool = False,
    executor: CellExecutor | None = None,
) -> list[CellFailure]:
    """Runs the planned cells in ``out`` and returns the cells that failed.

    A cell whose folder holds a run with other settings is never reused silently: the whole
    grid is refused, naming the cells and the differences, unless ``rerun_changed``, which
    sets the old runs aside (``<cell>.previous-N``) and runs those cells again. A failing
    cell does not stop the others (its traceback goes to ``<cell folder>/error.log``), except
    under DDP, where every rank must stay in step. A cell that another process is running (its
    cell lock is live: another shard, another job on the same ``--out``) is skipped and logged.

    ``executor``: where the cells run (default: :class:`SerialExecutor`, one after the other
    here). ``plan`` may be a slice of the suite's cells (``--shard``); the tables are always of
    the whole suite, from what is on disk.
    """
    dist = dist or DistInfo()
    overrides = overrides if overrides is not None else RunRequest()
    changed = changed_cells(suite, plan, out)
    if changed and not rerun_changed:
        listed = [f"{folder.relative_to(out)} ({'; '.join(diffs)})" for folder, diffs in list(changed.items())[:8]]
        more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
        raise SettingsError(
            f"{len(changed)} finished or started cell(s) in {out} were run with other settings: "
            + ", ".join(listed)
            + more
            + ". Pass --rerun-changed to set them aside and run them again, or use another --out"
        )
    if dist.is_main:
        for folder in changed:
            log(f"{folder.relative_to(out)}: settings changed, previous run moved to {set_aside(folder).name}")
    failures: list[CellFailure] = []

    def report(label: str, planned: PlannedCell, outcome: CellOutcome) -> None:
        if not dist.is_main:
            return
        if outcome.status == CellOutcome.FAILED:
            failures.append(CellFailure(label, outcome.message or "", outcome.log))
            log(f"{label}: FAILED: {outcome.message} (traceback in {outcome.log})")
        elif outcome.status == CellOutcome.LOCKED:
            log(f"{label}: skipped, another process runs it: {outcome.message}")
        elif outcome.status == CellOutcome.ALREADY_DONE:
            log(f"{label}: finished, skipped")
        else:
            for metrics in outcome.results:
                log(f"{label}: {_summary(metrics)}")
            write_tables(suite, out)

    if dist.is_main:
        write_tables(suite, out)  # on disk from the start, with the suite it is of (for --status and --merge)
    todo = []
    for index, planned in enumerate(plan, 1):
        label = f"[{index}/{len(plan)}] {planned.cell.row} / {planned.cell.task.data}"
        if broadcast_object(state_of(suite, planned, out)) == "done":
            if dist.is_main:
                log(f"{label}: finished, skipped")
            continue
        todo.append((label, planned))
    (executor or SerialExecutor(dist, log)).run(suite, todo, out, overrides, report)
    if dist.is_main:
        write_tables(suite, out)
    return failures


def _evaluate_from_source(suite: Suite, cell: Cell, out: Path, overrides: RunRequest) -> list[Metrics]:
    """A task evaluated with the weights tuned on another task (domain generalisation), once
    per final run (seed) of that task."""
    seeds = tuple(suite.seeds) if suite.seeds else None
    source_folder = suite.source_cell(cell).folder(out)
    results = []
    for source, target in zip(final_folders(source_folder, seeds), final_folders(cell.folder(out), seeds), strict=True):
        if not (source / TUNED_NAME).is_file():
            raise SettingsError(f"{cell.task.data} is evaluated with the weights of {source}, which has not finished")
        source_metrics = read_metrics(source)
        settings = dataclasses.replace(
            RunSpec.from_record(read_run_config(source)),
            data=cell.task.data,
            eval_split=None,
            data_options={**suite.data_options, **overrides.get("data_options", {})},
        )
        if overrides.get("data_dir"):
            settings = dataclasses.replace(settings, data_dir=overrides.get("data_dir"))
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
            "settings": {**source_metrics.get("settings", {}), "data": result["data"]},
        }
        atomic_write_json(target / METRICS_NAME, metrics)
        results.append(metrics)
    return results


# ---------------------------------------------------------------------------------------------
# The executor seam: one function runs a cell wherever it runs (here, or in a Ray task), and
# executors only decide where and when.


@dataclass(frozen=True)
class CellOutcome:
    """What running one cell came to, sent back to the process that drives the grid."""

    FINISHED = "finished"
    ALREADY_DONE = "already done"
    FAILED = "failed"
    LOCKED = "locked"

    folder: Path
    status: str
    """FINISHED (ran now), ALREADY_DONE (found finished once its lock was held), FAILED, LOCKED
    (another live process runs it)."""
    results: list[Metrics] = field(default_factory=list)
    """The metrics of its final runs (one per seed), when FINISHED."""
    message: str | None = None
    """FAILED: ``Type: message``; LOCKED: who holds the cell."""
    log: Path | None = None
    """FAILED: the ``error.log`` with the traceback."""
    wall_s: float | None = None
    device: str | None = None


CellReport = Callable[[str, PlannedCell, CellOutcome], None]


class CellExecutor(Protocol):
    """Where the cells of a grid run.

    ``run`` runs each ``(label, planned cell)`` with :func:`run_planned_cell` and calls
    ``report(label, planned, outcome)`` in the calling process as each cell ends, in any order.
    A cell evaluated with another cell's weights (``train_from``) must start only after that
    cell has ended; ``cells`` lists sources before the cells that use them.
    """

    def run(
        self,
        suite: Suite,
        cells: list[tuple[str, PlannedCell]],
        out: Path,
        overrides: RunRequest,
        report: CellReport,
    ) -> None: ...


def cell_results(
    suite: Suite,
    planned: PlannedCell,
    out: Path,
    overrides: RunRequest,
    dist: DistInfo,
    log: Callable[[str], None],
) -> list[Metrics]:
    """The work of one cell: its runs (selection, then the final run per seed) or the evaluation
    of another cell's weights; returns the final runs' metrics (none on DDP ranks other than 0
    for an evaluation)."""
    if planned.plan is None:
        return _evaluate_from_source(suite, planned.cell, out, overrides) if dist.is_main else []
    return planned.plan.run(planned.cell.folder(out), dist, log)


def run_planned_cell(
    suite: Suite,
    planned: PlannedCell,
    out: Path,
    label: str,
    *,
    overrides: RunRequest | None = None,
    dist: DistInfo | None = None,
    log: Callable[[str], None] = print,
    executor: str = "serial",
) -> CellOutcome:
    """Runs one cell in this process and says how it went; never raises for the cell's own
    failure (except under DDP, where every rank must stay in step).

    Holds the cell's lock (:mod:`snftune.bench.tracking`) and decides what is left only once it
    holds it, so two processes sharing ``out`` never run a cell twice: a cell held by a live
    process comes back LOCKED, one finished meanwhile ALREADY_DONE. A failure leaves its
    traceback in ``<cell>/error.log``. The wall time, device, host and ``executor`` (a name for
    the record) go to ``<cell>/cell.json``. ``dist``: None for a single process on the local
    device (``overrides.get("device")``, else CUDA when there is one).
    """
    overrides = overrides if overrides is not None else RunRequest()
    dist = dist or _single_process(overrides.get("device"))
    folder = planned.cell.folder(out)
    say = log if dist.is_main else _quiet
    try:
        with _cell_held(folder, dist):
            state = broadcast_object(state_of(suite, planned, out))
            if state == "done":
                return CellOutcome(folder, CellOutcome.ALREADY_DONE)
            say(f"{label}: {'resuming' if state == 'resume' else 'training'}")
            started, clock = time.time(), time.perf_counter()
            try:
                results = cell_results(suite, planned, out, overrides, dist, say)
                status, message, error_log = CellOutcome.FINISHED, None, None
            except RunLockedError:
                raise
            except Exception as error:  # one failing cell must not lose the others
                if dist.enabled:
                    raise
                results, error_log = [], folder / ERROR_LOG_NAME
                atomic_write_text(error_log, traceback.format_exc())
                status, message = CellOutcome.FAILED, f"{type(error).__name__}: {error}"
            wall_s = time.perf_counter() - clock
            record = cell_record(status, started, wall_s, dist.device, executor, resumed=state == "resume")
            if dist.is_main:
                write_cell_record(folder, record)
            return CellOutcome(folder, status, results, message, error_log, wall_s, record["device"])
    except RunLockedError as error:
        return CellOutcome(folder, CellOutcome.LOCKED, message=str(error))


class SerialExecutor:
    """Runs the cells one after the other in this process; under torchrun every rank runs each
    cell together (DDP)."""

    def __init__(self, dist: DistInfo | None = None, log: Callable[[str], None] = print, name: str = "serial"):
        self.dist = dist or DistInfo()
        self.log = log
        self.name = name

    def run(
        self,
        suite: Suite,
        cells: list[tuple[str, PlannedCell]],
        out: Path,
        overrides: RunRequest,
        report: CellReport,
    ) -> None:
        for label, planned in cells:
            outcome = run_planned_cell(
                suite, planned, out, label, overrides=overrides, dist=self.dist, log=self.log, executor=self.name
            )
            report(label, planned, outcome)


def _quiet(line: str) -> None:
    pass


def _single_process(device: str | None) -> DistInfo:
    """One process on ``device`` (None: CUDA when this process sees a GPU, else the CPU)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = torch.device(device)
    if chosen.type == "cuda" and chosen.index is None:
        chosen = torch.device("cuda", torch.cuda.current_device())
    return DistInfo(device=chosen)


@contextlib.contextmanager
def _cell_held(folder: Path, dist: DistInfo) -> Iterator[None]:
    """The cell's lock, taken by the main process; under DDP every rank learns whether it got it."""
    with contextlib.ExitStack() as stack:
        refusal = None
        if dist.is_main:
            try:
                stack.enter_context(cell_lock(folder))
            except RunLockedError as error:
                refusal = str(error)
        refusal = broadcast_object(refusal)
        if refusal is not None:
            raise RunLockedError(refusal)
        yield
