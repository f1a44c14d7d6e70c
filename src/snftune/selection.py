"""Hyper-parameters chosen on validation only, then final runs over several seeds.

A *cell* (one method on one task) with a search space runs every trial on the task's tuning
pair (VTAB-1k: train800 -> val200; FGVC, few-shot: train -> val; folders: train -> val), keeps
the values with the best validation top-1 (ties: the first trial in the listed order), then
trains on the final split (VTAB-1k: train800val200) with those values once per seed and
reports top-1 on the evaluation split (test). Trials build only the tuning splits, so the test
split is not opened before the choice is made.

Folder of a cell::

    <cell>/selection/<trial>/     one run folder per trial (validation top-1 in its metrics.json)
    <cell>/selection.json         the space, every trial's score, the chosen values
    <cell>/                       the final run, when no seeds are given
    <cell>/seed<s>/               one final run per seed, with --seeds

Everything resumes: finished trials and seeds are skipped, interrupted ones continue.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import atomic_write_json
from .engine import DistInfo, read_metrics
from .inputs import DamagedFileError, read_json_record
from .runs import (
    CONFIG_NAME,
    ResolvedRun,
    SettingsError,
    final_folders,
    merge_layers,
    read_run_config,
    resolve_settings,
    run_state,
    train_run,
)

__all__ = [
    "SEARCHABLE",
    "SELECTION_NAME",
    "SearchSpace",
    "SelectionPlan",
    "read_selection",
    "trial_label",
]

SELECTION_NAME = "selection.json"
SEARCHABLE = (
    "lr",
    "weight_decay",
    "epochs",
    "warmup_epochs",
    "warmup_lr",
    "min_lr",
    "batch_size",
    "label_smoothing",
    "mixup",
    "cutmix",
    "grad_clip",
    "drop_path",
)
"""Settings a search may vary: the optimiser, schedule and regularisation numbers."""


@dataclass(frozen=True)
class SearchSpace:
    """Values to try per setting, in the order given; trials are their product (the first
    setting varies slowest)."""

    values: tuple[tuple[str, tuple[float, ...]], ...]

    @classmethod
    def parse(cls, data: Any, source: str = "search") -> SearchSpace:
        """From ``{"lr": [1e-3, 5e-3], "weight_decay": [1e-4]}``; every problem is named."""
        if not isinstance(data, dict) or not data:
            raise SettingsError(f"{source} must map settings to lists of values, e.g. {{lr: [0.001, 0.005]}}")
        parsed = []
        for key, options in data.items():
            if key not in SEARCHABLE:
                raise SettingsError(
                    f"{source}: '{key}' cannot be searched; searchable settings: {', '.join(SEARCHABLE)}"
                )
            if not isinstance(options, list | tuple) or not options:
                raise SettingsError(f"{source}: '{key}' needs a non-empty list of values, got {options!r}")
            for value in options:
                if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                    raise SettingsError(f"{source}: '{key}' values must be finite numbers, got {value!r}")
            if len(set(options)) != len(options):
                raise SettingsError(f"{source}: '{key}' lists a value twice: {list(options)}")
            parsed.append((str(key), tuple(options)))
        return cls(tuple(parsed))

    def to_dict(self) -> dict[str, list[float]]:
        return {key: list(options) for key, options in self.values}

    def trials(self) -> list[dict[str, float]]:
        keys = [key for key, _ in self.values]
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(o for _, o in self.values))]


def trial_label(values: dict[str, float]) -> str:
    """A folder name for a trial, e.g. ``lr-0.001_weight_decay-0.0001``."""
    return "_".join(f"{key}-{re.sub(r'[^0-9a-zA-Z.+-]', '', format(value, 'g'))}" for key, value in values.items())


@dataclass(frozen=True)
class SelectionPlan:
    """Runs that choose hyper-parameters, then train: trials of ``space`` on the tuning pair (none
    without a space), then one final run per seed with the chosen values (one run in the folder
    itself without seeds). ``values``: the run's settings (suite, file and command line). A
    :class:`snftune.runs.Plan`."""

    values: dict[str, Any]
    space: SearchSpace | None = None
    seeds: tuple[int, ...] | None = None

    def final_values(self, chosen: dict[str, float], seed: int | None) -> dict[str, Any]:
        values = merge_layers(self.values, chosen)[0]
        if seed is not None:
            values["seed"] = seed
        return values

    def trial_values(self, resolved: ResolvedRun, trial: dict[str, float]) -> dict[str, Any]:
        train_split, eval_split = _tuning_splits(resolved)
        values = merge_layers(self.values, trial, {"train_split": train_split, "eval_split": eval_split})[0]
        if self.seeds:
            values["seed"] = self.seeds[0]
        return values

    def check(self) -> ResolvedRun:
        """The base run and every trial resolved (a trial the settings refuse fails now)."""
        resolved = resolve_settings(self.values)
        for trial in self.space.trials() if self.space else ():
            resolve_settings(self.trial_values(resolved, trial))
        return resolved

    def state(self, folder: Path) -> str:
        """``"done"`` when every final run has finished, ``"resume"`` when anything was started, else ``"todo"``."""
        states = [run_state(f) for f in final_folders(folder, self.seeds)]
        if all(state == "done" for state in states):
            return "done"
        started = any(state != "todo" for state in states) or (folder / SELECTION_DIR).is_dir()
        return "resume" if started else "todo"

    def differences(self, folder: Path) -> list[str]:
        return _differences(self, folder)

    def run(
        self, folder: Path, dist: DistInfo | None = None, log: Callable[[str], None] = print
    ) -> list[dict[str, Any]]:
        return _run(self, folder, dist, log)


SELECTION_DIR = "selection"


def _tuning_splits(resolved: ResolvedRun) -> tuple[str, str]:
    task = resolved.task
    if task.tuning_splits is None:
        raise SettingsError(
            f"{task.name} has no validation split (splits: {', '.join(task.splits)}): hyper-parameter selection "
            "needs one, e.g. a val/ folder or a val list beside train; without a search space the run needs none"
        )
    return task.tuning_splits


SELECTION_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "space": dict,
    "chosen": dict,
    "chosen_val_top1": (int, float),
    "selected_on": str,
    "trials": list,
}


def read_selection(folder: Path) -> dict[str, Any] | None:
    """The cell's ``selection.json`` (None when it has none), its shape checked: a damaged one is
    one line naming it (delete it, and the trials' finished runs are read again to choose)."""
    path = folder / SELECTION_NAME
    if not path.is_file():
        return None
    recover = "delete it and rerun: the finished trials are reused and the choice made again"
    record = read_json_record(path, SELECTION_SCHEMA, recover=recover)
    for trial in record["trials"]:
        if (
            not isinstance(trial, dict)
            or not isinstance(trial.get("values"), dict)
            or not isinstance(trial.get("val_top1"), int | float)
        ):
            raise DamagedFileError(f"{path} is damaged (a trial reads {trial!r}); {recover}")
    return record


def _differences(plan: SelectionPlan, folder: Path) -> list[str]:
    """How the runs already in ``folder`` differ from what ``plan`` asks for (empty: reusable)."""
    resolved = resolve_settings(plan.values)
    recorded = read_selection(folder)
    if recorded is not None and plan.space is None:
        return [f"search space: {recorded.get('space')} -> none"]
    if recorded is not None and recorded.get("space") != plan.space.to_dict():
        return [f"search space: {recorded.get('space')} -> {plan.space.to_dict()}"]
    runs: list[tuple[Path, dict[str, Any]]] = []
    if plan.space is not None:
        trials = plan.space.trials()
        runs += [(folder / SELECTION_DIR / trial_label(t), plan.trial_values(resolved, t)) for t in trials]
    chosen = recorded["chosen"] if recorded is not None else {}
    seeds = plan.seeds or (None,)
    runs += [
        (run, plan.final_values(chosen, seed))
        for seed, run in zip(seeds, final_folders(folder, plan.seeds), strict=True)
    ]
    found = []
    for run, values in runs:
        if (run / CONFIG_NAME).is_file():
            differences = resolve_settings(values).settings.differences(read_run_config(run))
            found += [f"{run.relative_to(folder)}: {d}" if run != folder else d for d in differences]
    return found


def _select(
    plan: SelectionPlan, resolved: ResolvedRun, folder: Path, dist: DistInfo, log: Callable[[str], None]
) -> dict[str, float]:
    """Runs every trial on the tuning pair and returns the chosen values (written to selection.json)."""
    trials = []
    space = plan.space.trials()
    for index, trial in enumerate(space, 1):
        run = folder / SELECTION_DIR / trial_label(trial)
        trial_run = resolve_settings(plan.trial_values(resolved, trial))
        state = run_state(run)
        if state != "done":
            doing = "resuming" if state == "resume" else "training"
            log(f"  trial {index}/{len(space)} {trial_label(trial)} on {trial_run.settings.train_split}: {doing}")
            train_run(trial_run, run, state == "resume", dist)
        metrics = read_metrics(run)
        trials.append(
            {
                "values": trial,
                "val_top1": metrics["top1"],
                "split": metrics["eval_split"],
                "run": str(run.relative_to(folder)),
            }
        )
    best = max(range(len(trials)), key=lambda i: (trials[i]["val_top1"], -i))  # ties: the first listed
    chosen = trials[best]["values"]
    record = {
        "space": plan.space.to_dict(),
        "tuning_splits": list(_tuning_splits(resolved)),
        "selected_on": trials[best]["split"],
        "trials": trials,
        "chosen": chosen,
        "chosen_val_top1": trials[best]["val_top1"],
        "base": resolved.settings.to_dict(),
        "rule": "the best validation top-1; ties go to the first trial in the listed order",
    }
    if dist.is_main:
        atomic_write_json(folder / SELECTION_NAME, record)
    log(f"  chosen on {trials[best]['split']}: {trial_label(chosen)} (val top-1 {trials[best]['val_top1']:.2f})")
    return chosen


def _run(plan: SelectionPlan, folder: Path, dist: DistInfo | None, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Selection (when the plan has a space), then the final run per seed; returns their metrics.

    Runs already in ``folder`` are reused only when made with the plan's settings; otherwise
    the cell is refused, naming the differences.
    """
    dist = dist or DistInfo()
    resolved = resolve_settings(plan.values)
    differences = plan.differences(folder) if folder.is_dir() else []
    if differences:
        raise SettingsError(
            f"{folder} holds runs made with other settings ({'; '.join(differences[:4])}); use another folder"
        )
    chosen = _select(plan, resolved, folder, dist, log) if plan.space is not None else {}
    results = []
    for seed, run in zip(plan.seeds or (None,), final_folders(folder, plan.seeds), strict=True):
        state = run_state(run)
        if state != "done":
            if plan.seeds:
                log(f"  seed {seed}: {'resuming' if state == 'resume' else 'training'}")
            train_run(resolve_settings(plan.final_values(chosen, seed)), run, state == "resume", dist)
        results.append(read_metrics(run))
    return results
