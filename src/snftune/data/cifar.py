"""CIFAR-100 read in place from either official archive: ``cifar-100-python`` or ``cifar-100-binary``.

Either may be the ``.tar.gz`` as downloaded (its members are read into memory, nothing is
extracted) or the folder it extracts to, directly in ``data_dir`` or in ``data_dir/cifar100/``
(or ``cifar-100``, ``CIFAR100``); ``data_dir`` may also be the extracted folder itself.

- python (what torchvision downloads): ``train``, ``test`` and ``meta`` are Python 2 pickles of
  dicts (``b'data'``: N x 3072 uint8, rows of R, G, B planes of 32 x 32; ``b'fine_labels'``,
  ``b'coarse_labels'``; ``meta``: ``b'fine_label_names'``, ``b'coarse_label_names'``). They are
  read by :func:`snftune.data.safe_pickle.load_plain`, which rebuilds plain data and numpy
  arrays only and refuses anything else in one line, running nothing.
- binary: ``train.bin``, ``test.bin``, records of 1 coarse label byte, 1 fine label byte and the
  same 3072 pixel bytes; ``fine_label_names.txt``, ``coarse_label_names.txt``.

Tasks: ``cifar100/full`` (all 50,000 training images, the 10,000 test images) and
``cifar100/<n>`` (n training images, n/100 of every class, 500 <= n <= 50,000). Selection uses a
class-balanced ``val`` of 50 training images per class (5,000) and ``tune``, the first
min(n/100, 450) images per class of the same draw, disjoint from ``val``: the subsets are nested
(the 500-image set lies in the 1,000-image one). One permutation per class, from ``seed``
(default 0), fixes every draw. Options: ``labels=fine`` (100 classes, default) or ``coarse``
(20 superclasses), ``seed``.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .generated import ArrayDataset
from .registry import Task, register_reader, reject_options, require_data_dir
from .safe_pickle import load_plain

TRAIN_SIZE, TEST_SIZE = 50_000, 10_000
VAL_FRACTION = 10  # a tenth of each class is the validation split (5,000 images)
VAL_PER_CLASS = 50  # of CIFAR-100's 500 training images per class
TUNE_PER_CLASS = TRAIN_SIZE // 100 - VAL_PER_CLASS  # at most 450 per class train the trials
MIN_SUBSET = 500
PIXELS = 3 * 32 * 32
RECORD = 2 + PIXELS  # binary archive: coarse label, fine label, pixels
LABEL_KINDS = {"fine": 100, "coarse": 20}
ARCHIVES = ("cifar-100-python", "cifar-100-binary")
HOLDERS = ("", "cifar100", "cifar-100", "CIFAR100", "CIFAR-100")
SPLITS = ("train", "tune", "val", "test")
_SUBSET = re.compile(r"^(full|\d+)$")
FIX = (
    "Put cifar-100-python.tar.gz or cifar-100-binary.tar.gz (as downloaded from "
    "https://www.cs.toronto.edu/~kriz/cifar.html), or the folder it extracts to, in data_dir or data_dir/cifar100/."
)


@dataclass(frozen=True)
class Archive:
    """One CIFAR-100 archive on disk: ``path`` (a ``.tar.gz`` or a folder) and its ``kind``."""

    path: Path
    kind: str  # "python" or "binary"

    @property
    def top(self) -> str:
        return f"cifar-100-{self.kind}"

    @property
    def members(self) -> tuple[str, ...]:
        if self.kind == "python":
            return ("train", "test", "meta")
        return ("train.bin", "test.bin", "fine_label_names.txt", "coarse_label_names.txt")

    def state(self) -> tuple[tuple[str, int, int, int], ...]:
        """What identifies the archive's contents without reading it (as the image cache does for
        files): path, size, modification and change time of the ``.tar.gz`` or of each member."""
        files = [self.path / m for m in self.members] if self.path.is_dir() else [self.path]
        states = []
        for path in files:
            try:
                stat = path.stat()
            except OSError:
                states.append((str(path), -1, -1, -1))  # reading will say what is missing
                continue
            states.append((str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns))
        return tuple(states)


@dataclass(frozen=True)
class Split:
    """One split of the archive: (N, 32, 32, 3) uint8 images, fine and coarse labels."""

    images: np.ndarray
    fine: np.ndarray
    coarse: np.ndarray


def find_archive(data_dir: Path, spec: str) -> Archive:
    """The first archive found: the python one before the binary one, a folder before a ``.tar.gz``."""
    looked = []
    for holder in HOLDERS:
        base = data_dir / holder if holder else data_dir
        for top in ARCHIVES:
            kind = top.rsplit("-", 1)[1]
            for candidate in (base / top, base / f"{top}.tar.gz"):
                looked.append(candidate)
                if candidate.is_dir() or candidate.is_file():
                    return Archive(candidate, kind)
        if base.name in ARCHIVES and base.is_dir():  # data_dir is the extracted folder
            return Archive(base, base.name.rsplit("-", 1)[1])
    shown = "".join(f"\n  {p}" for p in looked[:4])
    raise DataError(f"{spec}: no CIFAR-100 archive found; looked for (in data_dir and its cifar100/ …):{shown}\n{FIX}")


def _members(archive: Archive, names: Sequence[str]) -> dict[str, bytes]:
    """The bytes of ``names`` inside the archive (read into memory from a ``.tar.gz``)."""
    if archive.path.is_dir():
        missing = [n for n in names if not (archive.path / n).is_file()]
        if missing:
            raise DataError(f"{archive.path}: missing {', '.join(missing)}; the extracted archive is incomplete. {FIX}")
        return {n: (archive.path / n).read_bytes() for n in names}
    try:
        with tarfile.open(archive.path, "r:*") as tar:
            found = {}
            for name in names:
                member = tar.extractfile(f"{archive.top}/{name}")
                if member is None:
                    raise KeyError(name)
                found[name] = member.read()
            return found
    except KeyError as exc:
        raise DataError(
            f"{archive.path}: no member {archive.top}/{exc.args[0]}; not the official archive. {FIX}"
        ) from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{archive.path}: cannot read the archive ({exc}); re-download it. {FIX}") from None


def _key(record: dict, name: str, origin: str) -> Any:
    for key in (name.encode(), name):  # Python 2 strings read as bytes; a Python 3 pickle has str keys
        if key in record:
            return record[key]
    raise DataError(f"{origin}: no {name!r} entry; found {sorted(map(str, record))}. Not a CIFAR-100 file.")


def _labels(values: Any, count: int, kind: str, origin: str) -> np.ndarray:
    labels = np.asarray(values)
    if labels.shape != (count,) or labels.dtype.kind not in "iu":
        raise DataError(f"{origin}: expected {count} integer {kind} labels, found {labels.dtype} {labels.shape}.")
    if count and (labels.min() < 0 or labels.max() >= LABEL_KINDS[kind]):
        raise DataError(f"{origin}: a {kind} label lies outside 0..{LABEL_KINDS[kind] - 1}.")
    return labels.astype(np.int64)


def _as_images(pixels: np.ndarray) -> np.ndarray:
    """(N, 3072) rows of R, G, B planes -> (N, 32, 32, 3), read-only."""
    images = np.ascontiguousarray(pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    images.setflags(write=False)
    return images


def _python_split(data: bytes, origin: str) -> Split:
    record = load_plain(data, origin)
    if not isinstance(record, dict):
        raise DataError(f"{origin}: expected a pickled dict, found {type(record).__name__}. Not a CIFAR-100 file.")
    pixels = _key(record, "data", origin)
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != PIXELS:
        shape = getattr(pixels, "shape", type(pixels).__name__)
        raise DataError(f"{origin}: 'data' must be an N x {PIXELS} uint8 array, found {shape}.")
    count = len(pixels)
    fine = _labels(_key(record, "fine_labels", origin), count, "fine", origin)
    coarse = _labels(_key(record, "coarse_labels", origin), count, "coarse", origin)
    return Split(_as_images(pixels), fine, coarse)


def _binary_split(data: bytes, origin: str) -> Split:
    if len(data) % RECORD:
        raise DataError(f"{origin}: {len(data)} bytes is not a whole number of {RECORD}-byte records; re-download it.")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD)
    count = len(records)
    coarse = _labels(records[:, 0], count, "coarse", origin)
    fine = _labels(records[:, 1], count, "fine", origin)
    return Split(_as_images(records[:, 2:]), fine, coarse)


def _decode_names(values: Any, count: int, origin: str) -> tuple[str, ...]:
    names = tuple(v.decode() if isinstance(v, bytes) else str(v) for v in values)
    if len(names) != count:
        raise DataError(f"{origin}: expected {count} class names, found {len(names)}.")
    return names


@lru_cache(maxsize=2)
def _read(archive: Archive, state: tuple) -> tuple[dict[str, Split], dict[str, tuple[str, ...]]]:
    """Both splits and both name lists; kept per process while the archive is unchanged (``state``),
    so the runs of a grid read a 160 MB archive once."""
    if archive.kind == "python":
        data = _members(archive, archive.members)
        splits = {s: _python_split(data[s], f"{archive.path}:{s}") for s in ("train", "test")}
        meta = load_plain(data["meta"], f"{archive.path}:meta")
        if not isinstance(meta, dict):
            raise DataError(f"{archive.path}:meta: expected a pickled dict. Not a CIFAR-100 file.")
        values = {k: _key(meta, f"{k}_label_names", f"{archive.path}:meta") for k in LABEL_KINDS}
    else:
        data = _members(archive, archive.members)
        splits = {s: _binary_split(data[f"{s}.bin"], f"{archive.path}:{s}.bin") for s in ("train", "test")}
        values = {k: data[f"{k}_label_names.txt"].decode().split() for k in LABEL_KINDS}
    names = {k: _decode_names(values[k], n, f"{archive.path}: {k} label names") for k, n in LABEL_KINDS.items()}
    return splits, names


def class_balanced_order(labels: np.ndarray, num_classes: int, seed: int) -> list[np.ndarray]:
    """Per class, its indices in an order drawn from ``seed`` (one generator, classes in turn)."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]


def split_indices(fine: np.ndarray, per_class: int, seed: int) -> dict[str, np.ndarray]:
    """Training indices of ``train`` (``per_class`` of each fine class), ``tune`` and ``val``, sorted.

    ``val`` is the last tenth of each class's order (50 of CIFAR-100's 500), ``tune`` the first
    ``per_class`` images before it. Balanced over the fine classes, so over the coarse ones too
    (each holds five fine classes).
    """
    order = class_balanced_order(fine, LABEL_KINDS["fine"], seed)
    val = [o[len(o) - max(1, len(o) // VAL_FRACTION) :] for o in order]
    tune = [o[: min(per_class, len(o) - len(v))] for o, v in zip(order, val, strict=True)]
    return {
        "train": np.sort(np.concatenate([o[:per_class] for o in order])),
        "tune": np.sort(np.concatenate(tune)),
        "val": np.sort(np.concatenate(val)),
    }


class CifarDataset(ArrayDataset):
    """Images of one split, held in memory. ``content_key`` identifies its pixels and labels, so the
    decoded-image cache (:mod:`snftune.data.image_cache`) keeps its resized images across runs."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable | None, names, name: str) -> None:
        super().__init__(images, labels, transform, names)
        self.name = name
        self.num_classes = len(names)
        self.on_bad_image = "error"  # nothing to decode: no image can be bad
        self.bad_images: set[str] = set()
        self._content_key: str | None = None

    @property
    def content_key(self) -> str:
        if self._content_key is None:
            digest = hashlib.sha256(np.ascontiguousarray(self.images).tobytes())
            digest.update(np.asarray(self.labels, dtype=np.int64).tobytes())
            self._content_key = f"cifar:{digest.hexdigest()}"
        return self._content_key


def cifar_task_names() -> list[str]:
    return ["cifar100/full", *(f"cifar100/{n}" for n in (500, 1000, 5000, 10000))]


def _subset_size(rest: str, spec: str) -> int:
    match = _SUBSET.match(rest)
    size = TRAIN_SIZE if match and rest == "full" else int(rest) if match else -1
    if size < MIN_SUBSET or size > TRAIN_SIZE or size % LABEL_KINDS["fine"]:
        raise DataError(
            f"{spec}: expected cifar100/full or cifar100/<n> with n a multiple of 100 from {MIN_SUBSET} to "
            f"{TRAIN_SIZE} (n/100 training images of every class), e.g. cifar100/5000."
        )
    return size


@register_reader("cifar100", cifar_task_names)
def resolve_cifar(rest: str, data_dir: Path | None, labels: str = "fine", seed: Any = 0, **options: Any) -> Task:
    """``cifar100/full`` or ``cifar100/<n>``; options ``labels`` (fine or coarse) and ``seed`` (the draw)."""
    spec = f"cifar100/{rest}"
    reject_options(spec, options, ("labels", "seed"))
    size = _subset_size(rest, spec)
    if labels not in LABEL_KINDS:
        raise DataError(f"{spec}: labels must be fine or coarse, got {labels!r} (--data-options labels=coarse).")
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        raise DataError(f"{spec}: seed must be an integer, got {seed!r}.") from None
    archive = find_archive(require_data_dir(data_dir, spec), spec)
    name = spec if labels == "fine" else f"{spec}/coarse"
    per_class = size // LABEL_KINDS["fine"]
    expected = {
        "train": size,
        "tune": min(per_class, TUNE_PER_CLASS) * 100,
        "val": VAL_PER_CLASS * 100,
        "test": TEST_SIZE,
    }
    return Task(
        name=name,
        num_classes=LABEL_KINDS[labels],
        protocol="other",
        splits=SPLITS,
        train_split="train",
        eval_split="test",
        tuning_splits=("tune", "val"),
        root=archive.path,
        options={"labels": labels, "seed": seed, "train_images": size, "archive": archive.kind},
        expected_sizes=expected,
        in_memory=True,
        factory=partial(_dataset, archive, name, labels, per_class, seed),
    )


def _dataset(archive: Archive, name: str, labels: str, per_class: int, seed: int, split: str, transform, options):
    """Held in memory: ``options`` (bad images, paths outside the root) have nothing to act on."""
    del options
    splits, names = _read(archive, archive.state())
    source = splits["test" if split == "test" else "train"]
    chosen = getattr(source, labels)
    if split == "test":
        images, targets = source.images, chosen
    else:
        smallest = int(np.bincount(source.fine, minlength=LABEL_KINDS["fine"]).min())
        if split == "train" and per_class > smallest:
            raise DataError(
                f"{name}: {per_class} training images per class asked for; the archive holds only {smallest} "
                "of some class."
            )
        index = split_indices(source.fine, per_class, seed)[split]
        images, targets = source.images[index], chosen[index]
    return CifarDataset(images, targets, transform, names[labels], f"{name}:{split}")
