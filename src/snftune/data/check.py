"""``snftune data check``: does a dataset on disk hold what its benchmark expects?

For each task it reports the size of every split against the benchmark's (``Task.expected_sizes``),
the classes each split lacks, listed images that are missing or do not decode, and images whose
bytes occur both in a training split and in the evaluation split. The splits are listed by the
readers themselves (``Task.dataset``) and decoded by the function training uses (``load_rgb``),
so the check sees exactly the files and labels a run would read. The report is plain data
(:meth:`DataReport.to_dict` is JSON), with one summary line per task.
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from PIL import Image
from tqdm import tqdm

from .errors import DataError, DataWarning
from .lists import ImageListDataset, Sample, UnreadableImageError, capped, load_rgb
from .registry import Task, list_tasks, resolve_task

EXPANDABLE = ("vtab1k", "fgvc")  # "<family>" or "<family>/all" checks every task of the family
# VTAB-1k draws its 1000 training images at random, so a rare class may be absent from them (sun397
# has 397 classes): there an absent class is a note, elsewhere a training split lacking one is a problem.
SAMPLED_PROTOCOLS = ("vtab",)
PROGRESS_FROM = 1000  # images: smaller tasks are read without a progress bar
_CHUNK = 256  # images per job of a worker process
_NAMED = 3  # items named per problem in a summary line


@dataclass
class SplitReport:
    """One split: ``lines`` listed, ``images`` distinct files among them (``expected`` by the
    benchmark, None where it fixes none), the labels present, and the files that failed."""

    split: str
    lines: int = 0
    images: int = 0
    expected: int | None = None
    classes: int = 0
    absent_classes: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class Duplicate:
    """A test image whose bytes (sha256) equal those of an image of a training split."""

    sha256: str
    train_split: str
    train_image: str
    test_image: str


@dataclass
class TaskReport:
    """What was found for one task; ``problems`` empty means the task is fit to train on."""

    spec: str
    name: str | None = None
    root: str | None = None
    splits: list[SplitReport] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # why the task could not be resolved (then nothing else was checked)
    modes: dict[str, int] = field(default_factory=dict)  # images per Pillow mode found (RGB, L, I;16, F, ...)

    @property
    def ok(self) -> bool:
        return not self.problems and self.error is None

    def summary(self) -> str:
        """One line: ``<task>: ok (sizes)`` or ``<task>: N problem(s): …``, paths relative to the task's folder."""
        if self.error is not None:
            return f"{self.spec}: not checked: {_first_sentence(self.error, self.spec)}"
        if self.ok:
            sizes = ", ".join(f"{s.split} {s.images}" for s in self.splits)
            notes = f"; note: {'; '.join(self.notes)}" if self.notes else ""
            line = f"{self.name}: ok ({sizes} images){notes}"
        else:
            line = f"{self.name or self.spec}: {len(self.problems)} problem(s): {'; '.join(self.problems)}"
        return line.replace(f"{self.root}{os.sep}", "") if self.root else line


@dataclass
class DataReport:
    """The reports of every task a spec names (``vtab1k`` names 19)."""

    spec: str
    data_dir: str | None
    tasks: list[TaskReport]

    @property
    def ok(self) -> bool:
        return all(task.ok for task in self.tasks)

    def to_dict(self) -> dict[str, Any]:
        tasks = [{**asdict(t), "ok": t.ok, "summary": t.summary()} for t in self.tasks]
        return {"spec": self.spec, "data_dir": self.data_dir, "ok": self.ok, "tasks": tasks}


@dataclass
class _Listing:
    samples: list[Sample] = field(default_factory=list)  # files that exist
    missing: list[Sample] = field(default_factory=list)
    error: str | None = None

    @property
    def listed(self) -> list[Sample]:
        return self.samples + self.missing


def expand_spec(spec: str) -> list[str]:
    """``vtab1k`` and ``vtab1k/all`` (likewise ``fgvc``) name every task of the family; other specs themselves."""
    family = spec.strip().removesuffix("/all").rstrip("/")
    return list_tasks(family) if family in EXPANDABLE else [spec.strip()]


def check_data(
    spec: str,
    data_dir: str | os.PathLike | None = None,
    options: dict[str, Any] | None = None,
    workers: int = 0,
    progress: bool = False,
) -> DataReport:
    """Check every task ``spec`` names (see :func:`check_task`).

    One task that cannot be resolved raises :class:`DataError` (no dataset there: bad input).
    Of a family (``vtab1k``), a task that cannot be resolved is reported as a problem of that
    task, unless none can: then the first error is raised.
    """
    specs = expand_spec(spec)
    if len(specs) == 1:
        return DataReport(spec, _text(data_dir), [check_task(specs[0], data_dir, options, workers, progress)])
    reports, errors = [], []
    for one in specs:
        try:
            reports.append(check_task(one, data_dir, options, workers, progress))
        except DataError as exc:
            errors.append(exc)
            reports.append(TaskReport(one, error=_one_line(str(exc))))
    if len(errors) == len(specs):
        raise errors[0]
    return DataReport(spec, _text(data_dir), reports)


def check_task(
    spec: str,
    data_dir: str | os.PathLike | None = None,
    options: dict[str, Any] | None = None,
    workers: int = 0,
    progress: bool = False,
) -> TaskReport:
    """Resolve ``spec`` and check its splits: sizes, classes, every image's existence and decoding,
    and training/test duplicates by content. ``workers`` > 0 decodes in that many processes;
    ``progress`` shows a bar on a terminal for tasks of :data:`PROGRESS_FROM` images or more."""
    task = resolve_task(spec, data_dir, **(options or {}))
    if task.in_memory:
        return _check_in_memory(spec, task)
    listings = {split: _list_split(task, split) for split in task.splits}
    origins = _first_origins(listing.samples for listing in listings.values())
    inspected = inspect_images(list(origins.items()), workers, progress, f"{task.name}: reading images")
    report = TaskReport(spec, task.name, str(task.root) if task.root else None)
    report.splits = [_split_report(task, split, listing, inspected) for split, listing in listings.items()]
    report.modes = dict(sorted(Counter(mode for _, _, mode in inspected.values() if mode).items()))
    report.duplicates = _duplicates(task, listings, inspected)
    report.problems, report.notes = _findings(task, report, listings, inspected)
    return report


def _check_in_memory(spec: str, task: Task) -> TaskReport:
    """A task read from an archive into memory (CIFAR-100): split sizes and classes, and test images
    whose pixels equal a training image's. Nothing to find missing or undecodable."""
    report = TaskReport(spec, task.name, str(task.root))
    digests: dict[str, list[str]] = {}
    for split in task.splits:
        try:
            dataset = task.dataset(split)
        except DataError as exc:
            error = _one_line(str(exc)).removeprefix(f"{task.name}: ")
            report.splits.append(SplitReport(split, expected=task.expected_sizes.get(split), error=error))
            continue
        labels = {int(label) for label in dataset.labels}
        report.splits.append(
            SplitReport(
                split,
                lines=len(dataset),
                images=len(dataset),
                expected=task.expected_sizes.get(split),
                classes=len(labels),
                absent_classes=_class_names(task, labels, split),
            )
        )
        digests[split] = [hashlib.sha256(image.tobytes()).hexdigest() for image in dataset.images]
    training: dict[str, tuple[str, str]] = {}
    for split, values in digests.items():
        if split != task.eval_split:
            for index, digest in enumerate(values):
                training.setdefault(digest, (split, f"{split}[{index}]"))
    for index, digest in enumerate(digests.get(task.eval_split or "", [])):
        if digest in training:
            split, image = training[digest]
            report.duplicates.append(Duplicate(digest, split, image, f"{task.eval_split}[{index}]"))
    report.problems, report.notes = _findings(task, report, {s: _Listing() for s in task.splits}, {})
    return report


def _first_origins(groups: Iterable[Sequence[Sample]]) -> dict[str, str]:
    """``{path: origin}`` of every sample, a file listed by several splits named by its first line
    (train800.txt rather than train800val200.txt)."""
    origins: dict[str, str] = {}
    for samples in groups:
        for sample in samples:
            origins.setdefault(sample.path, sample.origin)
    return origins


def _list_split(task: Task, split: str) -> _Listing:
    """The split as the reader lists it; missing files kept aside rather than raised."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)  # the report counts what these would say
            dataset = task.dataset(split, on_bad_image="skip")
    except DataError as exc:
        return _Listing(error=_one_line(str(exc)).removeprefix(f"{task.name}:{split}: "))
    if not isinstance(dataset, ImageListDataset):
        raise DataError(
            f"{task.name} is drawn in memory, so there is nothing on disk to check. Write it with "
            "snftune.data.generated.write_vtab_layout and check vtab1k/<task> with --data-dir."
        )
    return _Listing(list(dataset.samples), list(dataset.missing))


def sha256_of(path: str) -> str:
    """The sha256 of a file's bytes (the identity of an image, whatever its name)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


Inspection = tuple[str | None, str | None, str | None]
"""(sha256 of the file's bytes, why it cannot be decoded or None, its Pillow mode or None)."""


def _inspect(item: tuple[str, str]) -> Inspection:
    path, origin = item
    try:
        digest = sha256_of(path)
    except OSError as exc:
        return None, f"cannot read {path} ({origin}): {exc}", None
    try:
        with Image.open(path) as image:
            mode = image.mode
    except Exception:  # load_rgb says why, in its words
        mode = None
    try:
        load_rgb(path, origin)
    except UnreadableImageError as exc:
        return digest, exc.detail, mode
    return digest, None, mode


def _inspect_chunk(items: list[tuple[str, str]]) -> list[Inspection]:
    return [_inspect(item) for item in items]


def inspect_images(
    items: Sequence[tuple[str, str]], workers: int = 0, progress: bool = False, desc: str = "reading images"
) -> dict[str, Inspection]:
    """``{path: (sha256, problem, mode)}`` for ``(path, origin)`` items, each file read and decoded once.

    Worker processes, not threads: :func:`load_rgb` turns Pillow's decompression-bomb warning
    into an error with a process-wide warning filter.
    """
    chunks = [list(items[i : i + _CHUNK]) for i in range(0, len(items), _CHUNK)]
    # disable=None: tqdm shows the bar only on a terminal
    disable = None if progress and len(items) >= PROGRESS_FROM else True
    results: dict[str, Inspection] = {}
    with tqdm(total=len(items), desc=desc, unit="img", file=sys.stderr, leave=False, disable=disable) as bar:
        if workers > 0 and len(chunks) > 1:
            with ProcessPoolExecutor(min(workers, len(chunks))) as pool:
                outcomes = pool.map(_inspect_chunk, chunks)
                for chunk, outcome in zip(chunks, outcomes, strict=True):
                    results.update(zip((path for path, _ in chunk), outcome, strict=True))
                    bar.update(len(chunk))
        else:
            for chunk in chunks:
                results.update(zip((path for path, _ in chunk), _inspect_chunk(chunk), strict=True))
                bar.update(len(chunk))
    return results


def _class_names(task: Task, labels: set[int], split: str) -> list[str]:
    """The classes of the split's universe (the evaluated subset on the eval split) absent from ``labels``."""
    universe = task.class_subset if split == task.eval_split and task.class_subset else range(task.num_classes)
    absent = [c for c in universe if c not in labels]
    return [task.class_names[c] if task.class_names else str(c) for c in absent]


def _split_report(task: Task, split: str, listing: _Listing, inspected: dict) -> SplitReport:
    report = SplitReport(split, expected=task.expected_sizes.get(split), error=listing.error)
    if listing.error:
        return report
    labels = {s.label for s in listing.listed}
    report.lines = len(listing.listed)
    report.images = len({s.path for s in listing.listed})
    report.classes = len(labels)
    report.absent_classes = _class_names(task, labels, split)
    report.missing = [f"{s.path} ({s.origin})" for s in listing.missing]
    report.unreadable = [problem for s in listing.samples if (problem := inspected[s.path][1])]
    return report


def _duplicates(task: Task, listings: dict[str, _Listing], inspected: dict) -> list[Duplicate]:
    """Pairs (training image, test image) with equal bytes; each training image under the first split listing it."""
    test = listings.get(task.eval_split) if task.eval_split else None
    if test is None or test.error:
        return []
    training: dict[str, dict[str, str]] = {}  # sha256 -> {path: split}
    for split, listing in listings.items():
        if split == task.eval_split:
            continue
        for sample in listing.samples:
            digest = inspected[sample.path][0]
            if digest is not None:
                training.setdefault(digest, {}).setdefault(sample.path, split)
    pairs = []
    for path in dict.fromkeys(s.path for s in test.samples):
        digest = inspected[path][0]
        for train_path, split in training.get(digest, {}).items() if digest else ():
            pairs.append(Duplicate(digest, split, train_path, path))
    return pairs


def _findings(task: Task, report: TaskReport, listings: dict[str, _Listing], inspected: dict) -> tuple[list, list]:
    """The problems (anything that makes a run's number untrustworthy) and the notes of a task."""
    problems, notes = [], []
    for split in report.splits:
        if split.error:
            problems.append(f"{split.split}: {split.error}")
            continue
        if split.expected is not None and split.images != split.expected:
            problems.append(f"{split.split} has {split.images} images, expected {split.expected}")
        if split.lines != split.images:
            notes.append(f"{split.split} lists {split.lines} lines for {split.images} distinct images")
        if split.absent_classes:
            absent = f"{split.split} lacks {len(split.absent_classes)} class(es): {_capped(split.absent_classes)}"
            training = split.split == task.train_split and task.protocol not in SAMPLED_PROTOCOLS
            (problems if training else notes).append(absent)
    missing = _first_origins(listing.missing for listing in listings.values())
    if missing:
        problems.append(f"{len(missing)} missing image(s): {_capped([f'{p} ({o})' for p, o in missing.items()])}")
    unreadable = [problem for _, problem, _ in inspected.values() if problem]
    if set(report.modes) - {"RGB"}:
        modes = ", ".join(f"{mode} {count}" for mode, count in report.modes.items())
        notes.append(f"image modes {modes} (16-bit read as 0..65535 and float as 0..1, scaled to 8 bits)")
    if unreadable:
        problems.append(f"{len(unreadable)} unreadable image(s): {_capped(unreadable)}")
    if report.duplicates:
        pairs = [f"{d.test_image} = {d.train_image} ({d.train_split})" for d in report.duplicates]
        problems.append(
            f"{len(report.duplicates)} image(s) of {task.eval_split} identical (sha256) to training images: "
            f"{_capped(pairs)}"
        )
    return problems, notes


def _capped(items: Sequence[str]) -> str:
    return capped(items, _NAMED, ", ")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _first_sentence(text: str, spec: str) -> str:
    """``vtab1k/dtd: no task folder found. Looked for: …`` -> ``no task folder found``."""
    return text.removeprefix(f"{spec}: ").split(". ")[0].removesuffix(".")


def _text(path: str | os.PathLike | None) -> str | None:
    return None if path is None else str(path)
