"""VTAB-1k in the layout of the common generator.

``vtab-1k/<task>/{train800,val200,train800val200,test}.txt``, lines ``<relative/path> <label>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ..suggest import did_you_mean
from .errors import DataError
from .lists import ReadOptions, find_first, read_list_file
from .registry import Task, normalise_name, register_reader, reject_options, require_data_dir

SPLITS = ("train800", "val200", "train800val200", "test")
TRAIN_SIZES = {"train800": 800, "val200": 200, "train800val200": 1000}
ROOT_NAMES = ("vtab-1k", "vtab1k", "VTAB-1k", "vtab")


@dataclass(frozen=True)
class VtabTask:
    """A task's class count, group, test-split size (None: not fixed) and folder aliases."""

    num_classes: int
    group: str
    test_size: int | None
    aliases: tuple[str, ...] = ()


# Test sizes as VTAB's task-adaptation code fixes them (the test split of each source dataset).
VTAB_TASKS: dict[str, VtabTask] = {
    "cifar": VtabTask(100, "natural", 10_000, ("cifar100", "cifar-100")),
    "caltech101": VtabTask(102, "natural", 6_084, ("caltech",)),
    "dtd": VtabTask(47, "natural", 1_880),
    "oxford_flowers102": VtabTask(102, "natural", 6_149, ("oxford_flowers", "flowers102")),
    "oxford_iiit_pet": VtabTask(37, "natural", 3_669, ("oxford_pet", "oxford_pets", "pets")),
    "svhn": VtabTask(10, "natural", 26_032),
    "sun397": VtabTask(397, "natural", 21_750),
    "patch_camelyon": VtabTask(2, "specialized", 32_768, ("camelyon", "pcam")),
    "eurosat": VtabTask(10, "specialized", 5_400),
    "resisc45": VtabTask(45, "specialized", 6_300),
    "diabetic_retinopathy": VtabTask(5, "specialized", 42_670, ("retinopathy",)),
    "clevr_count": VtabTask(8, "structured", 15_000),
    "clevr_dist": VtabTask(6, "structured", 15_000),
    "dmlab": VtabTask(6, "structured", 22_735),
    "kitti": VtabTask(4, "structured", 711, ("kitti_dist",)),
    "dsprites_loc": VtabTask(16, "structured", 73_728),
    "dsprites_ori": VtabTask(16, "structured", 73_728),
    "smallnorb_azi": VtabTask(18, "structured", 12_150),
    "smallnorb_ele": VtabTask(9, "structured", 12_150),
}


def _known_tasks() -> dict[str, VtabTask]:
    """The 19 VTAB tasks plus the generated suite, which writes itself in this layout (any test size)."""
    from .generated import GENERATED_TASKS

    known = dict(VTAB_TASKS)
    for name, info in GENERATED_TASKS.items():
        known[name] = VtabTask(info.num_classes, info.group, None)
    return known


def _canonical(name: str, known: dict[str, VtabTask]) -> str | None:
    key = normalise_name(name)
    for canonical, info in known.items():
        if key in {normalise_name(n) for n in (canonical, *info.aliases)}:
            return canonical
    return None


def vtab_task_names() -> list[str]:
    return [f"vtab1k/{name}" for name in VTAB_TASKS]


@register_reader("vtab1k", vtab_task_names)
def resolve_vtab(rest: str, data_dir: Path | None, num_classes: int | None = None, **options: Any) -> Task:
    """``vtab1k/<task>``: one of the 19 tasks (aliases accepted), a generated task written to disk,
    or any other folder in the same layout when ``num_classes`` is given."""
    spec = f"vtab1k/{rest}"
    reject_options(spec, options)
    data_dir = require_data_dir(data_dir, spec)
    known = _known_tasks()
    canonical = _canonical(rest, known)
    if canonical is None and num_classes is None:
        raise DataError(
            f"{spec}: unknown VTAB-1k task {rest!r}{did_you_mean(rest, known)}. Known tasks: {', '.join(known)}. "
            "For another folder in the VTAB-1k layout pass num_classes=<int>."
        )
    info = known.get(canonical) if canonical else None
    folder_names = (canonical, *info.aliases) if info else (rest,)
    if info is not None and num_classes is not None and num_classes != info.num_classes:
        raise DataError(
            f"{spec}: num_classes={num_classes} contradicts the known count {info.num_classes} for "
            f"{canonical}. Drop the num_classes option."
        )
    roots = [data_dir / r for r in ROOT_NAMES] + [data_dir]
    candidates = [root / f for root in roots for f in dict.fromkeys(folder_names)]
    folder = find_first(
        candidates,
        "task folder",
        spec,
        "Point data_dir at the folder that holds vtab-1k/ (or at vtab-1k/ itself).",
    )
    missing = [s for s in SPLITS if not (folder / f"{s}.txt").is_file()]
    if missing:
        raise DataError(
            f"{spec}: {folder} lacks the split list(s) {', '.join(m + '.txt' for m in missing)}; "
            f"a VTAB-1k task folder holds {', '.join(s + '.txt' for s in SPLITS)}."
        )
    n = info.num_classes if info else int(num_classes)
    name = f"vtab1k/{canonical or rest}"
    test_size = {"test": info.test_size} if info and info.test_size else {}
    return Task(
        name=name,
        num_classes=n,
        protocol="vtab",
        splits=SPLITS,
        train_split="train800val200",
        eval_split="test",
        tuning_splits=("train800", "val200"),
        group=info.group if info else None,
        root=folder,
        expected_sizes={**TRAIN_SIZES, **test_size},
        factory=partial(_dataset, folder, name, n),
    )


def _dataset(folder: Path, name: str, num_classes: int, split: str, transform, options: ReadOptions):
    samples = read_list_file(folder / f"{split}.txt", folder, num_classes, f"{name} has {num_classes} classes")
    return options.dataset(samples, f"{name}:{split}", transform, num_classes)
