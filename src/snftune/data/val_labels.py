"""Labels of the ILSVRC2012 validation images kept in one flat folder (``val/ILSVRC2012_val_00000001.JPEG`` …).

The flat folder is how the official ``ILSVRC2012_img_val.tar`` extracts; its labels come in one
of three files, looked for in this order in the ImageNet folder, its ``val/`` folder, the devkit's
``data/`` folder (``ILSVRC2012_devkit_t12/data/``) and the folder above the ImageNet folder:

- ``LOC_val_solution.csv`` (Kaggle's ImageNet): ``ImageId,PredictionString`` rows whose
  prediction string starts with the wnid;
- ``val.txt`` or ``val_labels.txt``: ``<file name> <wnid or 0-based index>`` per line (Caffe's
  ``val.txt`` gives the index in the sorted-wnid order snftune uses);
- the devkit's ``ILSVRC2012_validation_ground_truth.txt`` (the 1-based ILSVRC2012_ID of image i
  on line i) with ``meta.mat`` beside it, which maps those ids to wnids. ``meta.mat`` is a MATLAB
  file: it is read with scipy (``scipy.io.loadmat``, no pickle), an optional dependency; without
  scipy, or without ``meta.mat``, one of the two other files is needed.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path

from .errors import DataError
from .lists import Sample

NUM_CLASSES = 1000
KAGGLE = "LOC_val_solution.csv"
LISTS = ("val.txt", "val_labels.txt")
DEVKIT = "ILSVRC2012_validation_ground_truth.txt"
DEVKIT_DIRS = ("", "val", "ILSVRC2012_devkit_t12/data", "devkit/data", "data")
VAL_NAME = "ILSVRC2012_val_{:08d}.JPEG"
_WNID = re.compile(r"^n\d{8}$")


def _label(value: str, index: dict[str, int], origin: str) -> int:
    """A wnid (``index`` maps the 1000 wnids to their class), or a 0-based class index."""
    if _WNID.match(value):
        if value not in index:
            raise DataError(f"{origin}: {value} is not one of the 1000 ImageNet-1k wnids.")
        return index[value]
    if value.isdigit() and int(value) < NUM_CLASSES:
        return int(value)
    raise DataError(f"{origin}: expected a wnid (n01440764) or a class index 0..999, found {value!r}.")


def _kaggle(path: Path, folder: Path, index: dict[str, int]) -> list[Sample]:
    samples = []
    with open(path, newline="", encoding="utf-8") as handle:
        rows = csv.reader(handle)
        header = next(rows, None)
        if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise DataError(f"{path}: expected the header 'ImageId,PredictionString' (Kaggle's ImageNet layout).")
        for number, row in enumerate(rows, start=2):
            if not row:
                continue
            origin = f"{path} line {number}"
            if len(row) < 2 or not row[1].split():
                raise DataError(f"{origin}: expected '<ImageId>,<wnid> <box> …', found {','.join(row)!r}.")
            samples.append(
                Sample(
                    str(folder / f"{row[0].strip()}.JPEG"),
                    _label(row[1].split()[0], index, origin),
                    origin,
                    str(folder),
                )
            )
    return samples


def _plain_list(path: Path, folder: Path, index: dict[str, int]) -> list[Sample]:
    samples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        origin = f"{path} line {number}"
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise DataError(f"{origin}: expected '<file name> <wnid or index>', found {line.strip()!r}.")
        samples.append(Sample(str(folder / parts[0]), _label(parts[1], index, origin), origin, str(folder)))
    return samples


def devkit_wnids(meta: Path, wnids: Sequence[str]) -> dict[int, str]:
    """``{ILSVRC2012_ID: wnid}`` of the 1000 classes, from the devkit's ``meta.mat`` (needs scipy)."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError(
            f"{meta}: reading the devkit's meta.mat needs scipy (pip install scipy); or put Kaggle's "
            f"{KAGGLE} or a val.txt of '<file name> <wnid>' lines next to the val images."
        ) from None
    try:
        synsets = loadmat(str(meta), squeeze_me=True)["synsets"]
        ids = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
    except Exception as exc:  # scipy raises many kinds for a file that is not the devkit's
        raise DataError(f"{meta}: not the devkit's meta.mat ({type(exc).__name__}: {exc}).") from None
    mapping = {i: ids.get(i, "") for i in range(1, NUM_CLASSES + 1)}
    if sorted(mapping.values()) != sorted(wnids):
        raise DataError(f"{meta}: its ILSVRC2012_IDs 1..1000 are not the 1000 ImageNet-1k wnids.")
    return mapping


def _devkit(path: Path, folder: Path, index: dict[str, int]) -> list[Sample]:
    meta = path.parent / "meta.mat"
    if not meta.is_file():
        raise DataError(
            f"{path} holds ILSVRC2012_IDs, which the devkit's meta.mat maps to classes; it is not at {meta}. "
            f"Keep the devkit's data/ folder whole, or use Kaggle's {KAGGLE} or a val.txt instead."
        )
    wnids = devkit_wnids(meta, list(index))
    samples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").split(), start=1):
        origin = f"{path} line {number}"
        if not line.isdigit() or not 1 <= int(line) <= NUM_CLASSES:
            raise DataError(f"{origin}: expected an ILSVRC2012_ID 1..1000, found {line!r}.")
        samples.append(
            Sample(str(folder / VAL_NAME.format(number)), _label(wnids[int(line)], index, origin), origin, str(folder))
        )
    return samples


def _places(folder: Path, imagenet_folders: Sequence[Path]) -> list[Path]:
    bases = [*imagenet_folders, folder, *(f.parent for f in imagenet_folders)]
    return list(dict.fromkeys(b / d if d else b for b in bases for d in DEVKIT_DIRS))


def flat_val_samples(folder: Path, imagenet_folders: Sequence[Path], wnids: Sequence[str], name: str) -> list[Sample]:
    """The samples of the flat val ``folder``, labelled by the first ground-truth file found; class i
    is ``wnids[i]``."""
    index = {w: i for i, w in enumerate(wnids)}
    places = _places(folder, imagenet_folders)
    for filename, reader in ((KAGGLE, _kaggle), *((n, _plain_list) for n in LISTS), (DEVKIT, _devkit)):
        for place in places:
            if (place / filename).is_file():
                samples = reader(place / filename, folder, index)
                if not samples:
                    raise DataError(f"{place / filename}: no samples (empty file).")
                return samples
    raise DataError(
        f"{name}: {folder} holds the val images in one flat folder, and none of {KAGGLE}, {', '.join(LISTS)} or "
        f"{DEVKIT} (+ meta.mat) labels them; looked in: {', '.join(map(str, places[:4]))} …. "
        "Add one of them (docs/data.md), or sort the images into <wnid>/ folders."
    )
