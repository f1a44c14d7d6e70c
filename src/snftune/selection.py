"""Hyper-parameters chosen on validation only, then final runs over several seeds.

A *cell* (one method on one task) with a search space runs every trial on the task's tuning
pair (VTAB-1k: train800 -> val200; FGVC, few-shot: train -> val; folders: train -> val), keeps
the values with the best validation top-1 (ties: the first trial in the listed order), then
trains on the final split (VTAB-1k: train800val200) with those values once per seed and
reports top-1 on the evaluation split (test). Trials build only the tuning splits, so the test
split is not opened before the choice is made.

A small validation split decides little: :class:`SelectionOptions` let each trial run on
several seeds (``select_seeds``) and/or on K folds of the tuning pair (``select_folds``, the
``folds`` task option of :mod:`snftune.data.folds`), the choice made on the mean. Every
selection says how decided it was (the gap between the best trial and the runner-up, and the
sample std of that gap over seeds/folds, with a warning when the gap is inside it), and a trial
that diverges or whose seeds disagree by more than ``unstable_range`` points is unstable: never
chosen over a stable one.

Folder of a cell::

    <cell>/selection/<trial>/     one run folder per trial (validation top-1 in its metrics.json);
                                  with several seeds or folds, one sub-folder per run:
                                  seed<s>/, fold<k>/ or fold<k>-seed<s>/
    <cell>/selection.json         the space, every trial's scores, the choice and how decided it was
    <cell>/                       the final run, when no seeds are given
    <cell>/seed<s>/               one final run per seed, with --seeds

Everything resumes: finished trials and seeds are skipped, interrupted ones continue; a trial
run that diverged leaves ``diverged.json`` and is not trained again.
"""

from __future__ import annotations

import functools
import itertools
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import atomic_write_json
from .engine import DistInfo, DivergenceError, Metrics, read_metrics
from .inputs import DamagedFileError, read_json_record
from .runs import (
    CONFIG_NAME,
    PLAN_KEYS,
    PLAN_VALUES,
    PicklesFields,
    ResolvedRun,
    RunFailedError,
    RunRequest,
    SettingsError,
    check_given,
    final_folders,
    plan_state,
    read_run_config,
    run_state,
    train_run,
)

__all__ = [
    "DEFAULT_UNSTABLE_RANGE",
    "SEARCHABLE",
    "SELECTION_NAME",
    "SearchSpace",
    "SelectionOptions",
    "SelectionPlan",
    "read_selection",
    "trial_label",
    "values_text",
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

DEFAULT_UNSTABLE_RANGE = 10.0
"""Points of validation top-1 by which one trial's seeds may disagree (max - min, within a fold)
before the trial counts as unstable; ``unstable_range`` / ``--unstable-range`` sets another."""
DIVERGED_NAME = "diverged.json"
"""Left in a trial's run folder whose training diverged: the run is not trained again."""


@dataclass(frozen=True)
class SelectionOptions:
    """How trials are judged: each on ``seeds`` seeds (the plan's first seed and the next ones) and
    on ``folds`` folds of the tuning pair (None: the pair itself, train -> val), the choice on the
    mean validation top-1; a trial whose seeds disagree by more than ``unstable_range`` points
    (max - min within a fold) is unstable. Set by ``select_seeds``, ``select_folds`` and
    ``unstable_range`` (:data:`snftune.runs.PLAN_KEYS`) in a suite's ``search:``, a settings file
    or on the command line."""

    seeds: int = 1
    folds: int | None = None
    unstable_range: float = DEFAULT_UNSTABLE_RANGE

    @classmethod
    def parse(cls, data: dict[str, Any], source: str = "search") -> SelectionOptions:
        """From ``{"select_seeds": 3, "select_folds": 5, "unstable_range": 10}``; a missing or None
        key keeps its default; a bad value is one line naming it."""
        checked = {}
        for key, rule in PLAN_VALUES.items():
            try:
                checked[key] = rule.check(key, data.get(key), SettingsError)
            except SettingsError as error:
                raise SettingsError(f"{source}: {error}") from None
        return cls(
            seeds=checked["select_seeds"] or 1,
            folds=checked["select_folds"],
            unstable_range=DEFAULT_UNSTABLE_RANGE if checked["unstable_range"] is None else checked["unstable_range"],
        )

    def to_keys(self) -> dict[str, Any]:
        return {"select_seeds": self.seeds, "select_folds": self.folds, "unstable_range": self.unstable_range}

    @property
    def repeated(self) -> bool:
        """Whether a trial is more than one run (several seeds, or folds)."""
        return self.seeds > 1 or self.folds is not None

    @property
    def over(self) -> str | None:
        """What the runs of one trial vary: ``"seeds"``, ``"folds"``, ``"seeds and folds"`` or None."""
        parts = [word for word, on in (("seeds", self.seeds > 1), ("folds", self.folds is not None)) if on]
        return " and ".join(parts) or None


@dataclass(frozen=True)
class SearchSpace:
    """Values to try per setting, in the order given; trials are their product (the first
    setting varies slowest). ``options``: how the trials are judged."""

    values: tuple[tuple[str, tuple[float, ...]], ...]
    options: SelectionOptions = field(default_factory=SelectionOptions)

    @classmethod
    def parse(cls, data: Any, source: str = "search", options: dict[str, Any] | None = None) -> SearchSpace:
        """From ``{"lr": [1e-3, 5e-3], "weight_decay": [1e-4]}``, with the selection options among
        them if any (``select_seeds: 3``); ``options``: their defaults (a suite's own). Every problem
        is named."""
        if not isinstance(data, dict) or not data:
            raise SettingsError(f"{source} must map settings to lists of values, e.g. {{lr: [0.001, 0.005]}}")
        given = {key: value for key, value in data.items() if key in PLAN_KEYS}
        settings = {key: value for key, value in data.items() if key not in PLAN_KEYS}
        if not settings:
            raise SettingsError(
                f"{source} says how to choose ({', '.join(given)}) but not what: add e.g. lr: [0.001, 0.005]"
            )
        parsed = [(str(key), _checked_values(key, values, source)) for key, values in settings.items()]
        return cls(tuple(parsed), SelectionOptions.parse({**(options or {}), **given}, source))

    def to_dict(self) -> dict[str, list[float]]:
        return {key: list(options) for key, options in self.values}

    def trials(self) -> list[dict[str, float]]:
        keys = [key for key, _ in self.values]
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(o for _, o in self.values))]


def _checked_values(key: str, options: Any, source: str) -> tuple[float, ...]:
    if key not in SEARCHABLE:
        raise SettingsError(
            f"{source}: '{key}' cannot be searched; searchable settings: {', '.join(SEARCHABLE)}; "
            f"how to choose: {', '.join(PLAN_KEYS)}"
        )
    if not isinstance(options, list | tuple) or not options:
        raise SettingsError(f"{source}: '{key}' needs a non-empty list of values, got {options!r}")
    try:
        values = tuple(check_given({key: value})[key] for value in options)
    except SettingsError as error:
        raise SettingsError(f"{source}: {error}") from None
    if None in values:
        raise SettingsError(f"{source}: '{key}' values must be numbers, got {list(options)}")
    if len(set(values)) != len(values):
        raise SettingsError(f"{source}: '{key}' lists a value twice: {list(options)}")
    return values


def trial_label(values: dict[str, float]) -> str:
    """A folder name for a trial, e.g. ``lr-0.001_weight_decay-0.0001``."""
    return "_".join(f"{key}-{re.sub(r'[^0-9a-zA-Z.+-]', '', format(value, 'g'))}" for key, value in values.items())


def values_text(values: dict[str, Any]) -> str:
    """``lr=0.01, weight_decay=0.0001``: a trial's values as a reader writes them."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, int | float) else f"{k}={v}" for k, v in values.items())


@dataclass(frozen=True)
class SelectionPlan(PicklesFields):
    """Runs that choose hyper-parameters, then train: trials of ``space`` on the tuning pair (none
    without a space), each on the selection's seeds and folds (:class:`SelectionOptions`: the
    space's, then ``select_*`` settings of ``request``), then one final run per seed with the chosen
    values (one run in the folder itself without seeds). ``request``: the run as asked for (suite,
    file and command line); each trial's and final run's request is derived from it once
    (:meth:`trial_request`, :meth:`final_request`) and resolves once. A :class:`snftune.runs.Plan`."""

    request: RunRequest
    space: SearchSpace | None = None
    seeds: tuple[int, ...] | None = None

    @property
    def options(self) -> SelectionOptions:
        """The space's options (a suite's ``search:``), then those of the request (a settings
        file, the command line)."""
        base = self.space.options.to_keys() if self.space is not None else {}
        given = {key: self.request.get(key) for key in PLAN_KEYS if self.request.get(key) is not None}
        return SelectionOptions.parse({**base, **given}, "selection")

    @functools.cached_property
    def run_request(self) -> RunRequest:
        """The request without the selection's own settings: the base of every run of the plan."""
        return self.request.without(*PLAN_KEYS)

    @property
    def resolved(self) -> ResolvedRun:
        """The base run, resolved once."""
        return self.run_request.resolved

    def final_request(self, chosen: dict[str, float], seed: int | None) -> RunRequest:
        """A final run: the chosen values on the base, with ``seed`` (None: the base's)."""
        return self._derived(self.run_request, chosen, {} if seed is None else {"seed": seed})

    def selection_seeds(self) -> tuple[int, ...]:
        """The trials' seeds: the plan's first seed (else the run's) and the next ones."""
        start = self.seeds[0] if self.seeds else self.resolved.settings.train.seed
        return tuple(start + offset for offset in range(self.options.seeds))

    def units(self) -> list[tuple[int, int | None]]:
        """The (seed, fold) of every run of one trial (fold None: the tuning pair itself)."""
        folds = range(1, self.options.folds + 1) if self.options.folds else (None,)
        return [(seed, fold) for fold in folds for seed in self.selection_seeds()]

    def trial_request(self, trial: dict[str, float], seed: int | None = None, fold: int | None = None) -> RunRequest:
        """One run of a trial: on the tuning pair, or on fold ``fold`` of it (trained on the other
        folds, evaluated on this one), with ``seed`` (default: the first selection seed)."""
        train_split, eval_split = _tuning_splits(self.resolved)
        layer: dict[str, Any] = {"train_split": train_split, "eval_split": eval_split}
        if fold is not None:
            layer = {
                "train_split": f"fold{fold}-train",
                "eval_split": f"fold{fold}-val",
                "data_options": {"folds": self.options.folds},
            }
        layer["seed"] = self.selection_seeds()[0] if seed is None else seed
        return self._derived(self.run_request, trial, layer)

    @functools.cached_property
    def _requests(self) -> dict[str, RunRequest]:
        return {}

    def _derived(self, base: RunRequest, *layers: dict[str, Any]) -> RunRequest:
        """``base`` under ``layers``, built once per plan (so each run of the plan resolves once)."""
        key = repr(layers)
        if key not in self._requests:
            self._requests[key] = base.with_overrides(*layers)
        return self._requests[key]

    def check(self) -> ResolvedRun:
        """The base run and every trial resolved (a trial the settings refuse fails now), each
        trial on its first seed and fold, the first trial on all of them."""
        resolved = self.resolved
        trials = self.space.trials() if self.space else []
        units = self.units()
        for trial in trials:
            self.trial_request(trial, *units[0]).resolved  # noqa: B018 (resolving checks)
        for unit in units[1:] if trials else ():
            self.trial_request(trials[0], *unit).resolved  # noqa: B018
        return resolved

    def state(self, folder: Path) -> str:
        """``"done"`` when every final run has finished, ``"resume"`` when anything was started, else ``"todo"``."""
        return plan_state(folder, self.seeds, SELECTION_DIR)

    def differences(self, folder: Path) -> list[str]:
        return _differences(self, folder)

    def run(
        self, folder: Path, dist: DistInfo | None = None, log: Callable[[str], None] = print
    ) -> list[Metrics]:
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


def _unit_folder(trial_folder: Path, seed: int, fold: int | None, options: SelectionOptions) -> Path:
    """A trial's run folder: the trial's own for one run, else ``seed<s>``, ``fold<k>`` or ``fold<k>-seed<s>``."""
    if not options.repeated:
        return trial_folder
    if fold is None:
        return trial_folder / f"seed{seed}"
    return trial_folder / (f"fold{fold}" if options.seeds == 1 else f"fold{fold}-seed{seed}")


def _selected_on(resolved: ResolvedRun, options: SelectionOptions) -> str:
    train, val = _tuning_splits(resolved)
    return f"{options.folds} folds of {train}+{val}" if options.folds else val


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
        if not isinstance(trial, dict) or not isinstance(trial.get("values"), dict):
            raise DamagedFileError(f"{path} is damaged (a trial reads {trial!r}); {recover}")
        score = trial.get("val_top1")
        if not isinstance(score, int | float) and not (score is None and trial.get("unstable")):
            raise DamagedFileError(f"{path} is damaged (a trial reads {trial!r}); {recover}")
    return record


def _differences(plan: SelectionPlan, folder: Path) -> list[str]:
    """How the runs already in ``folder`` differ from what ``plan`` asks for (empty: reusable)."""
    recorded = read_selection(folder)
    if recorded is not None and plan.space is None:
        return [f"search space: {recorded.get('space')} -> none"]
    if recorded is not None and recorded.get("space") != plan.space.to_dict():
        return [f"search space: {recorded.get('space')} -> {plan.space.to_dict()}"]
    options = plan.options
    if recorded is not None:
        was = (recorded.get("select_seeds", 1), recorded.get("select_folds"))
        if was != (options.seeds, options.folds):
            return [f"select_seeds, select_folds: {was} -> {(options.seeds, options.folds)}"]
    runs: list[tuple[Path, RunRequest]] = []
    if plan.space is not None:
        for trial in plan.space.trials():
            trial_folder = folder / SELECTION_DIR / trial_label(trial)
            runs += [
                (_unit_folder(trial_folder, seed, fold, options), plan.trial_request(trial, seed, fold))
                for seed, fold in plan.units()
            ]
    chosen = recorded["chosen"] if recorded is not None else {}
    seeds = plan.seeds or (None,)
    runs += [
        (run, plan.final_request(chosen, seed))
        for seed, run in zip(seeds, final_folders(folder, plan.seeds), strict=True)
    ]
    found = []
    for run, request in runs:
        if (run / CONFIG_NAME).is_file():
            differences = request.spec.differences(read_run_config(run))
            found += [f"{run.relative_to(folder)}: {d}" if run != folder else d for d in differences]
    return found


def _trial_run(
    run: Path, request: RunRequest, doing: str, dist: DistInfo, log: Callable[[str], None]
) -> dict[str, Any]:
    """One run of a trial, trained unless finished: its validation top-1, or the divergence that
    stopped it (left as ``diverged.json``, so a rerun does not train it again)."""
    if (run / DIVERGED_NAME).is_file():
        return {"val_top1": None, "diverged": read_json_record(run / DIVERGED_NAME, {"error": str})["error"]}
    trial_run = request.resolved
    state = run_state(run)
    if state != "done":
        log(f"{doing} on {trial_run.settings.train_split}: {'resuming' if state == 'resume' else 'training'}")
        try:
            train_run(trial_run, run, state == "resume", dist)
        except DivergenceError as error:
            if dist.is_main:
                run.mkdir(parents=True, exist_ok=True)
                atomic_write_json(run / DIVERGED_NAME, {"error": str(error)})
            log(f"    diverged: {error}")
            return {"val_top1": None, "diverged": str(error)}
    return {"val_top1": read_metrics(run)["top1"], "diverged": None}


def _seed_range(runs: list[dict[str, Any]]) -> float | None:
    """The largest disagreement between one trial's seeds (max - min within a fold); None for one seed."""
    by_fold: dict[Any, list[float]] = {}
    for run in runs:
        if run["val_top1"] is not None:
            by_fold.setdefault(run["fold"], []).append(run["val_top1"])
    ranges = [max(scores) - min(scores) for scores in by_fold.values() if len(scores) > 1]
    return max(ranges) if ranges else None


def _trial_summary(
    values: dict[str, float], runs: list[dict[str, Any]], run: str, split: str, options: SelectionOptions
) -> dict[str, Any]:
    """A trial's record: its mean validation top-1, its runs, and whether (and why) it is unstable."""
    scores = [r["val_top1"] for r in runs if r["val_top1"] is not None]
    diverged = [r for r in runs if r["diverged"]]
    spread = _seed_range(runs)
    reason = None
    if diverged:
        which = ", ".join(f"seed {r['seed']}" + (f" fold {r['fold']}" if r["fold"] else "") for r in diverged)
        reason = f"diverged in {len(diverged)} of {len(runs)} runs ({which})"
    elif spread is not None and spread > options.unstable_range:
        reason = f"its seeds' validation top-1 differ by {spread:.2f} points (more than {options.unstable_range:g})"
    record = {
        "values": values,
        "val_top1": statistics.fmean(scores) if scores else None,
        "split": split,
        "run": run,
        "seed_range": spread,
        "unstable": reason is not None,
        "unstable_reason": reason,
    }
    if options.repeated:
        record["runs"] = runs
    return record


def _ranking(trials: list[dict[str, Any]]) -> list[int]:
    """Trial indices, best first: the stable ones by mean validation top-1 (ties: the first
    listed); unstable ones only when none is stable. Every trial diverged: a run failure."""
    stable = [i for i, t in enumerate(trials) if not t["unstable"]]
    pool = stable or [i for i, t in enumerate(trials) if t["val_top1"] is not None]
    if not pool:
        raise RunFailedError(
            "every trial of the search diverged (diverged.json in each trial's folder): search lower learning "
            "rates, or add --grad-clip"
        )
    return sorted(pool, key=lambda i: (-trials[i]["val_top1"], i))


def _decision(trials: list[dict[str, Any]], ranking: list[int], options: SelectionOptions) -> dict[str, Any]:
    """How decided the choice is: the gap between the best trial and the runner-up, the sample
    std of their per-seed/per-fold differences (None from fewer than two), and whether the gap
    is outside that spread (None: not measurable)."""
    best = trials[ranking[0]]
    if len(ranking) < 2:
        return {"best": best["values"], "runner_up": None, "gap": None, "spread": None, "over": options.over}
    runner = trials[ranking[1]]
    pairs = zip(best.get("runs") or [best], runner.get("runs") or [runner], strict=True)
    differences = [a["val_top1"] - b["val_top1"] for a, b in pairs if None not in (a["val_top1"], b["val_top1"])]
    spread = statistics.stdev(differences) if len(differences) > 1 else None
    gap = best["val_top1"] - runner["val_top1"]
    return {
        "best": best["values"],
        "runner_up": runner["values"],
        "gap": gap,
        "differences": differences,
        "spread": spread,
        "over": options.over,
        "decided": None if spread is None else gap > spread,
    }


def _warnings(trials: list[dict[str, Any]], decision: dict[str, Any]) -> list[str]:
    found = []
    if all(t["unstable"] for t in trials):
        found.append(f"every trial is unstable; {values_text(decision['best'])} is the best of them")
    if decision.get("decided") is False:
        found.append(
            f"the choice between {values_text(decision['best'])} and {values_text(decision['runner_up'])} is not "
            f"decided by this validation split: their gap, {decision['gap']:.2f} points, is within its spread "
            f"over {decision['over']} ({decision['spread']:.2f})"
        )
    return found


def _select(plan: SelectionPlan, folder: Path, dist: DistInfo, log: Callable[[str], None]) -> dict[str, float]:
    """Runs every trial on the tuning pair (on each selection seed and fold) and returns the chosen
    values (written to selection.json, with how decided the choice is)."""
    resolved = plan.resolved
    options, units, space = plan.options, plan.units(), plan.space.trials()
    selected_on = _selected_on(resolved, options)
    trials = []
    for index, trial in enumerate(space, 1):
        trial_folder = folder / SELECTION_DIR / trial_label(trial)
        runs = []
        for seed, fold in units:
            run = _unit_folder(trial_folder, seed, fold, options)
            where = (f" seed {seed}" if options.seeds > 1 else "") + (f" fold {fold}/{options.folds}" if fold else "")
            doing = f"  trial {index}/{len(space)} {trial_label(trial)}{where}"
            outcome = _trial_run(run, plan.trial_request(trial, seed, fold), doing, dist, log)
            runs.append({"seed": seed, "fold": fold, **outcome, "run": str(run.relative_to(folder))})
        trials.append(_trial_summary(trial, runs, str(trial_folder.relative_to(folder)), selected_on, options))
    ranking = _ranking(trials)
    decision = _decision(trials, ranking, options)
    warnings = _warnings(trials, decision)
    chosen = trials[ranking[0]]["values"]
    record = {
        "space": plan.space.to_dict(),
        "tuning_splits": list(_tuning_splits(resolved)),
        "selected_on": selected_on,
        **options.to_keys(),
        "selection_seeds": list(plan.selection_seeds()),
        "trials": trials,
        "chosen": chosen,
        "chosen_val_top1": trials[ranking[0]]["val_top1"],
        "decision": decision,
        "warnings": warnings,
        "base": resolved.settings.to_dict(),
        "rule": "the best mean validation top-1 over the selection's seeds and folds; an unstable trial (diverged, "
        "or seeds further apart than unstable_range points) only when no trial is stable; ties go to the first "
        "trial in the listed order",
    }
    if dist.is_main:
        atomic_write_json(folder / SELECTION_NAME, record)
    _log_choice(record, log)
    return chosen


def _log_choice(record: dict[str, Any], log: Callable[[str], None]) -> None:
    for trial in record["trials"]:
        if trial["unstable"]:
            log(f"  unstable: {trial_label(trial['values'])}: {trial['unstable_reason']}")
    decision = record["decision"]
    margin = ""
    if decision["runner_up"] is not None:
        spread = "" if decision["spread"] is None else f" ± {decision['spread']:.2f}"
        margin = f"; runner-up {trial_label(decision['runner_up'])} by {decision['gap']:.2f}{spread} points"
    over = f", mean over {decision['over']}" if decision["over"] else ""
    log(
        f"  chosen on {record['selected_on']}{over}: {trial_label(record['chosen'])} "
        f"(val top-1 {record['chosen_val_top1']:.2f}{margin})"
    )
    for warning in record["warnings"]:
        log(f"  warning: {warning}")


def _run(plan: SelectionPlan, folder: Path, dist: DistInfo | None, log: Callable[[str], None]) -> list[Metrics]:
    """Selection (when the plan has a space), then the final run per seed; returns their metrics.

    Runs already in ``folder`` are reused only when made with the plan's settings; otherwise
    the cell is refused, naming the differences.
    """
    dist = dist or DistInfo()
    plan.resolved  # noqa: B018 (a bad base setting is refused before anything is read or trained)
    differences = plan.differences(folder) if folder.is_dir() else []
    if differences:
        raise SettingsError(
            f"{folder} holds runs made with other settings ({'; '.join(differences[:4])}); use another folder"
        )
    chosen = _select(plan, folder, dist, log) if plan.space is not None else {}
    results = []
    for seed, run in zip(plan.seeds or (None,), final_folders(folder, plan.seeds), strict=True):
        state = run_state(run)
        if state != "done":
            if plan.seeds:
                log(f"  seed {seed}: {'resuming' if state == 'resume' else 'training'}")
            train_run(plan.final_request(chosen, seed).resolved, run, state == "resume", dist)
        results.append(read_metrics(run))
    return results
