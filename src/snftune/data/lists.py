"""Samples, list-file parsing and the lazily decoding image dataset shared by every on-disk reader."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .errors import DataError, DataWarning

BAD_IMAGE_MODES = ("error", "skip")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_MAX_LISTED = 5


@dataclass(frozen=True)
class Sample:
    """One image: its absolute path, its 0-based label, and where it was declared (for error messages)."""

    path: str
    label: int
    origin: str


def check_bad_image_mode(on_bad_image: str) -> None:
    if on_bad_image not in BAD_IMAGE_MODES:
        raise DataError(f"on_bad_image must be one of {BAD_IMAGE_MODES}, got {on_bad_image!r}")


def parse_label(text: str, origin: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError(
            f"{origin}: expected an integer label as the last field, found {text!r}. "
            "Each line must read '<relative/path> <label>'."
        ) from None


def check_label(label: int, num_classes: int | None, origin: str, what: str = "") -> None:
    if label < 0 or (num_classes is not None and label >= num_classes):
        expected = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
        raise DataError(
            f"{origin}: label {label} is out of range; expected {expected}"
            f"{' (' + what + ')' if what else ''}. Fix the list file, or check that it belongs to "
            "this dataset."
        )


def read_list_file(
    list_file: str | os.PathLike,
    image_root: str | os.PathLike,
    num_classes: int | None = None,
    what: str = "",
) -> list[Sample]:
    """Parse ``<path> <label>`` lines, splitting each line on its LAST run of white space.

    Splitting on the last space keeps paths that contain spaces intact (NOAH few-shot lists have
    them). Blank lines are ignored. Labels are checked against ``num_classes`` here, so a wrong
    list fails when the dataset is built, not in the middle of an epoch.
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise DataError(f"list file {list_file} does not exist. Check the data directory or the split name.")
    samples = []
    with open(list_file, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line:
                continue
            origin = f"{list_file} line {number}"
            parts = line.rsplit(None, 1)
            if len(parts) != 2:
                raise DataError(
                    f"{origin}: expected '<relative/path> <label>', found {line!r}. "
                    "Each non-empty line needs a path and an integer label separated by white space."
                )
            label = parse_label(parts[1], origin)
            check_label(label, num_classes, origin, what)
            samples.append(Sample(os.path.join(image_root, parts[0]), label, origin))
    if not samples:
        raise DataError(f"list file {list_file} has no samples (empty split). Regenerate or re-download it.")
    report_repeats(samples, list_file)
    return samples


def report_repeats(samples: Sequence[Sample], list_file: Path) -> None:
    """One :class:`DataWarning` when a list names an image more than once.

    Every line is kept: NOAH's 1-shot Oxford-Pets lists hold each image twice on purpose, so the
    image is drawn twice per epoch, as in NOAH's runs. The count says what the split really holds.
    """
    distinct = len({s.path for s in samples})
    if distinct < len(samples):
        warnings.warn(
            f"{list_file}: {len(samples)} lines, {distinct} distinct images; every line is kept, so an "
            "image listed n times is drawn n times per epoch",
            DataWarning,
            stacklevel=3,
        )


def list_relpaths(list_file: str | os.PathLike, limit: int) -> list[str]:
    """The image paths of the first ``limit`` non-empty lines of a ``<path> <label>`` list."""
    relpaths: list[str] = []
    with open(list_file, encoding="utf-8") as handle:
        for raw in handle:
            parts = raw.strip().rsplit(None, 1)
            if len(parts) == 2:
                relpaths.append(parts[0])
            if len(relpaths) >= limit:
                break
    return relpaths


def check_files_exist(samples: Sequence[Sample], on_bad_image: str, name: str) -> list[Sample]:
    """Stat every listed image; raise on missing files, or drop them with one warning in skip mode."""
    missing = [s for s in samples if not os.path.isfile(s.path)]
    if not missing:
        return list(samples)
    if on_bad_image == "error":
        listed = "; ".join(f"{s.path} ({s.origin})" for s in missing[:_MAX_LISTED])
        more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
        raise DataError(
            f"{name}: {len(missing)} of {len(samples)} listed images are missing: {listed}{more}. "
            "Restore the files, fix the list, or pass on_bad_image='skip' to leave them out."
        )
    warnings.warn(
        f"{name}: skipped {len(missing)} of {len(samples)} listed images that are missing "
        f"(first: {missing[0].path}, {missing[0].origin})",
        DataWarning,
        stacklevel=3,
    )
    kept = [s for s in samples if os.path.isfile(s.path)]
    if not kept:
        raise DataError(f"{name}: every listed image is missing; nothing left to load.")
    return kept


def load_rgb(path: str, origin: str) -> Image.Image:
    """Decode fully (``convert`` forces the read) so a truncated file fails here, not in a transform."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise DataError(
            f"cannot decode image {path} ({origin}): {exc}. Replace the file, or pass "
            "on_bad_image='skip' to substitute the next readable image."
        ) from exc


class ImageListDataset(Dataset):
    """Samples checked at construction, images decoded lazily in ``__getitem__``.

    ``on_bad_image="error"`` (default) raises :class:`DataError` for a missing file at construction
    and for an undecodable one when it is read. ``"skip"`` drops missing files at construction
    (one :class:`DataWarning` with the count) and, for an undecodable file met while reading,
    warns and returns the next readable sample instead; the files met so far are in
    ``bad_images``. Call :meth:`verify` to decode everything up front and drop bad files for good.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        name: str,
        transform: Callable[[Image.Image], Any] | None = None,
        on_bad_image: str = "error",
        num_classes: int | None = None,
    ) -> None:
        check_bad_image_mode(on_bad_image)
        if not samples:
            raise DataError(f"{name}: the split has no samples (empty split).")
        self.name = name
        self.transform = transform
        self.on_bad_image = on_bad_image
        self.num_classes = num_classes
        self.samples = check_files_exist(samples, on_bad_image, name)
        self.bad_images: set[str] = set()

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> tuple[Image.Image, int]:
        sample = self.samples[index]
        return load_rgb(sample.path, sample.origin), sample.label

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if self.on_bad_image == "error":
            img, label = self._load(index)
        else:
            for step in range(len(self.samples)):
                candidate = (index + step) % len(self.samples)
                if self.samples[candidate].path in self.bad_images:
                    continue
                try:
                    img, label = self._load(candidate)
                    break
                except DataError as exc:
                    self.bad_images.add(self.samples[candidate].path)
                    warnings.warn(
                        f"{self.name}: substituted an unreadable image ({len(self.bad_images)} so far): {exc}",
                        DataWarning,
                        stacklevel=2,
                    )
            else:
                raise DataError(f"{self.name}: no listed image could be decoded.")
        if self.transform is not None:
            img = self.transform(img)
        return img, label

    def verify(self) -> int:
        """Decode every image; in skip mode drop the bad ones and return how many were dropped."""
        bad = []
        for sample in self.samples:
            try:
                load_rgb(sample.path, sample.origin)
            except DataError:
                if self.on_bad_image == "error":
                    raise
                bad.append(sample)
        if bad:
            warnings.warn(f"{self.name}: skipped {len(bad)} unreadable images", DataWarning, stacklevel=2)
            dropped = {s.path for s in bad}
            self.samples = [s for s in self.samples if s.path not in dropped]
            self.bad_images |= dropped
            if not self.samples:
                raise DataError(f"{self.name}: no listed image could be decoded.")
        return len(bad)


def find_first(candidates: Iterable[Path], kind: str, what: str, fix: str) -> Path:
    """Return the first existing directory among ``candidates``; else say every path looked for."""
    candidates = list(candidates)
    for path in candidates:
        if path.is_dir():
            return path
    looked = "\n  ".join(str(p) for p in candidates)
    raise DataError(f"{what}: no {kind} found. Looked for:\n  {looked}\n{fix}")


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
