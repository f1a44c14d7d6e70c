"""Paper-style result tables from a benchmark folder: one row per method, one column per
task, group means, the plain mean over tasks and the tuned-parameter column, as Markdown,
CSV and JSON. Every figure says which top-1 it is (final epoch, or best-on-evaluation)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..engine import METRICS_NAME
from .suites import Suite

__all__ = ["CellResult", "collect_results", "build_table", "format_table", "write_tables"]


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


def collect_results(suite: Suite, out: Path) -> list[CellResult]:
    """The finished cells' figures (cells without metrics.json are left out)."""
    results = []
    for cell in suite.cells():
        path = cell.folder(out) / METRICS_NAME
        if not path.is_file():
            continue
        metrics = json.loads(path.read_text())
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
            )
        )
    return results


def _mean(values: list[float | None]) -> float | None:
    """The mean, or None when a value is missing: a partial mean would not be the paper's figure."""
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)


def build_table(suite: Suite, results: list[CellResult]) -> dict[str, Any]:
    """The table as plain data: columns, groups, and for each row its cells, group means,
    mean over tasks, and tuned parameters."""
    rows = list(dict.fromkeys(suite.row_label(model, method) for model in suite.models for method in suite.methods))
    columns = list(dict.fromkeys(task.column for task in suite.tasks))
    column_group = {task.column: task.group for task in suite.tasks}
    groups = [g for g in suite.groups if any(column_group[c] == g for c in columns)]
    runs_per_column = Counter(task.column for task in suite.tasks)  # e.g. three seeds
    by_cell: dict[tuple[str, str], list[CellResult]] = {}
    for result in results:
        by_cell.setdefault((result.row, result.column), []).append(result)
    table_rows = []
    for row in rows:
        cells: dict[str, float | None] = {}
        marks: dict[str, str] = {}
        for column in columns:
            found = by_cell.get((row, column), [])
            complete = len(found) == runs_per_column[column]
            cells[column] = _mean([r.top1 for r in found]) if complete else None
            if any(r.reported == "best" for r in found):
                marks[column] = "best"
        group_means = {g: _mean([cells[c] for c in columns if column_group[c] == g]) for g in groups}
        counts = {r.tuned_parameters for found in by_cell.values() for r in found if r.row == row}
        counts.discard(None)
        table_rows.append(
            {
                "row": row,
                "tuned_parameters": min(counts) if len(counts) == 1 else (sorted(counts) or None),
                "cells": cells,
                "best_on_eval": sorted(marks),
                "groups": group_means,
                "mean": _mean(list(cells.values())),
                "runs": {c: len(by_cell.get((row, c), [])) for c in columns},
            }
        )
    reported = sorted({r.reported for r in results if r.reported})
    splits = sorted({r.eval_split for r in results if r.eval_split})
    return {
        "suite": suite.name,
        "description": suite.description,
        "columns": columns,
        "groups": groups,
        "rows": table_rows,
        "reported": reported,
        "eval_splits": splits,
        "cells": [asdict(r) for r in results],
        "settings": suite.to_dict(),
    }


def _pct(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def _params(value: int | list[int] | None) -> str:
    if value is None:
        return "–"
    if isinstance(value, list):
        return f"{value[0] / 1e6:.3f}–{value[-1] / 1e6:.3f}"
    return f"{value / 1e6:.3f}"


def _caption(table: dict[str, Any]) -> str:
    splits = ", ".join(table["eval_splits"]) or "the evaluation split"
    text = f"Top-1 accuracy (%) on {splits}, after the final epoch of each run"
    if "best" in table["reported"]:
        text += "; cells marked † report the best evaluation instead, selected on that same split"
    return text + ". Tuned parameters in millions, classifier head excluded. – : not run yet."


def format_table(table: dict[str, Any], fmt: str = "markdown") -> str:
    if fmt == "json":
        return json.dumps(table, indent=2) + "\n"
    columns, groups = table["columns"], table["groups"]
    header = ["method", "params (M)", *columns, *groups, "mean"]
    body = []
    for row in table["rows"]:
        marked = [
            _pct(row["cells"][c]) + ("†" if c in row["best_on_eval"] and fmt == "markdown" else "") for c in columns
        ]
        body.append([row["row"], _params(row["tuned_parameters"]), *marked, *[_pct(row["groups"][g]) for g in groups]])
        body[-1].append(_pct(row["mean"]))
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
    lines += [
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
        *("| " + " | ".join(row) + " |" for row in body),
        "",
        _caption(table),
    ]
    if groups:
        lines.append(
            f"Group columns ({', '.join(groups)}) are means over their tasks; 'mean' is the plain mean over tasks."
        )
    return "\n".join(lines) + "\n"


def write_tables(suite: Suite, out: Path) -> dict[str, Path]:
    """results.md, results.csv and results.json in ``out``."""
    table = build_table(suite, collect_results(suite, out))
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for fmt, suffix in (("markdown", "md"), ("csv", "csv"), ("json", "json")):
        paths[fmt] = atomic_write_text(out / f"results.{suffix}", format_table(table, fmt))
    return paths
