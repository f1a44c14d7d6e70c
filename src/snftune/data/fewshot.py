"""Few-shot lists of NOAH: ``<dataset>/annotations/train_meta.list.num_shot_<k>.seed_<s>``,
``val_meta.list``, ``test_meta.list``; each line ``<relpath> <label>`` split on the LAST space.

The lists are found in any spelling of the dataset folder (NOAH's repository: ``few-shot/oxford-pets``;
NOAH's scripts and CoOp: ``oxford_pets``), and the images in any of the dataset's image folders
(``images/``, CoOp's ``jpg/`` for Flowers, the folder itself for Stanford Cars) of any of those
folders, whichever the list's paths point into. ``fewshot/imagenet/...`` reads NOAH's ImageNet
lists (see :mod:`snftune.data.imagenet`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from .errors import DataError
from .imagenet import SOURCE as IMAGENET
from .imagenet import source_task
from .layout import (
    FEWSHOT_ROOTS,
    DatasetInfo,
    candidate_folders,
    canonical_name,
    first_with,
    image_candidates,
    locate_images,
    looked_in,
    require_folders,
)
from .lists import ReadOptions, read_list_file
from .registry import Task, register_reader, reject_options, require_data_dir

SHOTS = (1, 2, 4, 8, 16)
SEEDS = (0, 1, 2)
_SPEC = re.compile(r"^(?P<dataset>[^/]+)/(?P<shots>\d+)-?shots?/seed_?(?P<seed>\d+)$")
FIX = (
    "Point data_dir at NOAH's data/ folder (the one holding few-shot/), or at the folder holding the dataset "
    "folders (NOAH's scripts; CoOp's, with NOAH's annotations/ in each)."
)

FEWSHOT_DATASETS: dict[str, DatasetInfo] = {
    "fgvc_aircraft": DatasetInfo(100, ("fgvc_aircraft", "fgvc-aircraft", "aircraft"), ("images",)),
    "food101": DatasetInfo(101, ("food-101", "food101", "food_101"), ("images",)),
    "oxford_flowers": DatasetInfo(102, ("oxford_flowers", "oxford-flowers102", "oxford_flowers102"), ("images", "jpg")),
    "oxford_pets": DatasetInfo(37, ("oxford_pets", "oxford-pets", "oxford_iiit_pet"), ("images",)),
    "stanford_cars": DatasetInfo(196, ("stanford_cars", "standford-cars", "stanford-cars"), ("", "images")),
    "imagenet": IMAGENET,
}


@dataclass(frozen=True)
class _Lists:
    """The dataset folders (the one holding the lists first) and the list file of each split."""

    folders: tuple[Path, ...]
    files: dict[str, Path]


def fewshot_task_names() -> list[str]:
    return [f"fewshot/{d}/{k}shot/seed{s}" for d in FEWSHOT_DATASETS for k in SHOTS for s in SEEDS]


@register_reader("fewshot", fewshot_task_names)
def resolve_fewshot(rest: str, data_dir: Path | None, **options: Any) -> Task:
    """``fewshot/<dataset>/<k>shot/seed<s>``, e.g. ``fewshot/food101/4shot/seed0``."""
    match = _SPEC.match(rest)
    if match is None:
        raise DataError(
            f"fewshot/{rest}: expected fewshot/<dataset>/<k>shot/seed<s> with k in {SHOTS}, "
            f"e.g. fewshot/food101/4shot/seed0."
        )
    canonical = canonical_name(match["dataset"], FEWSHOT_DATASETS, f"fewshot/{rest}", "few-shot dataset")
    shots, seed = int(match["shots"]), int(match["seed"])
    spec = f"fewshot/{canonical}/{shots}shot/seed{seed}"
    if "seed" in options:
        raise DataError(f"{spec}: the seed of NOAH's list is part of the spec (seed{seed}); drop the seed option.")
    reject_options(spec, options)
    if shots not in SHOTS:
        raise DataError(f"{spec}: {shots} shots is not a NOAH setting; expected one of {SHOTS}.")
    data_dir = require_data_dir(data_dir, spec)
    if canonical == "imagenet":
        return source_task(data_dir, shots, seed, spec, "fewshot")
    info = FEWSHOT_DATASETS[canonical]
    lists = _find_lists(data_dir, info, shots, seed, spec)
    return Task(
        name=spec,
        num_classes=info.num_classes,
        protocol="fewshot",
        splits=tuple(lists.files),
        train_split="train",
        eval_split="test",
        tuning_splits=("train", "val") if "val" in lists.files else None,
        root=lists.folders[0],
        options={"shots": shots, "seed": seed},
        expected_sizes={"train": shots * info.num_classes},  # k images of every class
        factory=partial(_dataset, lists, info, spec),
    )


def _find_lists(data_dir: Path, info: DatasetInfo, shots: int, seed: int, spec: str) -> _Lists:
    folders = require_folders(candidate_folders(data_dir, FEWSHOT_ROOTS, info.folders), "dataset folder", spec, FIX)
    train = f"annotations/train_meta.list.num_shot_{shots}.seed_{seed}"
    with_lists = first_with(folders, train)
    if with_lists is None:
        found = sorted({p.name for f in folders for p in (f / "annotations").glob("*meta.list*")})
        raise DataError(
            f"{spec}: the train list is in none of the dataset folders; looked for:"
            f"{looked_in(f / train for f in folders)}\nFound: {', '.join(found) or 'no lists'}. Pick a shot/seed "
            "that exists, or copy NOAH's annotations/ folder of this dataset into one of these folders."
        )
    annotations = with_lists / "annotations"
    files = {"train": with_lists / train, "val": annotations / "val_meta.list", "test": annotations / "test_meta.list"}
    if not files["test"].is_file():
        raise DataError(
            f"{spec}: the test list {files['test']} does not exist, next to {files['train'].name}. "
            "Re-download NOAH's annotations/ folder of this dataset."
        )
    if not files["val"].is_file():
        del files["val"]
    return _Lists((with_lists, *(f for f in folders if f != with_lists)), files)


def _dataset(lists: _Lists, info: DatasetInfo, name: str, split: str, transform, options: ReadOptions):
    list_file = lists.files[split]
    image_root = locate_images(list_file, image_candidates(lists.folders, info.image_dirs), name)
    samples = read_list_file(list_file, image_root, info.num_classes, f"{name} has {info.num_classes} classes")
    return options.dataset(samples, f"{name}:{split}", transform, info.num_classes)
