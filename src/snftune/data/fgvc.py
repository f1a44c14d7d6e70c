"""FGVC with the VPT split files: ``<dataset>/{train,val,test}.json`` mapping image path -> class id.

Class ids are mapped to 0..C-1 with ONE mapping built from the train split and applied to every
split; a per-split mapping (as in the VPT code) silently mislabels a split that lacks a class.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

from ..inputs import read_text
from .errors import DataError
from .layout import DatasetInfo, canonical_name
from .lists import ReadOptions, Sample, find_first
from .registry import Task, register_reader, reject_options, require_data_dir

JSON_SPLITS = ("train", "val", "test")
ROOT_NAMES = ("fgvc", "FGVC")


FGVC_DATASETS: dict[str, DatasetInfo] = {
    "cub": DatasetInfo(200, ("CUB_200_2011", "cub", "CUB", "cub200"), ("images",)),
    "nabirds": DatasetInfo(555, ("nabirds", "NABirds"), ("images",)),
    "oxford_flowers": DatasetInfo(102, ("OxfordFlower", "OxfordFlowers", "oxford_flowers", "flowers")),
    "stanford_dogs": DatasetInfo(120, ("StanfordDogs", "Stanford-dogs", "stanford_dogs", "dogs"), ("Images",)),
    "stanford_cars": DatasetInfo(196, ("StanfordCars", "Stanford-cars", "stanford_cars", "cars")),
}


# (train, val, test) image counts of VPT's split files (the VPT paper's dataset table): train and val
# are VPT's 90/10 division of each dataset's official training set.
VPT_SPLIT_SIZES: dict[str, tuple[int, int, int]] = {
    "cub": (5_394, 600, 5_794),
    "nabirds": (21_536, 2_393, 24_633),
    "oxford_flowers": (1_020, 1_020, 6_149),
    "stanford_dogs": (10_800, 1_200, 8_580),
    "stanford_cars": (7_329, 815, 8_041),
}


def fgvc_task_names() -> list[str]:
    return [f"fgvc/{name}" for name in FGVC_DATASETS]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(read_text(path, DataError, "split file"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}). Re-download the VPT split files.") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object {{image_path: class_id}}, found {type(data).__name__}.")
    if not data:
        raise DataError(f"{path}: the split is empty. Re-download the VPT split files.")
    return data


def _sort_key(class_id: Any) -> tuple[int, Any]:
    return (0, int(class_id)) if str(class_id).lstrip("-").isdigit() else (1, str(class_id))


def build_label_map(train: dict[str, Any], train_file: Path, name: str, num_classes: int) -> dict[str, int]:
    """Sorted distinct train class ids -> 0..C-1; the train split must hold exactly ``num_classes`` ids."""
    class_ids = sorted({str(v) for v in train.values()}, key=_sort_key)
    if len(class_ids) != num_classes:
        raise DataError(
            f"{train_file}: the train split holds {len(class_ids)} distinct class ids, but {name} has "
            f"{num_classes} classes. Check that the file belongs to {name} and is complete."
        )
    return {cid: i for i, cid in enumerate(class_ids)}


@register_reader("fgvc", fgvc_task_names)
def resolve_fgvc(rest: str, data_dir: Path | None, **options: Any) -> Task:
    canonical = canonical_name(rest, FGVC_DATASETS, f"fgvc/{rest}", "FGVC dataset")
    spec = f"fgvc/{canonical}"
    reject_options(spec, options)
    data_dir = require_data_dir(data_dir, spec)
    info = FGVC_DATASETS[canonical]
    roots = [data_dir] + [data_dir / r for r in ROOT_NAMES]
    folder = find_first(
        (root / f for root in roots for f in info.folders),
        "dataset folder",
        spec,
        "Point data_dir at the folder that holds the FGVC dataset folders.",
    )
    missing = [s for s in JSON_SPLITS if not (folder / f"{s}.json").is_file()]
    if missing:
        raise DataError(
            f"{spec}: {folder} lacks {', '.join(m + '.json' for m in missing)}; the VPT split files "
            f"{', '.join(s + '.json' for s in JSON_SPLITS)} belong in the dataset folder."
        )
    train_file = folder / "train.json"
    label_map = build_label_map(_read_json(train_file), train_file, spec, info.num_classes)
    image_root = folder / info.image_dirs[0]  # the VPT json keys are relative to it
    train, val, test = VPT_SPLIT_SIZES[canonical]
    return Task(
        name=spec,
        num_classes=info.num_classes,
        protocol="fgvc",
        splits=("train", "val", "trainval", "test"),
        train_split="train",
        eval_split="test",
        tuning_splits=("train", "val"),
        root=folder,
        expected_sizes={"train": train, "val": val, "trainval": train + val, "test": test},
        factory=partial(_dataset, folder, image_root, spec, label_map, info.num_classes),
    )


def _samples(json_file: Path, image_root: Path, label_map: dict[str, int], name: str) -> list[Sample]:
    samples = []
    for key, class_id in _read_json(json_file).items():
        origin = f"{json_file} entry {key!r}"
        if str(class_id) not in label_map:
            raise DataError(
                f"{origin}: class id {class_id!r} does not occur in the train split, so it has no label. "
                f"Expected one of the {len(label_map)} train class ids; check the split files of {name}."
            )
        samples.append(Sample(str(image_root / key), label_map[str(class_id)], origin, str(image_root)))
    return samples


def _dataset(folder, image_root, name, label_map, num_classes, split, transform, options: ReadOptions):
    parts = ("train", "val") if split == "trainval" else (split,)
    samples = [s for p in parts for s in _samples(folder / f"{p}.json", image_root, label_map, name)]
    return options.dataset(samples, f"{name}:{split}", transform, num_classes)
