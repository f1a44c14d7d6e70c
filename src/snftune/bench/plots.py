"""Figures as PNG files (matplotlib, Agg backend): accuracy against shots (paper Figure 4)
and t-SNE maps of pooled features (the paper's feature visualisation)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..atomic import atomic_write
from ..data import build_transform, resolve_task
from ..engine import TUNED_NAME
from ..runs import SettingsError, build_backbone, input_config, read_run_config, settings_from_record
from ..tuning import load_tuned

__all__ = [
    "fewshot_curves",
    "plot_features",
    "plot_fewshot",
    "plot_run_features",
    "plot_tradeoff",
    "pooled_features",
    "tradeoff_points",
]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fewshot_curves(results: dict[str, Any]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{dataset: {method row: [(shots, mean top-1 over seeds), ...]}} from a bench results.json."""
    values: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    cells = results.get("cells", [])
    for cell in cells if isinstance(cells, list) else [cells]:
        meta = (cell.get("meta") or {}) if isinstance(cell, dict) else None
        if not isinstance(meta, dict):
            raise ValueError(f"a cell is damaged (it reads {str(cell)[:80]}); run snftune bench again")
        if "shots" not in meta or cell.get("top1") is None:
            continue
        if not (_is_number(meta["shots"]) and _is_number(cell["top1"]) and isinstance(cell.get("row"), str)):
            raise ValueError(f"a cell is damaged (it reads {str(cell)[:80]}); run snftune bench again")
        dataset = str(meta.get("dataset", cell.get("group") or "task"))
        values[dataset, cell["row"], int(meta["shots"])].append(float(cell["top1"]))
    curves: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for (dataset, row, shots), accuracies in sorted(values.items(), key=lambda item: item[0]):
        curves[dataset][row].append((shots, sum(accuracies) / len(accuracies)))
    return {d: dict(rows) for d, rows in curves.items()}


def plot_fewshot(results: dict[str, Any], path: str | Path, title: str | None = None) -> Path:
    """Top-1 against shots per class, one line per method, one panel per dataset."""
    curves = fewshot_curves(results)
    if not curves:
        raise ValueError("the results hold no few-shot cells (cells with 'shots' in their meta); run the fewshot suite")
    plt = _pyplot()
    columns = min(len(curves), 3)
    rows = math.ceil(len(curves) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    for ax, (dataset, lines) in zip(axes.flat, sorted(curves.items()), strict=False):
        for row, points in lines.items():
            shots, accuracy = zip(*points, strict=True)
            ax.plot(shots, accuracy, marker="o", label=row)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({s for points in lines.values() for s, _ in points}))
        ax.get_xaxis().set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
        ax.set_title(dataset)
        ax.set_xlabel("shots per class")
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(curves) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), frameon=False)
    figure.suptitle(title or "Few-shot top-1 (mean over seeds)")
    figure.tight_layout(rect=(0, 0.08, 1, 0.95))
    return _save(figure, path)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _mean_of(values: Any) -> float | None:
    """The mean of a list of numbers (one tuned-parameter count per task), None for anything else."""
    if not isinstance(values, list) or not values or not all(_is_number(v) for v in values):
        return None
    return sum(values) / len(values)


def tradeoff_points(results: dict[str, Any], average: str = "mean") -> list[dict[str, Any]]:
    """One point per row of a results.json: tuned parameters, the average, its spread (seeds)."""
    points = []
    for row in results.get("rows", []):
        stats = row.get(average) or {}
        params = row.get("tuned_parameters")
        if not isinstance(stats, dict) or stats.get("mean") is None or params is None:
            continue
        params = params if isinstance(params, int | float) else _mean_of(params)
        if not _is_number(params) or not _is_number(stats["mean"]) or not _is_number(stats.get("std") or 0):
            raise ValueError(f"the row {row['row']!r} is damaged (it reads {str(row)[:80]}); run snftune bench again")
        points.append({"label": row["row"], "params": params, "mean": stats["mean"], "std": stats.get("std")})
    if not points:
        raise ValueError("no row has both an average and a tuned-parameter count yet; finish some cells first")
    return points


def plot_tradeoff(results: dict[str, Any], path: str | Path, average: str = "mean") -> Path:
    """Mean top-1 against tuned parameters (log scale; 0 for linear probing sits at the axis'
    linear part), one labelled point per method, with the seed spread as error bars."""
    points = tradeoff_points(results, average)
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(6.4, 4.4))
    for point in points:
        ax.errorbar(point["params"], point["mean"], yerr=point["std"] or 0, fmt="o", capsize=3)
        ax.annotate(
            point["label"], (point["params"], point["mean"]), textcoords="offset points", xytext=(5, 4), fontsize=8
        )
    smallest = min((p["params"] for p in points if p["params"] > 0), default=1.0)
    ax.set_xscale("symlog", linthresh=max(smallest / 10, 1.0))
    ax.set_xlabel("tuned parameters (classifier head excluded; log scale)")
    label = "mean of group means" if average == "mean of groups" else "mean over tasks"
    ax.set_ylabel(f"top-1 (%), {label}")
    ax.set_title(f"{results.get('suite', '')}: accuracy against tuned parameters")
    ax.grid(alpha=0.3)
    figure.tight_layout()
    return _save(figure, path)


def evenly_spaced(dataset: Dataset, max_samples: int) -> Dataset:
    if len(dataset) <= max_samples:
        return dataset
    return Subset(dataset, np.linspace(0, len(dataset) - 1, max_samples).round().astype(int).tolist())


@torch.no_grad()
def pooled_features(
    model: torch.nn.Module, dataset: Dataset, batch_size: int = 128, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """The pooled features the classifier head sees (timm's ``forward_head(pre_logits=True)``)."""
    model.eval().to(device)
    features, labels = [], []
    for images, targets in DataLoader(dataset, batch_size=batch_size):
        tokens = model.forward_features(images.to(device))
        features.append(model.forward_head(tokens, pre_logits=True).float().cpu().numpy())
        labels.append(np.asarray(targets))
    return np.concatenate(features), np.concatenate(labels)


def plot_features(
    panels: list[tuple[str, np.ndarray, np.ndarray]],
    path: str | Path,
    seed: int = 0,
    class_names: list[str] | None = None,
) -> Path:
    """One t-SNE map per (title, features, labels), side by side, coloured by class."""
    from sklearn.manifold import TSNE

    plt = _pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    for ax, (title, features, labels) in zip(axes.flat, panels, strict=True):
        perplexity = float(min(30, max(2, (len(features) - 1) // 3)))
        points = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)
        scatter = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab20", s=6)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    classes = sorted(set(panels[0][2].tolist()))
    if len(classes) <= 20:
        handles = scatter.legend_elements()[0]
        names = [class_names[c] if class_names and c < len(class_names) else str(c) for c in classes]
        figure.legend(handles, names, loc="lower center", ncol=min(len(names), 10), frameon=False, fontsize=7)
    figure.suptitle("t-SNE of pooled features")
    figure.tight_layout(rect=(0, 0.08, 1, 0.95))
    return _save(figure, path)


def plot_run_features(
    runs: list[str | Path],
    path: str | Path,
    *,
    labels: list[str] | None = None,
    split: str | None = None,
    max_samples: int = 500,
    include_backbone: bool = True,
    device: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """t-SNE of the pooled features of finished runs on one task, side by side, with the
    untouched backbone (the first run's) as the first panel unless ``include_backbone`` is False.

    Returns what was drawn: ``{"path", "images", "task", "split"}``.
    """
    if labels and len(labels) != len(runs):
        raise SettingsError(f"{len(labels)} labels for {len(runs)} runs: give one label per run")
    records = []
    for run in map(Path, runs):
        if not (run / TUNED_NAME).is_file():
            raise SettingsError(f"{run} is not a finished run folder ({TUNED_NAME} is missing)")
        records.append(settings_from_record(read_run_config(run)))
    first = records[0]
    task = resolve_task(first.data, first.data_dir, **(first.data_options or {}))
    split = split or first.eval_split or task.eval_split
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    backbone = build_backbone(first, drop_path=0.0)
    transform = build_transform(task.protocol, input_config(backbone, first), train=False)
    dataset = evenly_spaced(task.dataset(split, transform=transform), max_samples)
    panels = []
    if include_backbone:
        panels.append(("untouched backbone", *pooled_features(backbone, dataset, device=device)))
    for index, (run, settings) in enumerate(zip(runs, records, strict=True)):
        if settings.data != first.data:
            raise SettingsError(
                f"{run} was trained on {settings.data}, the first run on {first.data}: compare one task"
            )
        model = build_backbone(settings, drop_path=0.0)
        load_tuned(model, Path(run) / TUNED_NAME)
        title = labels[index] if labels else model.snftune_state.label
        panels.append((title, *pooled_features(model, dataset, device=device)))
    written = plot_features(panels, path, seed=seed, class_names=list(task.class_names or []) or None)
    return {"path": written, "images": len(dataset), "task": task.name, "split": split}


def _save(figure, path: str | Path) -> Path:
    """Writes the figure as PNG (creating the folder, atomically) and frees it."""
    written = atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=120, format="png"))
    _pyplot().close(figure)
    return written
