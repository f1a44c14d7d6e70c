"""Two result files side by side: first what made them differ (the provenance their runs
share, and the suite settings), then the numbers that differ, cell by cell. A gap between two
tables is read only after seeing that they used, say, other weights or another normalisation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import SnftuneError
from ..inputs import read_json_record
from ..provenance import common_fields, differences, flatten

__all__ = ["ResultsError", "compare_results", "read_results"]


class ResultsError(SnftuneError, ValueError):
    """A file that is not a results.json written by snftune bench."""


def read_results(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"{path} does not exist; pass the results.json written by snftune bench")
    recover = "pass the results.json written by snftune bench (snftune bench --table-only writes it again)"
    table = read_json_record(path, {"rows": list, "columns": list}, ResultsError, recover)
    for row in table["rows"]:
        if not isinstance(row, dict) or not isinstance(row.get("row"), str) or not isinstance(row.get("cells"), dict):
            raise ResultsError(f"{path} is damaged (a row reads {str(row)[:80]}); {recover}")
    return table


def _values(table: dict[str, Any]) -> dict[tuple[str, str], float | None]:
    values = {}
    for row in table["rows"]:
        for column, stats in row["cells"].items():
            values[row["row"], column] = stats.get("mean") if isinstance(stats, dict) else stats
        for average in ("mean", "mean of groups"):
            if isinstance(row.get(average), dict):
                values[row["row"], average] = row[average].get("mean")
    return values


def _shared(table: dict[str, Any]) -> dict[str, Any]:
    """The provenance every run of a table shares, from the runs' own records."""
    records = list(((table.get("provenance") or {}).get("runs") or {}).values())
    return common_fields(records)


def compare_results(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``{"provenance": {key: (a, b)}, "settings": {key: (a, b)}, "cells": [(row, column, a, b, b - a)]}``."""
    common_a, common_b = _shared(a), _shared(b)
    provenance = differences(common_a, common_b)
    for key in sorted(set(common_a) ^ set(common_b)):  # shared in one file, varying in the other
        provenance.setdefault(key, (common_a.get(key, "(varies)"), common_b.get(key, "(varies)")))
    settings = differences(flatten(a.get("settings") or {}), flatten(b.get("settings") or {}))
    va, vb = _values(a), _values(b)
    cells = []
    for key in [k for k in va if k in vb] + [k for k in vb if k not in va]:
        x, y = va.get(key), vb.get(key)
        if x != y:
            delta = y - x if x is not None and y is not None else None
            cells.append((*key, x, y, delta))
    return {"provenance": provenance, "settings": settings, "cells": cells}
