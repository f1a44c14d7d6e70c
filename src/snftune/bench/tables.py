"""Paper-style result tables from a benchmark folder: one row per method, one column per
task, the group means, both averages the literature uses (each labelled), and the tuned
parameters, as Markdown, CSV and JSON; then the hyper-parameters chosen on validation; beside
them the trade-off figure (mean top-1 against tuned parameters).

Every figure says what it is: how it was trained (read from each run's recorded settings, so
that ``bench --epochs 1`` says 1 epoch whatever the suite's description says), which top-1
(final epoch, or best-on-evaluation, marked †), how the hyper-parameters were chosen, over how
many runs it is a mean, and its spread. A cell whose column holds several runs (seeds; several
data seeds of one column) shows ``mean ± std`` (sample standard deviation). An average shows a
spread when every column it averages has the same number of runs: the average is then taken
per run index (seed) first. ``results.json`` keeps every run's value and its provenance.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..engine import METRICS_NAME, read_metrics
from ..provenance import common_fields
from ..runs import final_folders
from ..selection import read_selection, values_text
from .plots import plot_tradeoff
from .suites import Suite

__all__ = [
    "CellResult",
    "collect_results",
    "build_table",
    "format_table",
    "write_tables",
    "PLAIN_MEAN",
    "GROUP_MEAN",
    "TRADEOFF_NAME",
]

PLAIN_MEAN = "mean"
GROUP_MEAN = "mean of groups"
TRADEOFF_NAME = "tradeoff.png"
TRAINING_KEYS = {
    "epochs": "epochs",
    "batch_size": "batch",
    "lr": "lr",
    "weight_decay": "weight decay",
    "warmup_epochs": "warm-up epochs",
}
"""The training settings a table's header states, as run (key in the run's settings -> words)."""


@dataclass(frozen=True)
class CellResult:
    row: str
    method: str
    model: str
    data: str
    column: str
    group: str | None
    top1: float | None
    reported: str | None
    eval_split: str | None
    tuned_parameters: int | None
    meta: dict[str, Any]
    seed: int | None = None
    folder: str | None = None
    selection: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None
    train: dict[str, Any] | None = None
    train_split: str | None = None


def _selection_summary(folder: Path) -> dict[str, Any] | None:
    record = read_selection(folder)
    if record is None:
        return None
    return {
        "chosen": record["chosen"],
        "chosen_val_top1": record["chosen_val_top1"],
        "selected_on": record["selected_on"],
        "trials": [
            {"values": t["values"], "val_top1": t["val_top1"], "unstable": t.get("unstable", False)}
            for t in record["trials"]
        ],
        "select_seeds": record.get("select_seeds", 1),
        "select_folds": record.get("select_folds"),
        "unstable_range": record.get("unstable_range"),
        "decided": (record.get("decision") or {}).get("decided"),
        "warnings": record.get("warnings", []),
    }


def collect_results(suite: Suite, out: Path) -> list[CellResult]:
    """The finished runs' figures, one per cell and seed (runs without metrics.json are left out)."""
    seeds = tuple(suite.seeds) if suite.seeds else None
    results = []
    for cell in suite.cells():
        folder = cell.folder(out)
        selection = _selection_summary(folder)
        for seed, run in zip(seeds or (None,), final_folders(folder, seeds), strict=True):
            path = run / METRICS_NAME
            if not path.is_file():
                continue
            metrics = read_metrics(path)
            settings = metrics.get("settings") if isinstance(metrics.get("settings"), dict) else {}
            results.append(
                CellResult(
                    row=cell.row,
                    method=cell.method.label,
                    model=cell.model.label,
                    data=cell.task.data,
                    column=cell.task.column,
                    group=cell.task.group,
                    top1=metrics.get("top1"),
                    reported=metrics.get("reported"),
                    eval_split=metrics.get("eval_split"),
                    tuned_parameters=metrics.get("tuned_parameters"),
                    meta=cell.task.meta,
                    seed=seed if seed is not None else (settings.get("train") or {}).get("seed"),
                    folder=str(run.relative_to(out)),
                    selection=selection,
                    provenance=settings.get("provenance"),
                    train=settings.get("train"),
                    train_split=settings.get("train_split"),
                )
            )
    return results


def _summary(values: list[float] | None) -> dict[str, Any]:
    """``{"mean", "std", "n"}`` (std: sample standard deviation, None for one value); all None when missing."""
    if not values or any(v is None for v in values):
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": sum(values) / len(values), "std": std, "n": len(values)}


def _average(lists: list[list[float] | None]) -> dict[str, Any]:
    """The mean of several columns' runs. When every column has the same number of runs (more
    than one), the mean is taken per run index first, which gives the average its spread;
    ``runs`` keeps those per-run averages for averages of averages."""
    if not lists or any(not values for values in lists):
        return {"mean": None, "std": None, "n": 0, "runs": None}
    if len({len(values) for values in lists}) == 1 and len(lists[0]) > 1:
        per_run = [sum(values[r] for values in lists) / len(lists) for r in range(len(lists[0]))]
        return {**_summary(per_run), "runs": per_run}
    mean = sum(sum(values) / len(values) for values in lists) / len(lists)
    return {"mean": mean, "std": None, "n": 1, "runs": [mean]}


def build_table(suite: Suite, results: list[CellResult]) -> dict[str, Any]:
    """The table as plain data: columns, groups, and for each row its cells (mean, std, runs),
    group means, both averages, the tuned parameters and the chosen hyper-parameters."""
    rows = list(dict.fromkeys(suite.row_label(model, method) for model in suite.models for method in suite.methods))
    columns = list(dict.fromkeys(task.column for task in suite.tasks))
    column_group = {task.column: task.group for task in suite.tasks}
    groups = [g for g in suite.groups if any(column_group[c] == g for c in columns)]
    task_order = {task.data: i for i, task in enumerate(suite.tasks)}
    expected_runs = {c: sum(t.column == c for t in suite.tasks) * max(1, len(suite.seeds or [])) for c in columns}
    by_cell: dict[tuple[str, str], list[CellResult]] = {}
    for result in results:
        by_cell.setdefault((result.row, result.column), []).append(result)
    table_rows = []
    for row in rows:
        replicates: dict[str, list[float] | None] = {}
        marks = []
        for column in columns:
            found = sorted(by_cell.get((row, column), []), key=lambda r: (r.seed or 0, task_order[r.data]))
            complete = len(found) == expected_runs[column] and all(r.top1 is not None for r in found)
            replicates[column] = [r.top1 for r in found] if complete else None
            if any(r.reported == "best" for r in found):
                marks.append(column)
        counts = {r.tuned_parameters for found in by_cell.values() for r in found if r.row == row}
        counts.discard(None)
        group_stats = {g: _average([replicates[c] for c in columns if column_group[c] == g]) for g in groups}
        selection = {
            r.column: r.selection["chosen"] for found in by_cell.values() for r in found if r.row == row and r.selection
        }
        random_init = any(
            ((r.provenance or {}).get("weights") or {}).get("source") == "random"
            for found in by_cell.values()
            for r in found
            if r.row == row
        )
        table_rows.append(
            {
                "row": row,
                "random_backbone": random_init,
                "tuned_parameters": min(counts) if len(counts) == 1 else (sorted(counts) or None),
                "cells": {c: _summary(replicates[c]) for c in columns},
                "runs": {c: replicates[c] for c in columns},
                "best_on_eval": marks,
                "groups": group_stats,
                PLAIN_MEAN: _average([replicates[c] for c in columns]),
                GROUP_MEAN: _average([group_stats[g]["runs"] for g in groups]) if len(groups) > 1 else None,
                "chosen": selection,
            }
        )
    return {
        "suite": suite.name,
        "description": suite.description,
        "columns": columns,
        "groups": groups,
        "rows": table_rows,
        "reported": sorted({r.reported for r in results if r.reported}),
        "eval_splits": sorted({r.eval_split for r in results if r.eval_split}),
        "seeds": suite.seeds,
        "selection": _selection_rule(suite, results),
        "training": _training_as_run(results),
        "cells": [asdict(r) for r in results],
        "provenance": _common_provenance(results),
        "settings": suite.to_dict(),
    }


def _training_as_run(results: list[CellResult]) -> dict[str, list[Any]]:
    """Each stated training setting's distinct values over the finished runs (train split included)."""
    found: dict[str, list[Any]] = {}
    for key in (*TRAINING_KEYS, "train_split"):
        values = [r.train_split if key == "train_split" else (r.train or {}).get(key) for r in results]
        distinct = sorted({v for v in values if v is not None}, key=str)
        if distinct:
            found[key] = distinct
    return found


def _training_line(table: dict[str, Any]) -> str | None:
    """``Trained as run on train800val200: epochs 1 (the suite's: 2), batch 32, ...``: the settings
    the runs recorded, with the suite's own value where the runs were given another."""
    training = table.get("training") or {}
    suite_train = (table.get("settings") or {}).get("train") or {}
    parts = []
    for key, words in TRAINING_KEYS.items():
        if key not in training:
            continue
        text = f"{words} {'/'.join(map(_setting, training[key]))}"
        if key in suite_train and training[key] != [suite_train[key]]:
            text += f" (the suite's: {_setting(suite_train[key])})"
        parts.append(text)
    if not parts:
        return None
    splits = training.get("train_split")
    return f"Trained as run{' on ' + '/'.join(splits) if splits else ''}: {', '.join(parts)}."


def _setting(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _selection_rule(suite: Suite, results: list[CellResult]) -> str:
    selected = [r for r in results if r.selection]
    if not selected:
        return "fixed: the suite's settings, no search"
    splits = sorted({r.selection["selected_on"] for r in selected})
    trials = sorted({len(r.selection["trials"]) for r in selected})
    rule = (
        f"chosen per cell on {', '.join(splits)} (best validation top-1, ties to the first listed; "
        f"{'/'.join(map(str, trials))} trials{_judged_on(selected)}), then trained on the final split; the test "
        "split was not read before the choice"
    )
    return rule + _how_decided(selected)


def _judged_on(selected: list[CellResult]) -> str:
    """``, each on 3 seeds, the mean chosen``: how many runs judged each trial, when more than one."""
    seeds = sorted({r.selection.get("select_seeds") or 1 for r in selected})
    folds = sorted({r.selection.get("select_folds") or 1 for r in selected})
    if seeds == [1] and folds == [1]:
        return ""
    parts = []
    if seeds != [1]:
        parts.append(f"{'/'.join(map(str, seeds))} seeds")
    if folds != [1]:
        parts.append(f"{'/'.join(map(str, folds))} folds")
    return f", each judged by its mean over {' x '.join(parts)}"


def _how_decided(selected: list[CellResult]) -> str:
    """How many cells' choices the validation split did not decide (the best trial's lead inside
    its spread over seeds or folds), and the rule for unstable trials, once per table."""
    cells = {(r.row, r.data): r.selection for r in selected}
    measured = [s for s in cells.values() if s.get("decided") is not None]
    text = ""
    if measured:
        undecided = sum(not s["decided"] for s in measured)
        text += (
            f". Not decided by validation (the best trial's lead within its spread over seeds/folds) in "
            f"{undecided} of {len(measured)} cells"
        )
    bounds = sorted({s["unstable_range"] for s in cells.values() if s.get("unstable_range") is not None})
    if bounds:
        unstable = sum(any(t.get("unstable") for t in s["trials"]) for s in cells.values())
        text += (
            f". A trial that diverged or whose seeds differ by more than {'/'.join(f'{b:g}' for b in bounds)} "
            f"points is unstable and never chosen over a stable one ({unstable} of {len(cells)} cells had one)"
        )
    return text


def _common_provenance(results: list[CellResult]) -> dict[str, Any]:
    """Provenance fields that every run shares (flattened), and each run's own record."""
    records = {r.folder: r.provenance for r in results if r.provenance}
    return {"common": common_fields(list(records.values())), "runs": records}


def _pct(stats: dict[str, Any] | None, with_std: bool = True) -> str:
    if not stats or stats.get("mean") is None or (isinstance(stats["mean"], float) and math.isnan(stats["mean"])):
        return "–"
    text = f"{stats['mean']:.2f}"
    return text + (f" ± {stats['std']:.2f}" if with_std and stats.get("std") is not None else "")


def _params(value: int | list[int] | None) -> str:
    if value is None:
        return "–"
    if isinstance(value, list):
        return f"{value[0] / 1e6:.3f}–{value[-1] / 1e6:.3f}"
    return f"{value / 1e6:.3f}"


def _caption(table: dict[str, Any]) -> list[str]:
    splits = ", ".join(table["eval_splits"]) or "the evaluation split"
    text = f"Top-1 accuracy (%) on {splits}, after the final epoch of each run"
    if "best" in table["reported"]:
        text += "; cells marked † report the best evaluation instead, selected on that same split"
    lines = [text + ". Tuned parameters in millions, classifier head excluded. – : not run yet."]
    if any(row.get("random_backbone") for row in table["rows"]):
        lines.append("‡ tuned from a randomly initialised backbone (--pretrained random), not from pretrained weights.")
    lines.append(f"Hyper-parameters: {table['selection']}.")
    if table["seeds"]:
        lines.append(
            f"Seeds {', '.join(map(str, table['seeds']))}: each cell is mean ± sample std over its runs; an average "
            "shows ± when it is taken per seed."
        )
    if table["groups"]:
        averages = f"'{PLAIN_MEAN}' is the plain mean over the {len(table['columns'])} task columns"
        if len(table["groups"]) > 1:
            averages += f"; '{GROUP_MEAN}' is the mean of the {len(table['groups'])} group means"
        lines.append(f"Group columns ({', '.join(table['groups'])}) are means over their tasks; {averages}.")
    return lines


def format_table(table: dict[str, Any], fmt: str = "markdown") -> str:
    if fmt == "json":
        return json.dumps(table, indent=2, allow_nan=False) + "\n"
    columns, groups = table["columns"], table["groups"]
    averages = [PLAIN_MEAN] + ([GROUP_MEAN] if len(groups) > 1 else [])
    header = ["method", "params (M)", *columns, *groups, *averages]
    body = []
    for row in table["rows"]:
        dagger = "†" if fmt == "markdown" else ""
        marked = [_pct(row["cells"][c]) + (dagger if c in row["best_on_eval"] else "") for c in columns]
        random_mark = " ‡" if fmt == "markdown" and row.get("random_backbone") else ""
        body.append(
            [
                row["row"] + random_mark,
                _params(row["tuned_parameters"]),
                *marked,
                *[_pct(row["groups"][g]) for g in groups],
                *[_pct(row[a]) for a in averages],
            ]
        )
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(body)
        return out.getvalue()
    if fmt != "markdown":
        raise ValueError(f"unknown format '{fmt}': use markdown, csv or json")
    lines = [f"## {table['suite']}", ""]
    if table["description"]:
        lines += [table["description"], ""]
    trained = _training_line(table)
    if trained:
        lines += [trained, ""]
    lines += [
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
        *("| " + " | ".join(row) + " |" for row in body),
        "",
        *_caption(table),
    ]
    chosen_rows = [row for row in table["rows"] if row["chosen"]]
    if chosen_rows:
        lines += ["", "### Hyper-parameters chosen on validation", "", "| method | " + " | ".join(columns) + " |"]
        lines.append("|---|" + "---|" * len(columns))
        for row in chosen_rows:
            lines.append(
                f"| {row['row']} | " + " | ".join(values_text(row["chosen"].get(c, {})) or "–" for c in columns) + " |"
            )
    return "\n".join(lines) + "\n"


def write_tables(suite: Suite, out: Path, figure: bool = True) -> dict[str, Path]:
    """results.md, results.csv and results.json in ``out``, and beside them tradeoff.png (mean top-1
    against tuned parameters, as ``snftune plot tradeoff`` draws it) once a row has both."""
    table = build_table(suite, collect_results(suite, out))
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for fmt, suffix in (("markdown", "md"), ("csv", "csv"), ("json", "json")):
        paths[fmt] = atomic_write_text(out / f"results.{suffix}", format_table(table, fmt))
    if figure:
        try:
            paths["figure"] = plot_tradeoff(table, out / TRADEOFF_NAME)
        except ValueError:  # no finished row with an average and a parameter count yet
            pass
    return paths
