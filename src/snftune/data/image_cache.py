"""The decoded-image cache: each image is decoded and resized once, not once per epoch.

A protocol's transform starts with steps that map an image the same way every time (convert
to RGB, resize, centre crop: :func:`~snftune.data.transforms.split_cacheable`). Their output is
computed once per image and kept as uint8 (:mod:`snftune.data.image_store`); each epoch runs
only the steps after them (to tensor and normalise for VTAB-1k and every evaluation; random
crop and flip for FGVC training). The outputs are exactly those of the uncached pipeline: the
same pixels enter the same steps, which draw the same random numbers.

Modes (``--cache``): ``off``; ``disk``, a memory-mapped entry in the cache folder, kept for the
next run; ``ram``, in this process's memory up to a budget; ``auto`` (default), ``disk`` for
every split whose cached size is bounded by a resize, falling back to ``ram`` when the folder
cannot be written. The few-shot/DG training pipeline begins with a random *resized* crop of
the original image, so the only cache that keeps it identical holds the full-resolution image;
``auto`` leaves that split uncached (pixels take about ten times the JPEG's bytes), ``ram`` and
``disk`` cache it. Datasets held in memory (the generated suite) have nothing to decode and
are never cached; datasets read from an archive into memory (CIFAR-100) have no decoding to
save but a resize per image and epoch, so they are cached like files, keyed by their content.

An entry is keyed by the transform steps it holds (their parameters, Pillow's and
torchvision's versions) and by every listed file's path, size, modification and change time
(``st_mtime_ns``, ``st_ctime_ns``) and label, so a changed, added or removed file gives
another entry (the quick check of ``make`` and ``rsync``, which reads no image; the change
time, which no tool sets back, catches a file replaced with its size and modification time
kept). A folder that cannot be written, or a disk with less than the reserve free, means no
disk cache and one :class:`CacheWarning`, never a failed run or a wrong image.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from .errors import DataError, DataWarning
from .image_store import (
    FORMAT,
    DamagedEntryError,
    ImageStore,
    NoRoomError,
    collect_in_memory,
    open_entry,
    remove_entry,
    write_entry,
)
from .lists import ImageListDataset
from .transforms import is_deterministic, split_batch_tail, split_cacheable

__all__ = [
    "CACHE_DIR_ENV",
    "CACHE_MODES",
    "RAM_BUDGET_ENV",
    "CacheWarning",
    "CachedImages",
    "ImageCache",
    "cache_key",
    "default_cache_dir",
]

CACHE_MODES = ("auto", "off", "ram", "disk")
CACHE_DIR_ENV = "SNFTUNE_CACHE_DIR"
RAM_BUDGET_ENV = "SNFTUNE_CACHE_RAM_GB"
DISK_RESERVE = 2 * 2**30  # the cache never leaves less free space than this on its disk


class CacheWarning(DataWarning):
    """The image cache could not be used as asked; training goes on, reading the images itself."""


def default_cache_dir() -> Path:
    """``$SNFTUNE_CACHE_DIR``, else ``$XDG_CACHE_HOME/snftune/images``, else ``~/.cache/snftune/images``."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "snftune" / "images"


def default_ram_budget() -> int:
    """Bytes the ``ram`` mode may hold per split: ``$SNFTUNE_CACHE_RAM_GB``, else a quarter of the memory."""
    if os.environ.get(RAM_BUDGET_ENV):
        try:
            return int(float(os.environ[RAM_BUDGET_ENV]) * 2**30)
        except ValueError:
            raise DataError(f"{RAM_BUDGET_ENV} must be a number of GiB, got {os.environ[RAM_BUDGET_ENV]!r}") from None
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def cacheable(dataset: Dataset) -> bool:
    """Files listed by an :class:`ImageListDataset`, or images held in memory that say what they
    hold (``content_key``: a hash of their pixels and labels, as CIFAR-100's reader gives)."""
    return isinstance(dataset, ImageListDataset) or isinstance(getattr(dataset, "content_key", None), str)


def cache_key(dataset: ImageListDataset, prefix: list[Callable]) -> str:
    """What an entry holds, as a hash: the cached steps, the library versions that compute them,
    and every file's path, size, times and label (one ``stat`` per file), or the in-memory
    dataset's ``content_key``."""
    digest = hashlib.sha256()
    header = {
        "format": FORMAT,
        "steps": [repr(step) for step in prefix],
        "on_bad_image": dataset.on_bad_image,
        "pillow": PIL.__version__,
        "torchvision": torchvision.__version__,
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    if not isinstance(dataset, ImageListDataset):
        digest.update(dataset.content_key.encode())
        return digest.hexdigest()[:32]
    for sample in dataset.samples:
        digest.update(f"{os.path.abspath(sample.path)}\t{_file_state(sample.path)}\t{sample.label}\n".encode())
    return digest.hexdigest()[:32]


def _file_state(path: str) -> str:
    try:
        stat = os.stat(path)
    except OSError:
        return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}"


def _fixed_size(prefix: list[Callable]) -> tuple[int, int] | None:
    """(height, width) of every output of ``prefix``, when its last resizing step fixes both."""
    size = None
    for step in prefix:
        if isinstance(step, T.CenterCrop):
            size = tuple(step.size)
        elif isinstance(step, T.Resize):
            size = tuple(step.size) if isinstance(step.size, (list, tuple)) and len(step.size) == 2 else None
    return size  # type: ignore[return-value]


def _bounded(prefix: list[Callable]) -> bool:
    return any(isinstance(step, (T.Resize, T.CenterCrop)) for step in prefix)


class _PixelsOf:
    """The cached steps, ending in an (H, W, 3) uint8 array (picklable, for DataLoader workers)."""

    def __init__(self, prefix: list[Callable]) -> None:
        self.prefix = T.Compose(prefix)

    def __call__(self, image: Image.Image) -> np.ndarray:
        return np.array(self.prefix(image), dtype=np.uint8)


def _as_is(item: Any) -> Any:
    return item


def _decoded(dataset: ImageListDataset, prefix: list[Callable], workers: int) -> Iterator[tuple[np.ndarray, int]]:
    """``(pixels, label)`` for every index, read through the dataset's own ``__getitem__`` (so a
    bad image is refused or substituted exactly as it would be uncached), in order."""
    source = copy.copy(dataset)
    source.transform = _PixelsOf(prefix)
    source.bad_images = set(dataset.bad_images)
    # Its own generator: building the cache draws nothing from the run's random streams.
    loader = DataLoader(source, batch_size=None, num_workers=workers, collate_fn=_as_is, generator=torch.Generator())
    yield from loader


class CachedImages(Dataset):
    """A dataset whose cached steps were run once: ``__getitem__`` runs only the steps after them.

    When the pipeline ends with to-tensor and normalise (every protocol's does), items are uint8
    (H, W, 3) pixel tensors and :attr:`batch_transform` (:class:`~snftune.data.transforms.ToInputBatch`)
    turns a collated batch of them into the model's input on the device: the engine applies it,
    and so must any other reader of the items. The numbers are those of the uncached pipeline;
    the loader moves a quarter of the bytes. ``transform`` is the whole original pipeline and
    ``source`` the uncached dataset, for whoever asks what the data is.
    """

    def __init__(self, source: ImageListDataset, store: ImageStore, rest: list[Callable]) -> None:
        self.source = source
        self.store = store
        per_image, self.batch_transform = split_batch_tail(rest)
        self.per_image = T.Compose(per_image) if per_image else None
        # Read by the engine's seeded sampling: items that draw no random number need no seeding.
        self.draws_randomness = not is_deterministic(per_image)

    @property
    def transform(self) -> Callable | None:
        return self.source.transform

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def labels(self) -> list[int]:
        return self.store.index[:, 3].tolist()

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        pixels, label = self.store[index]
        if self.per_image is None:
            return (torch.from_numpy(pixels) if self.batch_transform else Image.fromarray(pixels)), label
        image = self.per_image(Image.fromarray(pixels))
        return (torch.from_numpy(np.array(image, dtype=np.uint8)) if self.batch_transform else image), label


_REPORTED: set[str] = set()


def _warn_once(topic: str, message: str) -> None:
    """One :class:`CacheWarning` per topic (a cache folder, an entry) and process: a run's two
    splits meet the same unwritable folder, and one line says it."""
    if topic not in _REPORTED:
        _REPORTED.add(topic)
        warnings.warn(message, CacheWarning, stacklevel=5)


@dataclass(frozen=True)
class ImageCache:
    """Where and how decoded images are kept: ``mode`` (:data:`CACHE_MODES`), ``folder`` (None:
    :func:`default_cache_dir`), ``ram_budget`` in bytes per split (None: :func:`default_ram_budget`),
    ``disk_reserve``: free bytes the disk cache leaves on its file system."""

    mode: str = "auto"
    folder: Path | None = None
    ram_budget: int | None = None
    disk_reserve: int = DISK_RESERVE

    def __post_init__(self) -> None:
        if self.mode not in CACHE_MODES:
            raise DataError(f"cache mode must be one of {', '.join(CACHE_MODES)}, got {self.mode!r}")

    @property
    def root(self) -> Path:
        return Path(self.folder).expanduser() if self.folder is not None else default_cache_dir()

    def wrap(self, dataset: Dataset, workers: int = 0) -> Dataset:
        """``dataset`` served from the cache, or ``dataset`` itself when it has nothing to cache
        (held in memory, no deterministic leading step, ``off``) or the cache cannot be made.

        A cold entry is built here, decoding every image once with ``workers`` processes.
        """
        if self.mode == "off" or not cacheable(dataset):
            return dataset
        prefix, rest = split_cacheable(dataset.transform)
        if not prefix or (self.mode == "auto" and not _bounded(prefix)):
            return dataset
        key = cache_key(dataset, prefix)
        size = _fixed_size(prefix)
        expected = len(dataset) * size[0] * size[1] * 3 if size else None
        store = self._store(dataset, prefix, key, expected, workers)
        return CachedImages(dataset, store, rest) if store is not None else dataset

    def _store(
        self, dataset: ImageListDataset, prefix: list[Callable], key: str, expected: int | None, workers: int
    ) -> ImageStore | None:
        budget = self.ram_budget if self.ram_budget is not None else default_ram_budget()
        if self.mode in ("auto", "disk"):
            try:
                return self._on_disk(dataset, prefix, key, expected, workers)
            except OSError as error:
                fits = self.mode == "auto" and (expected is None or expected <= budget)
                instead = "decoded images are kept in memory for this run" if fits else "images are decoded every epoch"
                _warn_once(str(self.root), f"cannot write the image cache in {self.root} ({error}); {instead} instead")
                if not fits:
                    return None
        try:
            return collect_in_memory(_decoded(dataset, prefix, workers), budget)
        except NoRoomError as error:
            _warn_once(
                f"ram:{dataset.name}", f"{dataset.name}: not cached in memory ({error}); images are decoded every epoch"
            )
            return None

    def _on_disk(
        self, dataset: ImageListDataset, prefix: list[Callable], key: str, expected: int | None, workers: int
    ) -> ImageStore:
        root = self.root
        try:
            store = open_entry(root, key, len(dataset), dataset.num_classes)
        except DamagedEntryError as error:
            _warn_once(f"damaged:{root / key}", f"a damaged image-cache entry is being rebuilt ({error})")
            remove_entry(root, key)
            store = None
        if store is not None:
            return store
        description = {
            "dataset": dataset.name,
            "steps": [repr(step) for step in prefix],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": {"pillow": PIL.__version__, "torchvision": torchvision.__version__},
        }
        try:
            return write_entry(root, key, _decoded(dataset, prefix, workers), description, self.disk_reserve, expected)
        except DamagedEntryError as error:  # another run published an entry that fails its checks
            raise OSError(f"the entry another run wrote is damaged: {error}") from error
