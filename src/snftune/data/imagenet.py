"""ImageNet-1k 16-shot (NOAH) as the source, and ImageNet-V2/-Sketch/-A/-R as domain-generalisation targets.

Every target is labelled with ImageNet-1k indices (sorted-wnid order), so one 1000-way head serves
all of them. ImageNet-A and -R hold 200 of the 1000 classes: ``Task.class_subset`` lists those
indices and the default evaluation restricts the logits to them (``logits[:, class_subset]``, then
map the arg-max back through ``class_subset``), as SSF and most robustness papers do. The spec
suffix ``/all1000`` (e.g. ``dg/imagenet-r/all1000``) keeps all 1000 logits instead, as NOAH does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache, partial
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import DataError
from .lists import ImageListDataset, Sample, check_label, find_first, image_files, read_list_file
from .registry import Task, register_reader, reject_options, require_data_dir

NUM_CLASSES = 1000
ROOT_NAMES = ("dg", "domain-generalization", "domain_generalization")
SOURCE_FOLDERS = ("imagenet", "ImageNet", "imagenet-1k", "imagenet1k", "ILSVRC2012")
TRAIN_LIST = "annotations/train_meta.list.num_shot_16.seed_0"
TARGET_LISTS = ("annotations/test_meta.list", "test_meta.list", "annotations/val_meta.list", "val_meta.list")
CONVENTIONS = {"mask200": "top-1 over the 200 present classes", "all1000": "top-1 over all 1000 classes"}


@dataclass(frozen=True)
class Target:
    folders: tuple[str, ...]
    wnid_file: str | None = None  # the 200-class subset shipped as package data


TARGETS: dict[str, Target] = {
    "imagenet-v2": Target(
        (
            "imagenet-v2",
            "imagenetv2",
            "imagenet_v2",
            "imagenetv2-matched-frequency-format-val",
            "imagenetv2-matched-frequency",
        )
    ),
    "imagenet-sketch": Target(("imagenet-sketch", "imagenet_sketch", "ImageNet-Sketch", "sketch")),
    "imagenet-a": Target(("imagenet-a", "imagenet_a", "imagenet-adversarial"), "imagenet_a_wnids.txt"),
    "imagenet-r": Target(("imagenet-r", "imagenet_r", "imagenet-rendition"), "imagenet_r_wnids.txt"),
}


def _resource_lines(name: str) -> list[str]:
    text = resources.files("snftune.data").joinpath("resources", name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


@cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in the standard (sorted) order: index i is class i."""
    return tuple(_resource_lines("imagenet_wnids.txt"))


@cache
def subset_indices(target: str) -> tuple[int, ...]:
    """ImageNet-1k indices of the 200 classes of ``imagenet-a`` or ``imagenet-r``, ascending."""
    info = TARGETS[target]
    if info.wnid_file is None:
        raise DataError(f"{target} covers all 1000 ImageNet classes; it has no class subset.")
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    return tuple(index[w] for w in _resource_lines(info.wnid_file))


def dg_task_names() -> list[str]:
    return ["dg/imagenet"] + [f"dg/{t}" for t in TARGETS]


def _folders(data_dir: Path, names: tuple[str, ...]) -> list[Path]:
    return [root / n for root in [data_dir] + [data_dir / r for r in ROOT_NAMES] for n in names]


def _probe_root(list_file: Path, candidates: list[Path]) -> Path:
    """Lists in the wild are relative to either the split folder or the dataset folder: take the
    candidate under which the first listed image exists (the first candidate if none does)."""
    with open(list_file, encoding="utf-8") as handle:
        first = next((line.strip() for line in handle if line.strip()), "")
    relpath = first.rsplit(None, 1)[0] if first else ""
    return next((c for c in candidates if (c / relpath).is_file()), candidates[0])


def _tree_samples(folder: Path, name: str, allowed: set[int] | None) -> list[Sample]:
    """Class sub-folders named by wnid (ImageNet/-A/-R/-Sketch) or by index (ImageNet-V2)."""
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    samples = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if sub.name in index:
            label = index[sub.name]
        elif re.fullmatch(r"\d+", sub.name):
            label = int(sub.name)
            check_label(label, NUM_CLASSES, f"{name}: folder {sub}", "ImageNet-1k index")
        else:
            raise DataError(
                f"{name}: class folder {sub} is neither an ImageNet wnid nor a class index. "
                "Expected <root>/<wnid>/<image> or <root>/<index>/<image>, or an annotation list."
            )
        if allowed is not None and label not in allowed:
            raise DataError(f"{name}: class folder {sub} (index {label}) is not one of the dataset's classes.")
        samples.extend(Sample(str(p), label, f"class folder {sub}") for p in image_files(sub))
    if not samples:
        raise DataError(f"{name}: no images found under {folder} (empty split).")
    return samples


def _list_samples(list_file: Path, roots: list[Path], name: str, allowed: set[int] | None) -> list[Sample]:
    samples = read_list_file(list_file, _probe_root(list_file, roots), NUM_CLASSES, "ImageNet-1k index")
    if allowed is not None:
        for s in samples:
            if s.label not in allowed:
                raise DataError(
                    f"{s.origin}: label {s.label} is not one of the {len(allowed)} classes of {name}. "
                    "Lists for ImageNet-A/-R must carry ImageNet-1k indices of their 200 classes."
                )
    return samples


def _source_split(imagenet: Path, split: str, name: str) -> list[Sample]:
    if split == "train":
        return _list_samples(imagenet / TRAIN_LIST, [imagenet / "train", imagenet], name, None)
    val_list = imagenet / "annotations" / "val_meta.list"
    if val_list.is_file():
        return _list_samples(val_list, [imagenet / "val", imagenet], name, None)
    if (imagenet / "val").is_dir():
        return _tree_samples(imagenet / "val", name, None)
    raise DataError(
        f"{name}: no ImageNet validation data: looked for {val_list} and {imagenet / 'val'}/<wnid>/. "
        "Add the ILSVRC2012 val images sorted into wnid folders, or the NOAH val_meta.list."
    )


def _find_source(data_dir: Path, spec: str) -> Path:
    imagenet = find_first(
        _folders(data_dir, SOURCE_FOLDERS),
        "ImageNet folder",
        spec,
        "Point data_dir at the folder that holds imagenet/ (with annotations/ and train/).",
    )
    if not (imagenet / TRAIN_LIST).is_file():
        raise DataError(
            f"{spec}: {imagenet / TRAIN_LIST} does not exist; the domain-generalisation protocol trains "
            "on the NOAH ImageNet 16-shot list. Place it under imagenet/annotations/."
        )
    return imagenet


@register_reader("dg", dg_task_names)
def resolve_dg(rest: str, data_dir: Path | None, **options: Any) -> Task:
    """``dg/imagenet`` (train: 16-shot, test: ILSVRC2012 val) or ``dg/<target>[/all1000]``
    (train: the same 16-shot list, test: the target)."""
    target, _, convention = rest.partition("/")
    target = target.lower().replace("_", "-")
    if target not in ("imagenet", *TARGETS):
        raise DataError(f"dg/{rest}: unknown target; known: {', '.join(dg_task_names())}.")
    if convention and (convention not in CONVENTIONS or target not in ("imagenet-a", "imagenet-r")):
        raise DataError(
            f"dg/{rest}: the suffix {convention!r} is only for imagenet-a / imagenet-r, one of "
            f"{', '.join(CONVENTIONS)} (default mask200)."
        )
    spec = f"dg/{rest}"
    reject_options(spec, options)
    data_dir = require_data_dir(data_dir, spec)
    imagenet = _find_source(data_dir, spec)
    name = f"dg/{target}" + (f"/{convention}" if convention == "all1000" else "")
    if target == "imagenet":
        factory = partial(_source_dataset, imagenet, name)
        return Task(
            name=name,
            num_classes=NUM_CLASSES,
            protocol="dg",
            splits=("train", "test"),
            train_split="train",
            eval_split="test",
            root=imagenet,
            factory=factory,
        )

    info = TARGETS[target]
    folder = find_first(
        _folders(data_dir, info.folders),
        "target folder",
        spec,
        "Point data_dir at the folder that holds the ImageNet variants.",
    )
    subset = subset_indices(target) if info.wnid_file else None
    allowed = set(subset) if subset else None
    list_file = next((folder / c for c in TARGET_LISTS if (folder / c).is_file()), None)
    convention = convention or "mask200"
    return Task(
        name=name,
        num_classes=NUM_CLASSES,
        protocol="dg",
        splits=("train", "test"),
        train_split="train",
        eval_split="test",
        class_subset=subset if convention == "mask200" else None,
        root=folder,
        options={"convention": CONVENTIONS[convention]} if subset else {},
        factory=partial(_target_dataset, imagenet, folder, list_file, allowed, name),
    )


def _source_dataset(imagenet, name, split, transform, on_bad_image):
    samples = _source_split(imagenet, split, name)
    return ImageListDataset(samples, f"{name}:{split}", transform, on_bad_image, NUM_CLASSES)


def _target_dataset(imagenet, folder, list_file, allowed, name, split, transform, on_bad_image):
    if split == "train":
        samples = _source_split(imagenet, "train", name)
    elif list_file is not None:
        samples = _list_samples(list_file, [folder, folder / "images"], name, allowed)
    else:
        samples = _tree_samples(folder, name, allowed)
    return ImageListDataset(samples, f"{name}:{split}", transform, on_bad_image, NUM_CLASSES)
