"""Users' own data: an ImageFolder tree (``folder:<path>``) or ``<path> <label>`` lists (``list:<path>``).

``folder:<root>`` reads ``<root>/{train,val,test}/<class>/<image>``; classes are the sorted
sub-folders of ``train/`` and val/test may hold only those; a class folder without images is an
error. ``list:<dir>`` reads ``<dir>/{train,val,test}.txt``, whose val/test labels must all occur
in train; ``list:<file>`` is a single split named after the file stem. List paths are relative to
the list file's folder, the dataset root (absolute paths are accepted when they lie under it).
A relative ``<path>`` in the spec is taken relative to ``data_dir`` when one is given.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from ..inputs import check_value
from .errors import DataError
from .lists import IMAGE_EXTENSIONS, MAX_CLASSES, ReadOptions, Sample, capped, image_files, read_list_file
from .registry import Task, register_reader, reject_options

FOLDER_SPLITS = ("train", "val", "test")
LIST_SUFFIXES = (".txt", ".list")
_MAX_NAMED = 10


def _path(rest: str, data_dir: Path | None) -> Path:
    path = Path(rest).expanduser()
    return data_dir / path if data_dir is not None and not path.is_absolute() else path


def _final_pair(splits: tuple[str, ...]) -> tuple[str, str | None, tuple[str, str] | None]:
    eval_split = "test" if "test" in splits else ("val" if "val" in splits else None)
    tuning = ("train", "val") if "val" in splits else None
    return "train", eval_split, tuning


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() for p in folder.rglob("*"))


def class_folders(split_dir: Path, name: str) -> list[str]:
    """The sorted class sub-folders of ``split_dir``; one without any image file is an error.

    An empty folder in ``train/`` would become a class the model never sees (a larger head, and
    every test image of it wrong); in val/test it is the mark of an incomplete copy.
    """
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    empty = [split_dir / c for c in classes if not _has_images(split_dir / c)]
    if empty:
        raise DataError(
            f"{name}: {len(empty)} class folder(s) hold no images ({', '.join(IMAGE_EXTENSIONS)}): "
            f"{capped(empty, _MAX_NAMED, ', ')}. Add the images, or remove the folder(s)."
        )
    return classes


@register_reader("folder", lambda: [], separator=":")
def resolve_folder(rest: str, data_dir: Path | None, **options: Any) -> Task:
    spec = f"folder:{rest}"
    reject_options(spec, options)
    root = _path(rest, data_dir)
    if not root.is_dir():
        raise DataError(f"{spec}: {root} is not a directory. Expected <root>/train/<class>/<image>.")
    splits = tuple(s for s in FOLDER_SPLITS if (root / s).is_dir())
    if "train" not in splits:
        raise DataError(
            f"{spec}: looked for {root / 'train'} and found {', '.join(splits) or 'no split folders'}. "
            f"An ImageFolder tree needs train/ (and val/ and/or test/) with one sub-folder per class."
        )
    classes = tuple(class_folders(root / "train", spec))
    if not classes:
        raise DataError(f"{spec}: {root / 'train'} has no class sub-folders.")
    train, eval_split, tuning = _final_pair(splits)
    return Task(
        name=f"folder:{root}",
        num_classes=len(classes),
        protocol="folder",
        splits=splits,
        train_split=train,
        eval_split=eval_split,
        tuning_splits=tuning,
        class_names=classes,
        root=root,
        factory=partial(_folder_dataset, root, classes, f"folder:{root}"),
    )


def _folder_dataset(root: Path, classes: tuple[str, ...], name: str, split, transform, options: ReadOptions):
    index = {c: i for i, c in enumerate(classes)}
    found = class_folders(root / split, name)
    extra = [c for c in found if c not in index]
    if extra:
        raise DataError(
            f"{name}: {root / split} has class folder(s) {extra} that train/ lacks; labels come from "
            f"the {len(classes)} class folders of train/. Add them to train/ or remove them."
        )
    samples = [
        Sample(str(p), index[c], f"class folder {root / split / c}", str(root))
        for c in found
        for p in image_files(root / split / c)
    ]
    if not samples:
        raise DataError(f"{name}: {root / split} holds no images (empty split).")
    return options.dataset(samples, f"{name}:{split}", transform, len(classes))


def check_labels_in_train(samples: dict[str, list[Sample]], lists: dict[str, Path], train: str) -> None:
    """Every label of val/test must occur in train: a class never trained on is a class never
    predicted, and with the class count inferred from the labels the head may not even have it."""
    trained = {s.label for s in samples[train]}
    for split, split_samples in samples.items():
        unseen = sorted({s.label for s in split_samples} - trained)
        if unseen:
            raise DataError(
                f"{lists[split]}: {len(unseen)} label(s) occur here but never in {lists[train].name}: "
                f"{capped(unseen, _MAX_NAMED, ', ')}; a model trained on {lists[train].name} cannot predict them. "
                f"Add training lines for these classes, or drop them from {lists[split].name}."
            )


@register_reader("list", lambda: [], separator=":")
def resolve_list(rest: str, data_dir: Path | None, num_classes: int | None = None, **options: Any) -> Task:
    spec = f"list:{rest}"
    reject_options(spec, options)
    if num_classes is not None:  # checked here, or a label check would say "expected 0..-2"
        num_classes = check_value(num_classes, "num_classes", int, 1, MAX_CLASSES, DataError)
    path = _path(rest, data_dir)
    if path.is_dir():
        lists = {
            s: path / f"{s}{suffix}"
            for s in FOLDER_SPLITS
            for suffix in LIST_SUFFIXES
            if (path / f"{s}{suffix}").is_file()
        }
        if "train" not in lists:
            raise DataError(
                f"{spec}: looked for {', '.join(str(path / ('train' + x)) for x in LIST_SUFFIXES)}; "
                "a list folder needs train.txt (and val.txt and/or test.txt) of '<path> <label>' lines."
            )
        train, eval_split, tuning = _final_pair(tuple(lists))
    elif path.is_file():
        lists = {path.stem: path}
        train, eval_split, tuning = path.stem, None, None
    else:
        raise DataError(f"{spec}: {path} does not exist. Pass a list file or a folder with train.txt.")
    name = f"list:{path}"
    what = f"{name} has {num_classes} classes"
    # Every split is parsed now, so a wrong label fails here rather than in the middle of a run.
    samples = {split: read_list_file(f, f.parent, num_classes, what) for split, f in lists.items()}
    check_labels_in_train(samples, lists, train)
    if num_classes is None:
        num_classes = 1 + max(s.label for s in samples[train])
    return Task(
        name=name,
        num_classes=int(num_classes),
        protocol="folder",
        splits=tuple(lists),
        train_split=train,
        eval_split=eval_split,
        tuning_splits=tuning,
        root=path,
        factory=partial(_list_dataset, lists, name, int(num_classes)),
    )


def _list_dataset(lists: dict[str, Path], name: str, num_classes: int, split, transform, options: ReadOptions):
    samples = read_list_file(lists[split], lists[split].parent, num_classes, f"{name} has {num_classes} classes")
    return options.dataset(samples, f"{name}:{split}", transform, num_classes)
