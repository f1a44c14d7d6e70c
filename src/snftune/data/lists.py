"""Samples, list-file parsing and the lazily decoding image dataset shared by every on-disk reader."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..inputs import read_text
from .errors import DataError, DataWarning, original_message

BAD_IMAGE_MODES = ("error", "skip")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
SKIP_HINT = "on_bad_image='skip' (CLI: --data-options on_bad_image=skip)"
OUTSIDE_HINT = "allow_outside_root=True (CLI: --data-options allow_outside_root=true)"
_MAX_LISTED = 5
MAX_CLASSES = 100_000
"""More classes than any image dataset has (ImageNet-21k: 21,841): a larger label is a damaged list."""


@dataclass(frozen=True)
class Sample:
    """One image: its path, its 0-based label, where it was declared (for error messages), and the
    dataset root its file must lie under (``None``: anywhere)."""

    path: str
    label: int
    origin: str
    root: str | None = None


def check_bad_image_mode(on_bad_image: str) -> None:
    if on_bad_image not in BAD_IMAGE_MODES:
        raise DataError(
            f"on_bad_image must be one of {BAD_IMAGE_MODES}, got {on_bad_image!r} "
            "(CLI: --data-options on_bad_image=skip)"
        )


@dataclass(frozen=True)
class ReadOptions:
    """The task options every on-disk reader honours, given to ``resolve_task`` (Python) or as
    ``--data-options KEY=VALUE`` (CLI): what to do with missing or unreadable images, and whether
    images may lie outside the dataset root."""

    on_bad_image: str = "error"
    allow_outside_root: bool = False

    def __post_init__(self) -> None:
        check_bad_image_mode(self.on_bad_image)
        if not isinstance(self.allow_outside_root, bool):
            raise DataError(
                f"allow_outside_root must be true or false, got {self.allow_outside_root!r} "
                "(CLI: --data-options allow_outside_root=true)"
            )

    def dataset(
        self, samples: Sequence[Sample], name: str, transform: Callable | None, num_classes: int | None
    ) -> ImageListDataset:
        """An :class:`ImageListDataset` of ``samples`` read with these options."""
        return ImageListDataset(samples, name, transform, self.on_bad_image, num_classes, self.allow_outside_root)


class UnreadableImageError(DataError):
    """An image file that exists but cannot be decoded. ``detail`` names the file and the reason
    without the advice, for warnings and reports that already say what was done about it."""

    ADVICE = f". Replace the file, or leave unreadable images out with {SKIP_HINT}."

    def __init__(self, detail: str) -> None:
        detail = original_message(detail, type(self)).removesuffix(self.ADVICE)  # as re-raised from a worker
        super().__init__(detail + self.ADVICE)
        self.detail = detail


def parse_label(text: str, origin: str) -> int:
    try:
        label = int(text)
    except ValueError:
        raise DataError(
            f"{origin}: expected an integer label as the last field, found {text!r}. "
            "Each line must read '<relative/path> <label>'."
        ) from None
    if label >= MAX_CLASSES:
        # The head gets one row per class up to the largest label: 10**12 would be a 384 TB head.
        raise DataError(
            f"{origin}: label {label} is out of range; labels are 0-based class indices below {MAX_CLASSES:,}. "
            "Fix the list file."
        )
    return label


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
    list fails when the dataset is built, not in the middle of an epoch. Paths are relative to
    ``image_root`` (absolute ones are kept as they are), the root every image must lie under.
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise DataError(f"list file {list_file} does not exist. Check the data directory or the split name.")
    samples = []
    for number, raw in enumerate(read_text(list_file, DataError, "list file").splitlines(), start=1):
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
        samples.append(Sample(os.path.join(image_root, parts[0]), label, origin, str(image_root)))
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
    for raw in read_text(list_file, DataError, "list file").splitlines():
        parts = raw.strip().rsplit(None, 1)
        if len(parts) == 2:
            relpaths.append(parts[0])
        if len(relpaths) >= limit:
            break
    return relpaths


def capped(items: Sequence[Any], limit: int = _MAX_LISTED, separator: str = "; ") -> str:
    """The first ``limit`` items joined, then how many more: messages stay one readable line."""
    shown = separator.join(str(item) for item in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def split_missing(samples: Sequence[Sample]) -> tuple[list[Sample], list[Sample]]:
    """The samples whose file exists, and those whose file does not (one ``stat`` each)."""
    present, missing = [], []
    for sample in samples:
        (present if os.path.isfile(sample.path) else missing).append(sample)
    return present, missing


def report_missing(total: int, missing: Sequence[Sample], on_bad_image: str, name: str) -> None:
    """Raise on missing files (in skip mode only when every file is missing), else warn once with the count."""
    if not missing:
        return
    shown = capped([f"{s.path} ({s.origin})" for s in missing])
    if len(missing) == total:
        raise DataError(
            f"{name}: all {total} listed images are missing: {shown}. Restore the files, or check that "
            "data_dir and the list belong together."
        )
    if on_bad_image == "error":
        raise DataError(
            f"{name}: {len(missing)} of {total} listed images are missing: {shown}. "
            f"Restore the files, fix the list, or leave missing images out with {SKIP_HINT}."
        )
    warnings.warn(
        f"{name}: skipped {len(missing)} of {total} listed images that are missing "
        f"(first: {missing[0].path}, {missing[0].origin})",
        DataWarning,
        stacklevel=3,
    )


def _real_path(path: str, real_folders: dict[str, str]) -> str:
    """``os.path.realpath(path)``, resolving each folder once: a list names tens of thousands of
    files in a handful of folders."""
    folder, name = os.path.split(path)
    if name in ("", ".", ".."):
        return os.path.realpath(path)
    if folder not in real_folders:
        real_folders[folder] = os.path.realpath(folder or ".")
    candidate = os.path.join(real_folders[folder], name)
    return os.path.realpath(candidate) if os.path.islink(candidate) else candidate


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_inside_root(samples: Sequence[Sample], name: str) -> None:
    """Refuse samples whose file, with ``..`` and symbolic links resolved, is not under its root.

    A list is data, often downloaded: an entry such as ``../../etc/passwd``, an absolute path
    elsewhere or a symbolic link out of the dataset folder would make training read files that
    are not the dataset. An absolute path under the root is accepted (it is the same file as its
    relative spelling). Images kept elsewhere on purpose need ``allow_outside_root=True``.
    """
    real_roots: dict[str, str] = {}
    real_folders: dict[str, str] = {}
    outside = []
    for sample in samples:
        if sample.root is None:
            continue
        if sample.root not in real_roots:
            real_roots[sample.root] = os.path.realpath(sample.root)
        real = _real_path(sample.path, real_folders)
        if not _is_within(real, real_roots[sample.root]):
            outside.append((sample, real))
    if outside:
        shown = capped([f"{s.origin}: {s.path} is {real}" for s, real in outside])
        raise DataError(
            f"{name}: {len(outside)} listed image(s) lie outside the dataset root {outside[0][0].root} "
            f"('..' and symbolic links resolved): {shown}. Fix the list, or pass {OUTSIDE_HINT} "
            "if the images are meant to live elsewhere."
        )


_PREMULTIPLIED = {"La": "LA", "RGBa": "RGBA"}
_NO_FAITHFUL_RGB = ("LAB",)  # Pillow's convert relabels the channels instead of converting colours


def to_rgb(img: Image.Image, where: str) -> Image.Image:
    """``img`` as 8-bit RGB, with high-bit-depth greyscale scaled by its range.

    ``convert("RGB")`` clips instead of scaling: a 16-bit grey of 32768 becomes 255 (white) and a
    float 0.5 becomes 0 (black). So 16-bit modes (``I;16*``, and ``I`` as 16-bit PNGs decode) map
    0..65535 to 0..255 and float images (``F``) map 0..1 to 0..255, as torchvision's ``ToTensor``
    reads them; values outside that range would be clipped into a wrong picture and are refused
    (``where`` names the file in the error). Other modes convert as timm's loader does."""
    mode = img.mode
    if mode in _NO_FAITHFUL_RGB:
        raise UnreadableImageError(
            f"image {where} is in colour space {mode}, which Pillow cannot convert to RGB; save it as RGB"
        )
    if mode.startswith("I") or mode == "F":
        values = np.asarray(img, dtype=np.float64)
        top = 1.0 if mode == "F" else 65535.0
        finite = np.isfinite(values)
        if values.size and not (finite.all() and values.min() >= 0 and values.max() <= top):
            found = f"{values[finite].min():g}..{values[finite].max():g}" if finite.any() else "none finite"
            raise UnreadableImageError(
                f"image {where} is mode {mode} with values {found}{'' if finite.all() else ' and NaN or infinity'}; "
                f"snftune reads mode {mode} as 0..{top:g} (scaled to 0..255): save it in that range or as 8-bit"
            )
        grey = np.rint(values * (255.0 / top)).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode in _PREMULTIPLIED:
        img = img.convert(_PREMULTIPLIED[mode])
    return img.convert("RGB")


def load_rgb(path: str, origin: str) -> Image.Image:
    """Decode fully (``convert`` forces the read) so a truncated file fails here, not in a transform.

    Any failure to open or decode is a property of the file (not an image, truncated, a
    decompression bomb, a mode Pillow cannot convert), so each one becomes an
    :class:`UnreadableImageError` naming the file. Pillow's ``DecompressionBombWarning`` (over
    ``PIL.Image.MAX_IMAGE_PIXELS``) counts as an error: decoding such a file can exhaust memory.
    The warning filter is process-wide, so decode from processes (DataLoader workers), not threads.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                return to_rgb(img, f"{path} ({origin})")
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise UnreadableImageError(
            f"image {path} ({origin}) is too large to decode safely: {str(exc).rstrip('.')} (the limit is "
            "PIL.Image.MAX_IMAGE_PIXELS; raise it in Python if the file is genuine)"
        ) from exc
    except UnreadableImageError:
        raise
    except Exception as exc:  # whatever Pillow raises, the file is the problem
        raise UnreadableImageError(f"cannot decode image {path} ({origin}): {exc}") from exc


class ImageListDataset(Dataset):
    """Samples checked at construction, images decoded lazily in ``__getitem__``.

    Every file must lie under its sample's root unless ``allow_outside_root``
    (:func:`check_inside_root`). ``on_bad_image="error"`` (default) raises :class:`DataError` for a
    missing file at construction and for an undecodable one when it is read. ``"skip"`` drops
    missing files at construction (one :class:`DataWarning` with the count; they are kept in
    ``missing``) and, for an undecodable file met while reading, warns and returns the next
    readable sample instead; the files met so far are in ``bad_images``. Call :meth:`verify` to
    decode everything up front and drop bad files for good.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        name: str,
        transform: Callable[[Image.Image], Any] | None = None,
        on_bad_image: str = "error",
        num_classes: int | None = None,
        allow_outside_root: bool = False,
    ) -> None:
        check_bad_image_mode(on_bad_image)
        if not samples:
            raise DataError(f"{name}: the split has no samples (empty split).")
        if not allow_outside_root:
            check_inside_root(samples, name)
        self.name = name
        self.transform = transform
        self.on_bad_image = on_bad_image
        self.num_classes = num_classes
        self.samples, self.missing = split_missing(samples)
        report_missing(len(samples), self.missing, on_bad_image, name)
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
                except UnreadableImageError as exc:
                    self.bad_images.add(self.samples[candidate].path)
                    warnings.warn(
                        f"{self.name}: substituted an unreadable image ({len(self.bad_images)} so far): {exc.detail}",
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
            except UnreadableImageError:
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
