"""Where a dataset lies under ``data_dir``: its folder spellings, its image folders, and the search.

The same dataset sits in different places depending on who prepared it: NOAH's repository
(``few-shot/oxford-pets/annotations`` with the images in ``images/``), NOAH's scripts
(``oxford_pets/``, one flat folder per dataset), CoOp's data guide (``oxford_flowers/jpg``,
``imagenet/images/train``). A reader names the spellings and image folders it knows; the helpers
here try each of them, and when nothing fits they say every place they looked.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError
from .lists import list_relpaths
from .registry import normalise_name

FEWSHOT_ROOTS = ("few-shot", "fewshot", "few_shot", "FGFS")
DG_ROOTS = ("domain-generalization", "domain_generalization", "dg")
_PROBED_LINES = 100


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset's class count, the folder names it goes by, and the folders inside it that may
    hold its images (``""`` = the dataset folder itself), in the order they are tried."""

    num_classes: int
    folders: tuple[str, ...]
    image_dirs: tuple[str, ...] = ("",)


def canonical_name(name: str, known: dict[str, DatasetInfo], spec: str, kind: str) -> str:
    """The key of ``known`` that ``name`` spells (the key itself or one of its folder names)."""
    key = normalise_name(name)
    for canonical, info in known.items():
        if key in {normalise_name(n) for n in (canonical, *info.folders)}:
            return canonical
    raise DataError(f"{spec}: unknown {kind}; known: {', '.join(known)}.")


def candidate_folders(data_dir: Path, roots: Sequence[str], names: Sequence[str]) -> list[Path]:
    """``data_dir/<name>`` and ``data_dir/<root>/<name>`` for every spelling, in that order."""
    return [base / name for base in [data_dir, *(data_dir / r for r in roots)] for name in names]


def existing_folders(candidates: Iterable[Path]) -> list[Path]:
    """The candidates that exist, each once (a symlinked spelling counts once)."""
    found: dict[str, Path] = {}
    for path in candidates:
        if path.is_dir():
            found.setdefault(os.path.realpath(path), path)
    return list(found.values())


def looked_in(paths: Iterable[Path]) -> str:
    return "".join(f"\n  {p}" for p in paths)


def require_folders(candidates: list[Path], kind: str, spec: str, fix: str) -> list[Path]:
    """The existing candidates; none raises a :class:`DataError` listing all of them and ``fix``."""
    folders = existing_folders(candidates)
    if not folders:
        raise DataError(f"{spec}: no {kind} found. Looked for:{looked_in(candidates)}\n{fix}")
    return folders


def first_with(folders: Sequence[Path], relpath: str) -> Path | None:
    """The first folder holding the file ``relpath``."""
    return next((f for f in folders if (f / relpath).is_file()), None)


def image_candidates(folders: Sequence[Path], image_dirs: Sequence[str]) -> list[Path]:
    return [folder / d if d else folder for folder in folders for d in image_dirs]


def locate_images(list_file: Path, candidates: Sequence[Path], spec: str) -> Path:
    """The candidate folder that the paths of ``list_file`` are relative to.

    Lists in the wild are relative to ``images/``, ``jpg/``, ``train/``, the dataset folder…;
    the first candidate under which one of the list's first images exists wins, so a layout is
    recognised from its files rather than from its name.
    """
    relpaths = list_relpaths(list_file, _PROBED_LINES)
    for relpath in relpaths:
        for candidate in candidates:
            if (candidate / relpath).is_file():
                return candidate
    example = relpaths[0] if relpaths else "?"
    raise DataError(
        f"{spec}: none of the first {len(relpaths)} images of {list_file} (e.g. {example!r}) is under any "
        f"of:{looked_in(candidates)}\nPut the images in one of these folders (where NOAH's or CoOp's "
        "layout keeps them), or point data_dir at the folder that holds them."
    )
