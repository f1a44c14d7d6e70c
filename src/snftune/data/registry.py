"""Task specs (``vtab1k/cifar``, ``folder:/path``, …) resolved to :class:`Task` objects.

Each reader module registers the prefix it owns with :func:`register_reader`; this module knows
no dataset by name.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..suggest import did_you_mean
from .errors import DataError
from .lists import ReadOptions

PROTOCOLS = ("vtab", "fgvc", "fewshot", "dg", "other", "folder")
COMMON_OPTIONS = ("on_bad_image", "allow_outside_root")  # fields of ReadOptions, accepted for every spec
# ``folds`` (snftune.data.folds) is accepted for every spec with a tuning pair too.

DatasetFactory = Callable[[str, Callable | None, ReadOptions], Dataset]
Resolver = Callable[..., "Task"]


@dataclass(frozen=True)
class Task:
    """A resolved dataset: its class count, its splits and the protocol that says how to use them.

    ``train_split``/``eval_split`` are the protocol's final-run pair; ``tuning_splits`` the pair
    for choosing hyper-parameters (None when the data has no validation split). ``class_subset``
    lists the logit indices a prediction is restricted to at evaluation (ImageNet-A/-R: 200 of
    1000); None means all ``num_classes``. ``in_memory``: the splits are read whole from an archive
    into memory (CIFAR-100), so there are no image files to list or decode. ``expected_sizes`` holds
    the number of distinct images a split must have where the benchmark fixes it (VTAB-1k, VPT's
    FGVC splits, k-shot lists, the DG test sets, CIFAR-100); ``snftune data check`` compares
    against it. ``on_bad_image`` and
    ``allow_outside_root`` are the task options of :class:`~snftune.data.lists.ReadOptions`.
    """

    name: str
    num_classes: int
    protocol: str
    splits: tuple[str, ...]
    train_split: str
    eval_split: str | None
    tuning_splits: tuple[str, str] | None = None
    group: str | None = None
    class_subset: tuple[int, ...] | None = None
    class_names: tuple[str, ...] | None = None
    root: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)
    expected_sizes: dict[str, int] = field(default_factory=dict)
    on_bad_image: str = "error"
    allow_outside_root: bool = False
    in_memory: bool = False
    factory: DatasetFactory | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise DataError(f"{self.name}: protocol {self.protocol!r} is not one of {PROTOCOLS}")
        for split in (self.train_split, self.eval_split, *(self.tuning_splits or ())):
            if split is not None and split not in self.splits:
                raise DataError(f"{self.name}: split {split!r} is not among the available {self.splits}")
        self.read_options()  # validates on_bad_image and allow_outside_root

    def dataset(self, split: str, transform: Callable | None = None, on_bad_image: str | None = None) -> Dataset:
        """A torch Dataset of ``(image, label)``: a PIL RGB image unless ``transform`` maps it.

        ``on_bad_image`` overrides the task's own (the ``on_bad_image`` task option, default ``"error"``).
        """
        if split not in self.splits:
            raise DataError(f"{self.name}: no split {split!r}; available splits are {', '.join(self.splits)}.")
        assert self.factory is not None
        return self.factory(split, transform, self.read_options(on_bad_image))

    def read_options(self, on_bad_image: str | None = None) -> ReadOptions:
        """What the datasets of this task do with bad images and paths outside the root."""
        return ReadOptions(on_bad_image or self.on_bad_image, self.allow_outside_root)


@dataclass(frozen=True)
class _Reader:
    resolve: Resolver
    names: Callable[[], list[str]]
    separator: str


_READERS: dict[str, _Reader] = {}


def register_reader(prefix: str, names: Callable[[], list[str]], separator: str = "/") -> Callable:
    """Register ``resolve(rest, data_dir, **options) -> Task`` for specs ``<prefix><separator><rest>``."""

    def decorator(resolve: Resolver) -> Resolver:
        _READERS[prefix] = _Reader(resolve, names, separator)
        return resolve

    return decorator


def _split_spec(spec: str) -> tuple[str, str]:
    for prefix, reader in _READERS.items():
        head = prefix + reader.separator
        if spec.startswith(head):
            return prefix, spec[len(head) :]
    raise DataError(f"unknown task spec {spec!r}{_suggestion(spec)}; expected one of: {_known_forms()}")


def _known_forms() -> str:
    return ", ".join(f"{p}{r.separator}…" for p, r in sorted(_READERS.items()))


def _suggestion(spec: str) -> str:
    """An existing folder or file given without its prefix, else the nearest task name."""
    path = Path(spec).expanduser()
    if path.is_dir() and "folder" in _READERS:
        return f" (did you mean 'folder:{spec}'? {spec} is a folder)"
    if path.is_file() and "list" in _READERS:
        return f" (did you mean 'list:{spec}'? {spec} is a file)"
    return did_you_mean(spec, [*list_tasks(), *_READERS])


def resolve_task(spec: str, data_dir: str | os.PathLike | None = None, **options: Any) -> Task:
    """Resolve a task spec against ``data_dir`` (not needed for ``generated/…``).

    Every reader accepts ``on_bad_image`` (``"error"`` or ``"skip"``: the default of
    :meth:`Task.dataset`) and ``allow_outside_root`` (``False``: an image that resolves outside the
    dataset root is an error). Other keyword options go to the reader (e.g. ``seed``/``image_size``
    for generated tasks, ``num_classes`` for a custom VTAB-format or list task). ``folds: K`` adds
    the splits ``fold<k>-train``/``fold<k>-val`` of the tuning pair (:mod:`snftune.data.folds`).
    """
    prefix, rest = _split_spec(spec.strip())
    if not rest:
        names = _READERS[prefix].names()
        examples = f", e.g. {', '.join(names[:3])}" if names else f", e.g. {prefix}{_READERS[prefix].separator}<path>"
        raise DataError(f"task spec {spec!r} names no dataset after {prefix!r}{examples}")
    reading = ReadOptions(**{k: options.pop(k) for k in COMMON_OPTIONS if k in options})
    folds = options.pop("folds", None)
    task = _READERS[prefix].resolve(rest, Path(data_dir) if data_dir is not None else None, **options)
    task = replace(task, on_bad_image=reading.on_bad_image, allow_outside_root=reading.allow_outside_root)
    return _with_folds(task, folds) if folds is not None else task


def _with_folds(task: Task, folds: Any) -> Task:
    """``task`` with the fold splits of its tuning pair (the ``folds`` option: :mod:`.folds`)."""
    from .folds import check_folds, fold_split_names, with_folds

    folds = check_folds(folds, task.name)
    if task.tuning_splits is None:
        raise DataError(f"{task.name}: folds are cut from the tuning pair (train -> val), and this task has none")
    return replace(
        task,
        splits=(*task.splits, *fold_split_names(folds)),
        options={**task.options, "folds": folds},
        factory=with_folds(task.factory, task.name, task.tuning_splits, folds),
    )


def list_tasks(prefix: str | None = None) -> list[str]:
    """Canonical task names, all of them or those of one reader (``vtab1k``, ``fgvc``, ``fewshot``, …)."""
    if prefix is not None:
        prefix = prefix.rstrip("/:")
        if prefix not in _READERS:
            raise DataError(f"unknown task family {prefix!r}; known: {', '.join(sorted(_READERS))}")
        return list(_READERS[prefix].names())
    return [name for p in sorted(_READERS) for name in _READERS[p].names()]


def require_data_dir(data_dir: Path | None, spec: str) -> Path:
    if data_dir is None:
        raise DataError(f"{spec} is read from disk: pass data_dir (the folder that holds the datasets).")
    if not data_dir.is_dir():
        raise DataError(f"data_dir {data_dir} does not exist or is not a directory (needed for {spec}).")
    return data_dir


def normalise_name(name: str) -> str:
    """Spelling-insensitive key for folder/task aliases: lower case, letters and digits only."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def reject_options(spec: str, options: dict[str, Any], allowed: tuple[str, ...] = ()) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DataError(f"{spec}: unknown option(s) {unknown}; this reader accepts {[*allowed, *COMMON_OPTIONS]}.")
