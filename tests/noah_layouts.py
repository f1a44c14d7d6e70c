"""NOAH's and CoOp's data layouts, rebuilt in a temporary folder from real annotation lines.

``tests/fixtures/noah/`` mirrors NOAH's ``data/few-shot/*/annotations`` and
``data/domain-generalization/*/annotations`` (ZhangYuanhan-AI/NOAH at commit 10dd5150), keeping a
few real lines of each list: the 1-shot lists of the five datasets (the whole 74-line Oxford-Pets
seed-0 list, which names each image twice), the 16-shot ImageNet lists, the val/test lists and the
four DG targets' lists. The shot is only part of a list's file name for the reader, so each seed's
lines are written under every shot's name. Placeholder images go where each layout keeps them:

- ``noah``: NOAH's ``data/`` as in its repository, images where its ``lib/datasets.py`` reads
  them (``few-shot/<dataset>/images/``, ``few-shot/imagenet/{train,val}/``, the DG target folder);
- ``noah-scripts``: the flat ``data/<dataset>/`` of NOAH's scripts (``--data-path=./data/oxford_pets``;
  Stanford Cars images in the dataset folder, ImageNet val through a ``val_meta.list``);
- ``coop``: CoOp's DATASETS.md (``oxford_flowers/jpg``, ``imagenet/images/{train,val}``,
  ``imagenet-adversarial/imagenet-a/<wnid>``, …) with NOAH's ``annotations/`` copied into each
  few-shot dataset folder; the DG targets as downloaded, class folders and no lists;
- ``coop+noah-lists``: CoOp's image folders untouched, NOAH's annotation trees (``few-shot/``,
  ``domain-generalization/``, lists only) beside them.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

FIXTURE = Path(__file__).parent / "fixtures" / "noah"
LAYOUTS = ("noah", "noah-scripts", "coop", "coop+noah-lists")
SHOTS = (1, 2, 4, 8, 16)
SEEDS = (0, 1, 2)
TARGETS = {  # spec name -> NOAH's folder (also NOAH's scripts' and CoOp's)
    "imagenet-v2": "imagenetv2",
    "imagenet-sketch": "imagenet-sketch",
    "imagenet-a": "imagenet-adversarial",
    "imagenet-r": "imagenet-rendition",
}
VAL = [("ILSVRC2012_val_00000001.JPEG", 65), ("ILSVRC2012_val_00000002.JPEG", 970)]  # hand-made


@dataclass(frozen=True)
class Fewshot:
    noah: str  # folder in NOAH's data/few-shot/
    flat: str  # folder in NOAH's scripts' data/ and in CoOp's $DATA
    noah_images: str  # image folder inside the dataset folder, per layout
    flat_images: str
    coop_images: str


FEWSHOT = {
    "fgvc_aircraft": Fewshot("fgvc-aircraft", "fgvc_aircraft", "images", "images", "images"),
    "food101": Fewshot("food101", "food-101", "images", "images", "images"),
    "oxford_flowers": Fewshot("oxford-flowers102", "oxford_flowers", "images", "images", "jpg"),
    "oxford_pets": Fewshot("oxford-pets", "oxford_pets", "images", "images", "images"),
    # NOAH's code reads Stanford Cars from the folder itself only when its path says stanford_cars
    "stanford_cars": Fewshot("standford-cars", "stanford_cars", "images", "", ""),
    "imagenet": Fewshot("imagenet", "imagenet", "train", "train", "images/train"),
}


def lines(relpath: str) -> list[tuple[str, int]]:
    """The shipped lines of NOAH's file ``relpath`` (under data/) as (image path, label)."""
    text = (FIXTURE / relpath).read_text(encoding="utf-8")
    return [(path, int(label)) for path, label in (line.rsplit(" ", 1) for line in text.splitlines())]


def train_list(dataset: str, seed: int) -> str:
    """The shipped train list of ``dataset`` for ``seed`` (NOAH's file path under data/)."""
    shot = 16 if dataset == "imagenet" else 1
    return f"few-shot/{FEWSHOT[dataset].noah}/annotations/train_meta.list.num_shot_{shot}.seed_{seed}"


def split_list(dataset: str, split: str) -> str:
    return f"few-shot/{FEWSHOT[dataset].noah}/annotations/{split}_meta.list"


def target_list(target: str) -> str:
    return f"domain-generalization/{TARGETS[target]}/annotations/val_meta.list"


def expected_labels(dataset: str, seed: int, split: str) -> list[int]:
    """Labels of a few-shot split as the shipped lines give them (ImageNet's test: the val images)."""
    if split == "train":
        return [label for _, label in lines(train_list(dataset, seed))]
    if dataset == "imagenet":
        return sorted(label for _, label in VAL)
    return [label for _, label in lines(split_list(dataset, split))]


def _image(path: Path, label: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((7, 10, 3), dtype=np.uint8)
    pixels[..., 0] = label % 256
    Image.fromarray(pixels).save(path, format="PNG")  # lossless, so the pixel tells the label; PIL reads by content


def _images(folder: Path, relpath: str) -> None:
    for path, label in lines(relpath):
        _image(folder / path, label)


def _annotations(dataset: str, into: Path) -> None:
    """NOAH's annotations/ folder of ``dataset``, each seed's lines under every shot's name."""
    source = FIXTURE / "few-shot" / FEWSHOT[dataset].noah / "annotations"
    into.mkdir(parents=True, exist_ok=True)
    for name in ("val_meta.list", "test_meta.list"):
        if (source / name).is_file():
            shutil.copy(source / name, into / name)
    for seed in SEEDS:
        text = (FIXTURE / train_list(dataset, seed)).read_text(encoding="utf-8")
        for shot in SHOTS:
            (into / f"train_meta.list.num_shot_{shot}.seed_{seed}").write_text(text, encoding="utf-8")


def _dataset_images(dataset: str, images: Path) -> None:
    for seed in SEEDS:
        _images(images, train_list(dataset, seed))
    if dataset != "imagenet":
        for split in ("val", "test"):
            _images(images, split_list(dataset, split))


def _imagenet_val(val: Path, as_list: bool) -> None:
    """ILSVRC2012 val: flat files named by a val_meta.list next to annotations/, or wnid folders."""
    from snftune.data.imagenet import imagenet_wnids

    wnids = imagenet_wnids()
    for name, label in VAL:
        _image(val / name if as_list else val / wnids[label] / name, label)
    if as_list:
        (val.parent / "annotations" / "val_meta.list").write_text("".join(f"{n} {label}\n" for n, label in VAL))


def make_layout(data_dir: Path, layout: str) -> Path:
    """Writes ``layout`` (one of :data:`LAYOUTS`) under ``data_dir``; returns ``data_dir``."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {LAYOUTS}")
    for dataset, names in FEWSHOT.items():
        if layout == "noah":
            folder, images = data_dir / "few-shot" / names.noah, names.noah_images
        else:
            folder = data_dir / names.flat
            images = names.flat_images if layout == "noah-scripts" else names.coop_images
        lists_folder = data_dir / "few-shot" / names.noah if layout == "coop+noah-lists" else folder
        _annotations(dataset, lists_folder / "annotations")
        _dataset_images(dataset, folder / images if images else folder)
        if dataset == "imagenet":
            val = folder / ("images/val" if layout.startswith("coop") else "val")
            _imagenet_val(val, as_list=layout == "noah-scripts")
    for target, name in TARGETS.items():
        folder = data_dir / "domain-generalization" / name if layout == "noah" else data_dir / name
        _images(folder, target_list(target))
        if layout != "coop":
            lists_folder = data_dir / "domain-generalization" / name if layout == "coop+noah-lists" else folder
            (lists_folder / "annotations").mkdir(parents=True, exist_ok=True)
            shutil.copy(FIXTURE / target_list(target), lists_folder / "annotations" / "val_meta.list")
    return data_dir
