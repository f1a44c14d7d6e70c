"""Decoded images kept as uint8, on disk (memory-mapped) or in memory: a flat array and an index.

An entry on disk is a folder ``<cache folder>/<key>/``::

    pixels.u8    every image's pixels (height x width x RGB, uint8), back to back, raw
    index.npy    int64 rows (byte offset, height, width, label), one per dataset index
    entry.json   the key, the counts and a description, for people and for the checks below

Nothing is pickled: the index loads with ``allow_pickle=False`` and the pixels are mapped as
raw bytes. An entry is written in a temporary folder beside its final place, every file
flushed to disk, then renamed into place in one step, so a reader sees a whole entry or none;
of two runs writing the same entry, the first rename wins and the second uses the winner's.
An entry is checked when opened (its key, its counts, every image's bytes inside the pixel
file, labels in range); one that fails is reported as damaged, never read.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RUN_FAILED, SnftuneError

__all__ = [
    "DamagedEntryError",
    "ImageStore",
    "NoRoomError",
    "collect_in_memory",
    "open_entry",
    "remove_entry",
    "write_entry",
]

FORMAT = 1
PIXELS, INDEX, ENTRY = "pixels.u8", "index.npy", "entry.json"
CHANNELS = 3
_ROOM_CHECK_EVERY = 64  # images between two free-space checks while writing
_STALE_AFTER_S = 24 * 3600  # temporary folders older than this were left by a killed writer


class NoRoomError(SnftuneError, OSError):
    """Writing the entry would leave less free space than the reserve (or the budget is spent)."""

    exit_code = RUN_FAILED


class DamagedEntryError(SnftuneError, ValueError):
    """An entry on disk that does not hold what its name and ``entry.json`` promise."""


class ImageStore:
    """Images by dataset index: ``store[i]`` is ``(pixels, label)``, pixels an (H, W, 3) uint8 array.

    ``pixels`` is one flat uint8 array (in memory), or None with ``path`` naming an entry whose
    pixel file each process maps for itself on first use: a DataLoader worker started with
    ``spawn`` receives the path, not a copy of the pixels.
    """

    def __init__(self, index: np.ndarray, pixels: np.ndarray | None = None, path: Path | None = None) -> None:
        if (pixels is None) == (path is None):
            raise ValueError("an ImageStore holds its pixels in memory or names an entry on disk, not both")
        self.index = index
        self.path = path
        self._pixels = pixels

    @property
    def pixels(self) -> np.ndarray:
        if self._pixels is None:
            assert self.path is not None
            # Copy-on-write: pages are shared with the page cache, views are writable (torch.from_numpy
            # wants that), and nothing a transform might do reaches the file.
            self._pixels = np.memmap(self.path / PIXELS, dtype=np.uint8, mode="c")
        return self._pixels

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        offset, height, width, label = (int(v) for v in self.index[i])
        size = height * width * CHANNELS
        return self.pixels[offset : offset + size].reshape(height, width, CHANNELS), label

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.path is not None:
            state["_pixels"] = None  # mapped again by the process that unpickles it
        return state


class _Rows:
    """The index rows of images appended one by one."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, int, int]] = []
        self.nbytes = 0

    def add(self, pixels: np.ndarray, label: int) -> np.ndarray:
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != CHANNELS:
            raise ValueError(f"expected an (H, W, 3) uint8 image, got {pixels.dtype} {pixels.shape}")
        pixels = np.ascontiguousarray(pixels)
        self.rows.append((self.nbytes, pixels.shape[0], pixels.shape[1], int(label)))
        self.nbytes += pixels.nbytes
        return pixels

    def index(self) -> np.ndarray:
        return np.asarray(self.rows, dtype=np.int64).reshape(-1, 4)


def collect_in_memory(images: Iterable[tuple[np.ndarray, int]], budget: int) -> ImageStore:
    """An in-memory store of ``images``; :class:`NoRoomError` once they pass ``budget`` bytes."""
    rows, parts = _Rows(), []
    for pixels, label in images:
        parts.append(rows.add(pixels, label).reshape(-1))
        if rows.nbytes > budget:
            raise NoRoomError(f"the images take more than the memory budget of {budget / 2**30:.1f} GiB")
    return ImageStore(rows.index(), pixels=np.concatenate(parts))


def _check_room(folder: Path, needed: int, reserve: int) -> None:
    free = shutil.disk_usage(folder).free
    if free - needed < reserve:
        raise NoRoomError(
            f"{folder} has {free / 2**30:.1f} GiB free; the cache keeps {reserve / 2**30:.1f} GiB free for others"
        )


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_entry(
    root: Path,
    key: str,
    images: Iterable[tuple[np.ndarray, int]],
    description: dict[str, Any],
    reserve: int,
    expected_bytes: int | None = None,
) -> ImageStore:
    """Writes ``images`` (in dataset order) as the entry ``root/key`` and returns its store.

    ``expected_bytes`` (when the images' sizes are known beforehand) is checked against the free
    space first; either way free space is checked as the pixels are written, so the cache never
    leaves less than ``reserve`` bytes free. Raises ``OSError`` (:class:`NoRoomError` among them)
    when the entry cannot be written; nothing is left behind then.
    """
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(root)
    if expected_bytes is not None:
        _check_room(root, expected_bytes, reserve)
    temporary = root / f".{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    temporary.mkdir()
    try:
        rows = _Rows()
        with open(temporary / PIXELS, "wb") as handle:
            for count, (pixels, label) in enumerate(images):
                if count % _ROOM_CHECK_EVERY == 0:
                    _check_room(root, pixels.nbytes * _ROOM_CHECK_EVERY, reserve)
                handle.write(rows.add(pixels, label).data)
            handle.flush()
            os.fsync(handle.fileno())
        np.save(temporary / INDEX, rows.index(), allow_pickle=False)
        _fsync(temporary / INDEX)
        entry = {"format": FORMAT, "key": key, "images": len(rows.rows), "bytes": rows.nbytes, **description}
        (temporary / ENTRY).write_text(json.dumps(entry, indent=2) + "\n", encoding="utf-8")
        _fsync(temporary / ENTRY)
        try:
            os.rename(temporary, root / key)
        except OSError:
            if not (root / key / ENTRY).is_file():
                raise
            # Another run published the same entry first: use theirs, drop ours (same content).
        return _checked_store(root / key, key, len(rows.rows), None)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def open_entry(root: Path, key: str, count: int, num_classes: int | None) -> ImageStore | None:
    """The store of entry ``root/key``, None when there is none; :class:`DamagedEntryError` when
    it does not hold ``count`` whole images with labels below ``num_classes``."""
    folder = root / key
    if not (folder / ENTRY).is_file():
        return None
    return _checked_store(folder, key, count, num_classes)


def _checked_store(folder: Path, key: str, count: int, num_classes: int | None) -> ImageStore:
    try:
        entry = json.loads((folder / ENTRY).read_text(encoding="utf-8"))
        index = np.load(folder / INDEX, allow_pickle=False)
        size = (folder / PIXELS).stat().st_size
    except (OSError, ValueError) as error:
        raise DamagedEntryError(f"{folder}: {error}") from error
    problem = _index_problem(entry, key, index, size, count, num_classes)
    if problem:
        raise DamagedEntryError(f"{folder}: {problem}")
    return ImageStore(index, path=folder)


def _index_problem(
    entry: Any, key: str, index: np.ndarray, size: int, count: int, num_classes: int | None
) -> str | None:
    if not isinstance(entry, dict) or entry.get("format") != FORMAT or entry.get("key") != key:
        return f"entry.json is not format {FORMAT} for key {key}"
    if index.dtype != np.int64 or index.shape != (count, 4):
        return f"the index has shape {index.shape} ({index.dtype}), expected ({count}, 4) int64"
    if entry.get("bytes") != size:
        return f"the pixel file has {size} bytes, entry.json says {entry.get('bytes')}"
    offsets, heights, widths, labels = index.T
    ends = offsets + heights * widths * CHANNELS
    if count and (offsets.min() < 0 or heights.min() < 1 or widths.min() < 1 or ends.max() > size):
        return "an image of the index lies outside the pixel file"
    if count and (labels.min() < 0 or (num_classes is not None and labels.max() >= num_classes)):
        return f"a label of the index is outside 0..{num_classes}"
    return None


def remove_entry(root: Path, key: str) -> None:
    """Moves a damaged entry aside, then deletes it: a process still reading it keeps its mapping."""
    folder = root / key
    doomed = root / f".{key}.{uuid.uuid4().hex[:8]}.removed.tmp"
    try:
        os.rename(folder, doomed)
    except OSError:
        return  # already gone (another run removed or replaced it)
    shutil.rmtree(doomed, ignore_errors=True)


def _remove_stale_temporaries(root: Path) -> None:
    cutoff = time.time() - _STALE_AFTER_S
    for leftover in root.glob(".*.tmp"):
        try:
            if leftover.stat().st_mtime < cutoff:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            continue
