"""K folds of a task's tuning pair, for choosing hyper-parameters on more than one validation split.

The task option ``folds: K`` (any reader, any task with a tuning pair) adds the splits
``fold<k>-train`` and ``fold<k>-val`` (k = 1..K): the union of the tuning pair (VTAB-1k: train800
then val200, 1,000 images) cut into K folds stratified by class, ``fold<k>-val`` being fold k and
``fold<k>-train`` the other K-1 folds. Deterministic, with no random draw: the images of each class,
in the pair's order, are dealt to the folds in turn, each class starting where the previous one
stopped, so the folds differ in size by at most one image and hold every class in proportion.

    snftune train ... --data-options folds=5 --split fold2-train --eval-split fold2-val

The evaluation split (test) is not part of any fold. A fold split is a dataset of the reader's own
kind (an image list, images in memory), so caches and fingerprints treat it as any other split.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from ..inputs import check_value
from .errors import DataError

__all__ = ["FOLD_SPLIT", "MAX_FOLDS", "fold_assignment", "fold_split_names", "parse_fold_split", "with_folds"]

MAX_FOLDS = 100
FOLD_SPLIT = re.compile(r"^fold(\d+)-(train|val)$")


def fold_split_names(folds: int) -> tuple[str, ...]:
    """``fold1-train, fold1-val, ..., fold<K>-val``."""
    return tuple(f"fold{k}-{part}" for k in range(1, folds + 1) for part in ("train", "val"))


def parse_fold_split(split: str) -> tuple[int, str] | None:
    """``"fold2-val"`` -> ``(2, "val")``; None for any other split name."""
    match = FOLD_SPLIT.match(split)
    return (int(match.group(1)), match.group(2)) if match else None


def check_folds(value: Any, spec: str) -> int:
    """The ``folds`` task option as a whole number in [2, :data:`MAX_FOLDS`], or a one-line error."""
    return check_value(value, f"{spec}: folds", int, 2, MAX_FOLDS, DataError)


def fold_assignment(labels: list[int] | np.ndarray, folds: int) -> np.ndarray:
    """The fold (0-based) of every image: each class's images, in order, dealt to the folds in
    turn, starting where the previous class stopped (sizes differ by at most one)."""
    labels = np.asarray(labels, dtype=np.int64)
    assignment = np.empty(len(labels), dtype=np.int64)
    start = 0
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        assignment[where] = (start + np.arange(len(where))) % folds
        start = (start + len(where)) % folds
    return assignment


def _labels(dataset: Any, name: str) -> list[int]:
    labels = getattr(dataset, "labels", None)
    if labels is None:
        raise DataError(f"{name}: folds need a split that lists its labels; this reader's splits do not")
    return [int(label) for label in labels]


def _subset(first: Any, second: Any, keep: np.ndarray, name: str) -> Any:
    """The images of ``first`` then ``second`` at the indices ``keep``, as a dataset of their kind."""
    subset = copy.copy(first)
    if hasattr(first, "samples"):  # an image list: its entries
        samples = [*first.samples, *second.samples]
        subset.samples = [samples[i] for i in keep]
        subset.bad_images = set(first.bad_images) | set(second.bad_images)
    elif hasattr(first, "images"):  # images held in memory
        subset.images = np.concatenate([first.images, second.images])[keep]
        subset.labels = np.concatenate([np.asarray(first.labels), np.asarray(second.labels)])[keep]
        if hasattr(subset, "_content_key"):
            subset._content_key = None  # a hash of the pixels: computed again for the fold's
    else:
        raise DataError(f"{name}: folds need a reader whose splits are image lists or images in memory")
    if hasattr(subset, "name"):
        subset.name = name
    return subset


def with_folds(factory: Callable, task_name: str, tuning: tuple[str, str], folds: int) -> Callable:
    """A task's dataset factory that also builds the fold splits of its tuning pair."""

    def dataset(split: str, transform: Callable | None, options: Any) -> Any:
        fold = parse_fold_split(split)
        if fold is None:
            return factory(split, transform, options)
        index, part = fold
        first, second = (factory(s, transform, options) for s in tuning)
        labels = _labels(first, task_name) + _labels(second, task_name)
        if len(labels) < folds:
            raise DataError(f"{task_name}: {folds} folds of {len(labels)} images leave a fold empty; use fewer folds")
        assignment = fold_assignment(labels, folds)
        keep = np.flatnonzero(assignment == index - 1) if part == "val" else np.flatnonzero(assignment != index - 1)
        return _subset(first, second, keep, f"{task_name}:{split}of{folds}")

    return dataset
