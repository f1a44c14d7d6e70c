"""What data a run saw, in a few lines a result file can carry: per split, the number of images,
a sha256 of the (relative path, label) list (or of the pixels, for the generated suite), the
image formats and a sample of image sizes.

Two runs whose fingerprints match read the same list of images with the same labels; prepared
archives that differ (an incomplete download, image files where another group used tfds) show
up as different hashes and counts before anyone compares accuracies.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from typing import Any

import numpy as np
from PIL import Image

from .registry import Task

__all__ = ["split_fingerprint", "task_fingerprint"]

SIZE_SAMPLE = 5


def _list_fingerprint(dataset: Any, root: str | None) -> dict[str, Any]:
    digest = hashlib.sha256()
    for sample in dataset.samples:
        path = os.path.relpath(sample.path, root) if root else sample.path
        digest.update(f"{path}\t{sample.label}\n".encode())
    picks = np.linspace(0, len(dataset.samples) - 1, min(SIZE_SAMPLE, len(dataset.samples))).round().astype(int)
    formats: Counter[str] = Counter(os.path.splitext(s.path)[1].lower() or "(none)" for s in dataset.samples)
    sizes = []
    for index in sorted(set(picks.tolist())):
        try:
            with Image.open(dataset.samples[index].path) as image:
                sizes.append(list(image.size))
        except OSError:
            sizes.append(None)
    return {"images": len(dataset.samples), "sha256": digest.hexdigest(), "formats": dict(formats), "sizes": sizes}


def _array_fingerprint(dataset: Any) -> dict[str, Any]:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(dataset.images).tobytes())
    digest.update(np.asarray(dataset.labels, dtype=np.int64).tobytes())
    height, width = dataset.images.shape[1:3]
    return {
        "images": len(dataset),
        "sha256": digest.hexdigest(),
        "formats": {"in-memory": len(dataset)},
        "sizes": [[width, height]],
    }


def split_fingerprint(task: Task, split: str) -> dict[str, Any]:
    """The fingerprint of one split of ``task`` (reads the list, opens a few images for their size)."""
    dataset = task.dataset(split)
    if hasattr(dataset, "samples"):
        return _list_fingerprint(dataset, str(task.root) if task.root else None)
    if hasattr(dataset, "images"):
        return _array_fingerprint(dataset)
    return {"images": len(dataset), "sha256": None, "formats": {}, "sizes": []}


def task_fingerprint(task: Task, splits: list[str] | tuple[str, ...] | None = None) -> dict[str, Any]:
    """``{"task", "root", "splits": {split: fingerprint}}`` for the given splits (default: all)."""
    chosen = list(splits) if splits is not None else list(task.splits)
    return {
        "task": task.name,
        "root": str(task.root) if task.root else None,
        "options": {k: v for k, v in task.options.items()},
        "splits": {split: split_fingerprint(task, split) for split in dict.fromkeys(chosen)},
    }
