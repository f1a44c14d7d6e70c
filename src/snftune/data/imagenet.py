"""ImageNet-1k k-shot (NOAH's lists) as the source, and ImageNet-V2/-Sketch/-A/-R as domain-generalisation targets.

Every target is labelled with ImageNet-1k indices (sorted-wnid order), so one 1000-way head serves
all of them. ImageNet-A and -R hold 200 of the 1000 classes: ``Task.class_subset`` lists those
indices and the default evaluation restricts the logits to them (``logits[:, class_subset]``, then
map the arg-max back through ``class_subset``), as SSF and most robustness papers do. The spec
suffix ``/all1000`` (e.g. ``dg/imagenet-r/all1000``) keeps all 1000 logits instead, as NOAH does.

Where things lie (every combination is tried, see :mod:`snftune.data.layout`):

- the k-shot lists ``annotations/train_meta.list.num_shot_<k>.seed_<s>`` in an ImageNet folder:
  ``few-shot/imagenet/`` (NOAH's repository) or ``imagenet/`` (NOAH's scripts, or copied into
  CoOp's ``imagenet/``); their paths are relative to ``train/`` (NOAH) or ``images/train/`` (CoOp),
  in that folder or in another ImageNet folder under ``data_dir``;
- the test split: ``annotations/val_meta.list`` relative to ``val/`` or ``images/val/``, or else
  the ILSVRC2012 val images sorted into ``<wnid>/`` folders there;
- the targets: NOAH's ``domain-generalization/<target>/annotations/val_meta.list`` (paths relative
  to the target folder, as CoOp's layout has them), or CoOp's class folders
  (``imagenet-adversarial/imagenet-a/<wnid>/``, ``imagenet-sketch/images/<wnid>/``, …).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache, partial
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import DataError
from .layout import (
    DG_ROOTS,
    FEWSHOT_ROOTS,
    DatasetInfo,
    candidate_folders,
    existing_folders,
    first_with,
    image_candidates,
    locate_images,
    looked_in,
    require_folders,
)
from .lists import ReadOptions, Sample, check_label, image_files, read_list_file
from .registry import Task, register_reader, reject_options, require_data_dir
from .val_labels import flat_val_samples

NUM_CLASSES = 1000
VAL_SIZE = 50_000  # ILSVRC-2012 val
DG_SHOTS = 16
SEEDS = (0, 1, 2)  # NOAH's list seeds
SOURCE = DatasetInfo(
    NUM_CLASSES,
    ("imagenet", "ImageNet", "imagenet-1k", "imagenet1k", "ILSVRC2012"),
    ("train", "images/train", "ILSVRC/Data/CLS-LOC/train", ""),  # NOAH, CoOp, Kaggle, the folder itself
)
VAL_DIRS = ("val", "images/val", "ILSVRC/Data/CLS-LOC/val")  # the last: Kaggle's layout
VAL_LIST = "annotations/val_meta.list"
TARGET_LISTS = ("annotations/test_meta.list", "test_meta.list", "annotations/val_meta.list", "val_meta.list")
CONVENTIONS = {"mask200": "top-1 over the 200 present classes", "all1000": "top-1 over all 1000 classes"}
WHAT = "ImageNet-1k index"
SOURCE_FIX = (
    "Point data_dir at NOAH's data/ folder (lists in few-shot/imagenet/annotations/, images in train/ and val/ "
    "next to them), or at the folder holding imagenet/ (NOAH's scripts; CoOp's imagenet/images/ plus NOAH's "
    "annotations/)."
)
_SEED = re.compile(r"^seed_?(\d+)$")


@dataclass(frozen=True)
class Target:
    folders: tuple[str, ...]
    size: int  # images in the published test set
    wnid_file: str | None = None  # the 200-class subset shipped as package data
    class_dirs: tuple[str, ...] = ()  # sub-folders holding <wnid>/ or <index>/ folders (CoOp's layout)


TARGETS: dict[str, Target] = {
    "imagenet-v2": Target(
        (
            "imagenet-v2",
            "imagenetv2",
            "imagenet_v2",
            "imagenetv2-matched-frequency-format-val",
            "imagenetv2-matched-frequency",
        ),
        10_000,
        class_dirs=("imagenetv2-matched-frequency-format-val",),
    ),
    "imagenet-sketch": Target(
        ("imagenet-sketch", "imagenet_sketch", "ImageNet-Sketch", "sketch"), 50_889, class_dirs=("images", "sketch")
    ),
    "imagenet-a": Target(
        ("imagenet-a", "imagenet_a", "imagenet-adversarial"), 7_500, "imagenet_a_wnids.txt", class_dirs=("imagenet-a",)
    ),
    "imagenet-r": Target(
        ("imagenet-r", "imagenet_r", "imagenet-rendition"), 30_000, "imagenet_r_wnids.txt", class_dirs=("imagenet-r",)
    ),
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
    """``dg/<target>`` (seed 0) and ``dg/<target>/seed<s>`` for NOAH's seeds."""
    targets = ["imagenet", *TARGETS]
    return [f"dg/{t}" for t in targets] + [f"dg/{t}/seed{s}" for t in targets for s in SEEDS]


def train_list_name(shots: int, seed: int) -> str:
    return f"annotations/train_meta.list.num_shot_{shots}.seed_{seed}"


@dataclass(frozen=True)
class Source:
    """The ImageNet folders under ``data_dir``: the one holding the k-shot list first, then the
    others, which may hold the images (NOAH's lists next to CoOp's ``imagenet/images``)."""

    folders: tuple[Path, ...]
    train_list: Path


def find_source(data_dir: Path, shots: int, seed: int, spec: str) -> Source:
    """The ImageNet folders, ordered with the one holding ``shots``-shot list ``seed`` first."""
    candidates = candidate_folders(data_dir, (*FEWSHOT_ROOTS, *DG_ROOTS), SOURCE.folders)
    folders = require_folders(candidates, "ImageNet folder", spec, SOURCE_FIX)
    relpath = train_list_name(shots, seed)
    with_list = first_with(folders, relpath)
    if with_list is None:
        found = sorted({p.name for f in folders for p in (f / "annotations").glob("train_meta.list*")})
        raise DataError(
            f"{spec}: NOAH's ImageNet {shots}-shot list for seed {seed} is in none of the ImageNet folders; "
            f"looked for:{looked_in(f / relpath for f in folders)}\nFound: {', '.join(found) or 'no lists'}. "
            f"{SOURCE_FIX}"
        )
    ordered = (with_list, *(f for f in folders if f != with_list))
    return Source(ordered, with_list / relpath)


def source_task(data_dir: Path, shots: int, seed: int, name: str, protocol: str) -> Task:
    """ImageNet-1k trained on NOAH's ``shots``-shot list ``seed``, tested on the ILSVRC2012 val set."""
    source = find_source(data_dir, shots, seed, name)
    return Task(
        name=name,
        num_classes=NUM_CLASSES,
        protocol=protocol,
        splits=("train", "test"),
        train_split="train",
        eval_split="test",
        root=source.folders[0],
        options={"shots": shots, "seed": seed},
        expected_sizes={"train": shots * NUM_CLASSES, "test": VAL_SIZE},
        factory=partial(_source_dataset, source, name),
    )


def _tree_samples(folder: Path, name: str, allowed: set[int] | None) -> list[Sample]:
    """Class sub-folders named by wnid (ImageNet/-A/-R/-Sketch) or by index (ImageNet-V2)."""
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    samples = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if sub.name in index:
            label = index[sub.name]
        elif re.fullmatch(r"\d+", sub.name):
            label = int(sub.name)
            check_label(label, NUM_CLASSES, f"{name}: folder {sub}", WHAT)
        else:
            raise DataError(
                f"{name}: class folder {sub} is neither an ImageNet wnid nor a class index. "
                "Expected <root>/<wnid>/<image> or <root>/<index>/<image>, or an annotation list."
            )
        if allowed is not None and label not in allowed:
            raise DataError(f"{name}: class folder {sub} (index {label}) is not one of the dataset's classes.")
        samples.extend(Sample(str(p), label, f"class folder {sub}", str(folder)) for p in image_files(sub))
    if not samples:
        raise DataError(f"{name}: no images found under {folder} (empty split).")
    return samples


def _list_samples(list_file: Path, image_roots: list[Path], name: str, allowed: set[int] | None) -> list[Sample]:
    samples = read_list_file(list_file, locate_images(list_file, image_roots, name), NUM_CLASSES, WHAT)
    if allowed is not None:
        for s in samples:
            if s.label not in allowed:
                raise DataError(
                    f"{s.origin}: label {s.label} is not one of the {len(allowed)} classes of {name}. "
                    "Lists for ImageNet-A/-R must carry ImageNet-1k indices of their 200 classes."
                )
    return samples


def source_samples(source: Source, split: str, name: str) -> list[Sample]:
    """The ``train`` (k-shot list) or ``test`` (ILSVRC2012 val) samples of ``source``."""
    if split == "train":
        return _list_samples(source.train_list, image_candidates(source.folders, SOURCE.image_dirs), name, None)
    with_val_list = first_with(source.folders, VAL_LIST)
    if with_val_list is not None:
        val_roots = image_candidates(source.folders, (*VAL_DIRS, ""))
        return _list_samples(with_val_list / VAL_LIST, val_roots, name, None)
    folders = existing_folders(image_candidates(source.folders, VAL_DIRS))
    trees = [f for f in folders if any(p.is_dir() for p in f.iterdir())]
    if trees:
        return _tree_samples(trees[0], name, None)
    if folders:
        return flat_val_samples(folders[0], source.folders, imagenet_wnids(), name)
    looked = [f / VAL_LIST for f in source.folders] + image_candidates(source.folders, VAL_DIRS)
    raise DataError(
        f"{name}: no ImageNet validation data; looked for:{looked_in(looked)}\nAdd the ILSVRC2012 val "
        "images sorted into <wnid>/ folders (val/ or CoOp's images/val/), or a val_meta.list of them, or the "
        "flat val/ folder with its ground truth (docs/data.md)."
    )


def _parse(spec: str) -> tuple[str, str, int | None]:
    """``dg/<target>[/all1000][/seed<s>]`` -> (target, convention or "", seed or None)."""
    target, *parts = spec.split("/")
    target = target.lower().replace("_", "-")
    if target not in ("imagenet", *TARGETS):
        raise DataError(f"dg/{spec}: unknown target; known: imagenet, {', '.join(TARGETS)}.")
    convention, seed = "", None
    for part in parts:
        match = _SEED.match(part)
        if match and seed is None:
            seed = int(match[1])
        elif part in CONVENTIONS and not convention and target in ("imagenet-a", "imagenet-r"):
            convention = part
        else:
            raise DataError(
                f"dg/{spec}: expected dg/<target>[/all1000][/seed<s>], e.g. dg/imagenet-r/all1000/seed1; "
                f"{part!r} is not a seed, and a convention suffix is only for imagenet-a / imagenet-r "
                f"({', '.join(CONVENTIONS)}; default mask200)."
            )
    return target, convention, seed


def _task_name(target: str, convention: str, seed: int | None) -> str:
    """The spec, normalised; the seed only when the spec names one, so ``dg/imagenet`` keeps its name."""
    parts = ["dg", target]
    if convention == "all1000":
        parts.append(convention)
    if seed is not None:
        parts.append(f"seed{seed}")
    return "/".join(parts)


@register_reader("dg", dg_task_names)
def resolve_dg(rest: str, data_dir: Path | None, **options: Any) -> Task:
    """``dg/imagenet[/seed<s>]`` (train: NOAH's 16-shot list ``s``, default 0; test: ILSVRC val) or
    ``dg/<target>[/all1000][/seed<s>]`` (train: the same list, test: the target)."""
    target, convention, seed = _parse(rest)
    spec = f"dg/{rest}"
    if "seed" in options:
        raise DataError(f"{spec}: the seed of NOAH's 16-shot list is part of the spec, e.g. dg/{target}/seed1.")
    reject_options(spec, options)
    data_dir = require_data_dir(data_dir, spec)
    name = _task_name(target, convention, seed)
    seed = seed or 0
    if target == "imagenet":
        return source_task(data_dir, DG_SHOTS, seed, name, "dg")
    source = find_source(data_dir, DG_SHOTS, seed, spec)
    info = TARGETS[target]
    folders = require_folders(
        candidate_folders(data_dir, DG_ROOTS, info.folders),
        "target folder",
        spec,
        "Point data_dir at NOAH's data/ folder (holding domain-generalization/) or at the folder holding "
        "the ImageNet variants (NOAH's scripts, CoOp).",
    )
    subset = subset_indices(target) if info.wnid_file else None
    convention = convention or "mask200"
    return Task(
        name=name,
        num_classes=NUM_CLASSES,
        protocol="dg",
        splits=("train", "test"),
        train_split="train",
        eval_split="test",
        class_subset=subset if convention == "mask200" else None,
        root=folders[0],
        options={"seed": seed, **({"convention": CONVENTIONS[convention]} if subset else {})},
        expected_sizes={"train": DG_SHOTS * NUM_CLASSES, "test": info.size},
        factory=partial(_target_dataset, source, folders, info, set(subset) if subset else None, name),
    )


def _target_samples(folders: list[Path], info: Target, allowed: set[int] | None, name: str) -> list[Sample]:
    """The target's own list (NOAH), else its class folders (CoOp, or the dataset as downloaded)."""
    for relpath in TARGET_LISTS:
        with_list = first_with(folders, relpath)
        if with_list is not None:
            ordered = [with_list, *(f for f in folders if f != with_list)]
            return _list_samples(with_list / relpath, image_candidates(ordered, ("", "images")), name, allowed)
    trees = existing_folders(image_candidates(folders, (*info.class_dirs, "")))
    return _tree_samples(trees[0], name, allowed)


def _source_dataset(source, name, split, transform, options: ReadOptions):
    samples = source_samples(source, split, name)
    return options.dataset(samples, f"{name}:{split}", transform, NUM_CLASSES)


def _target_dataset(source, folders, info, allowed, name, split, transform, options: ReadOptions):
    if split == "train":
        samples = source_samples(source, "train", name)
    else:
        samples = _target_samples(folders, info, allowed, name)
    return options.dataset(samples, f"{name}:{split}", transform, NUM_CLASSES)


def imagenet_task_names() -> list[str]:
    return ["imagenet/16shot", *(f"imagenet/16shot/seed{s}" for s in SEEDS)]


@register_reader("imagenet", imagenet_task_names)
def resolve_imagenet(rest: str, data_dir: Path | None, **options: Any) -> Task:
    """``imagenet/16shot[/seed<s>]``: NOAH's 16-shot list ``s`` (default 0), top-1 on the ILSVRC2012 val set
    (protocol ``other``: the paper's "other visual recognition tasks")."""
    match = re.fullmatch(r"16-?shots?(?:/seed_?(\d+))?", rest)
    spec = f"imagenet/{rest}"
    if match is None:
        raise DataError(f"{spec}: expected imagenet/16shot or imagenet/16shot/seed<s> (NOAH's seeds {SEEDS}).")
    if "seed" in options:
        raise DataError(f"{spec}: the seed of NOAH's 16-shot list is part of the spec, e.g. imagenet/16shot/seed1.")
    reject_options(spec, options)
    name = f"imagenet/16shot/seed{match[1]}" if match[1] is not None else "imagenet/16shot"
    return source_task(require_data_dir(data_dir, spec), DG_SHOTS, int(match[1] or 0), name, "other")
