"""Few-shot lists of NOAH: ``<dataset>/annotations/train_meta.list.num_shot_<k>.seed_<s>``,
``val_meta.list``, ``test_meta.list``; each line ``<relpath> <label>`` split on the LAST space."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from .errors import DataError
from .lists import ImageListDataset, find_first, read_list_file
from .registry import Task, normalise_name, register_reader, reject_options, require_data_dir

SHOTS = (1, 2, 4, 8, 16)
SEEDS = (0, 1, 2)
ROOT_NAMES = ("few-shot", "fewshot", "few_shot", "FGFS")
_SPEC = re.compile(r"^(?P<dataset>[^/]+)/(?P<shots>\d+)-?shots?/seed_?(?P<seed>\d+)$")


@dataclass(frozen=True)
class FewshotDataset:
    num_classes: int
    folders: tuple[str, ...]
    image_dir: str  # relative to the dataset folder; "" = the folder itself


FEWSHOT_DATASETS: dict[str, FewshotDataset] = {
    "fgvc_aircraft": FewshotDataset(100, ("fgvc_aircraft", "fgvc-aircraft", "aircraft"), "images"),
    "food101": FewshotDataset(101, ("food-101", "food101", "food_101"), "images"),
    "oxford_flowers": FewshotDataset(102, ("oxford_flowers", "oxford-flowers102", "oxford_flowers102"), "images"),
    "oxford_pets": FewshotDataset(37, ("oxford_pets", "oxford-pets", "oxford_iiit_pet"), "images"),
    "stanford_cars": FewshotDataset(196, ("stanford_cars", "standford-cars", "stanford-cars"), ""),
}


def fewshot_task_names() -> list[str]:
    return [f"fewshot/{d}/{k}shot/seed{s}" for d in FEWSHOT_DATASETS for k in SHOTS for s in SEEDS]


def _canonical(name: str) -> str:
    key = normalise_name(name)
    for canonical, info in FEWSHOT_DATASETS.items():
        if key in {normalise_name(n) for n in (canonical, *info.folders)}:
            return canonical
    raise DataError(f"fewshot/{name}: unknown few-shot dataset; known: {', '.join(FEWSHOT_DATASETS)}.")


@register_reader("fewshot", fewshot_task_names)
def resolve_fewshot(rest: str, data_dir: Path | None, **options: Any) -> Task:
    """``fewshot/<dataset>/<k>shot/seed<s>``, e.g. ``fewshot/food101/4shot/seed0``."""
    match = _SPEC.match(rest)
    if match is None:
        raise DataError(
            f"fewshot/{rest}: expected fewshot/<dataset>/<k>shot/seed<s> with k in {SHOTS}, "
            f"e.g. fewshot/food101/4shot/seed0."
        )
    canonical = _canonical(match["dataset"])
    shots, seed = int(match["shots"]), int(match["seed"])
    spec = f"fewshot/{canonical}/{shots}shot/seed{seed}"
    reject_options(spec, options)
    if shots not in SHOTS:
        raise DataError(f"{spec}: {shots} shots is not a NOAH setting; expected one of {SHOTS}.")
    data_dir = require_data_dir(data_dir, spec)
    info = FEWSHOT_DATASETS[canonical]
    roots = [data_dir] + [data_dir / r for r in ROOT_NAMES]
    folder = find_first(
        (root / f for root in roots for f in info.folders),
        "dataset folder",
        spec,
        "Point data_dir at the folder that holds the few-shot dataset folders.",
    )
    annotations = folder / "annotations"
    lists = {
        "train": annotations / f"train_meta.list.num_shot_{shots}.seed_{seed}",
        "val": annotations / "val_meta.list",
        "test": annotations / "test_meta.list",
    }
    for split in ("train", "test"):
        if not lists[split].is_file():
            found = sorted(p.name for p in annotations.glob("*meta.list*")) if annotations.is_dir() else []
            raise DataError(
                f"{spec}: the {split} list {lists[split]} does not exist. Found in {annotations}: "
                f"{', '.join(found) or 'nothing'}. Pick a shot/seed that exists or re-download the "
                "NOAH lists."
            )
    if not lists["val"].is_file():
        del lists["val"]
    image_root = folder / info.image_dir if info.image_dir else folder
    return Task(
        name=spec,
        num_classes=info.num_classes,
        protocol="fewshot",
        splits=tuple(lists),
        train_split="train",
        eval_split="test",
        tuning_splits=("train", "val") if "val" in lists else None,
        root=folder,
        options={"shots": shots, "seed": seed},
        factory=partial(_dataset, lists, image_root, spec, info.num_classes),
    )


def _dataset(lists, image_root, name, num_classes, split, transform, on_bad_image):
    samples = read_list_file(lists[split], image_root, num_classes, f"{name} has {num_classes} classes")
    return ImageListDataset(samples, f"{name}:{split}", transform, on_bad_image, num_classes)
