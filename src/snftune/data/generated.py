"""A generated task suite that needs no download: VTAB-like downstream tasks and a disjoint upstream set.

Every image is drawn with vectorised numpy from a ``numpy.random.Generator`` seeded by
``(seed, task, split)``, so a split is identical for the same seed whatever else was generated,
and differs for another seed. Images are ``image_size`` px (default 32, 16..64); below 48 px
they are drawn at twice the size and box-downsampled (anti-aliasing).

Downstream tasks (grouped like VTAB):
  natural      digits (scikit-learn's handwritten digits re-rendered), shapes, textures
  specialized  cells (patch_camelyon-like), terrain (eurosat-like)
  structured   count, position, orientation, distance
The upstream pre-training distribution draws *other* shapes, *other* texture families and
letters, so none of its classes is a downstream class (see ``DOWNSTREAM_PRIMITIVES`` and
``UPSTREAM_PRIMITIVES``).

Splits follow VTAB-1k: ``train800``, ``val200``, ``train800val200`` (their concatenation) and
``test`` (``n_test`` images, default 1000). Use them in memory via ``resolve_task("generated/<task>")``
or write them with :func:`write_vtab_layout` and read them back with ``resolve_task("vtab1k/<task>", root)``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch.utils.data import Dataset

from ..inputs import check_value
from ..suggest import did_you_mean
from . import _render as R
from .errors import DataError
from .registry import Task, register_reader, reject_options

SPLIT_SIZES = {"train800": 800, "val200": 200}
SPLITS = ("train800", "val200", "train800val200", "test")
MIN_SIZE, MAX_SIZE = 16, 64
MAX_N_TEST = 100_000
"""A split is drawn into memory whole: 100,000 images of 64 px are 1.2 GB; ``n_test=1e12`` is refused
before anything is allocated."""
_CHUNK = 250
_SUPERSAMPLE_BELOW = 48  # larger images are drawn at their own size: 4x less work, edges still fine

DOWNSTREAM_SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "arrow")
DOWNSTREAM_TEXTURES = ("stripes", "checker", "dots", "rings", "waves", "blobs", "grain")
UPSTREAM_SHAPES = ("hexagon", "pentagon", "bowtie", "heart", "crescent", "semicircle", "lshape", "tshape")
UPSTREAM_TEXTURES = ("crosshatch", "gridlines", "spiral", "bricks", "spokes", "speckle")
UPSTREAM_LETTERS = ("A", "E", "F", "H", "K", "M", "P", "R", "W", "X")
DOWNSTREAM_PRIMITIVES = {
    "shapes": DOWNSTREAM_SHAPES,
    "textures": DOWNSTREAM_TEXTURES,
    "glyphs": tuple("0123456789"),
}
UPSTREAM_PRIMITIVES = {"shapes": UPSTREAM_SHAPES, "textures": UPSTREAM_TEXTURES, "glyphs": UPSTREAM_LETTERS}

Renderer = Callable[[np.random.Generator, np.ndarray, int, str], np.ndarray]


@dataclass(frozen=True)
class GeneratedTaskInfo:
    group: str
    class_names: tuple[str, ...]
    render: Renderer  # (rng, labels, render_res, split) -> float image (n, res, res, 3)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ---------------------------------------------------------------- natural


@cache
def _digit_pools() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's 1,797 8x8 digits, split once (fixed permutation) so test glyphs never occur in
    train/val, whatever the seed."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(20230601).permutation(len(digits.target))
    images = (digits.images / 16.0).astype(np.float32)
    cut = 1300
    return {
        "fit": (images[order[:cut]], digits.target[order[:cut]]),
        "test": (images[order[cut:]], digits.target[order[cut:]]),
    }


def _pick(rng: np.random.Generator, labels: np.ndarray, pool_labels: np.ndarray) -> np.ndarray:
    """For each label, the index of a random pool item with that label."""
    picks = np.empty(len(labels), dtype=int)
    for c in np.unique(labels):
        sel = labels == c
        picks[sel] = rng.choice(np.flatnonzero(pool_labels == c), sel.sum())
    return picks


def _draw_glyphs(rng, glyphs: np.ndarray, res: int) -> np.ndarray:
    n = len(glyphs)
    img, mean = R.background(rng, n, res)
    scale = rng.uniform(0.5, 0.8, n)
    cx, cy = rng.uniform(-1, 1, (2, n)) * (1 - scale * 0.8)
    u, v = R.local(res, cx, cy, scale, rng.uniform(-0.4, 0.4, n), rng.uniform(0.8, 1.25, n))
    mask = np.clip(R.sample_glyphs(glyphs, u, v) * 1.6, 0, 1)
    return _clutter(rng, R.paint(img, mask, R.contrasting(rng, mean)), res)


def _clutter(rng, img: np.ndarray, res: int, p: float = 0.6) -> np.ndarray:
    """A thin random line over some images, so that no task is solved by a single colour statistic."""
    n = img.shape[0]
    x, y = R.grid(res)
    angle = rng.uniform(0, np.pi, n)
    offset = rng.uniform(-0.8, 0.8, n)
    dist = np.abs(R.col(np.cos(angle)) * x + R.col(np.sin(angle)) * y - R.col(offset))
    mask = (dist < R.col(rng.uniform(0.03, 0.08, n))) * R.col(rng.random(n) < p)
    return R.paint(img, mask.astype(np.float32), rng.random((n, 3), dtype=np.float32))


def _render_digits(rng, labels, res, split):
    images, targets = _digit_pools()["test" if split == "test" else "fit"]
    return _draw_glyphs(rng, images[_pick(rng, labels, targets)], res)


def _draw_objects(
    rng,
    kinds: Sequence[str],
    kind_index: np.ndarray,
    res: int,
    img=None,
    mean=None,
    scale=None,
    cx=None,
    cy=None,
    angle=None,
) -> np.ndarray:
    n = len(kind_index)
    if img is None:
        img, mean = R.background(rng, n, res)
    scale = rng.uniform(0.4, 0.7, n) if scale is None else scale
    cx = rng.uniform(-1, 1, n) * (1 - scale) if cx is None else cx
    cy = rng.uniform(-1, 1, n) * (1 - scale) if cy is None else cy
    angle = rng.uniform(0, R.TAU, n) if angle is None else angle
    u, v = R.local(res, cx, cy, scale, angle, rng.uniform(0.8, 1.2, n))
    return R.paint(img, R.shape_masks(list(kinds), kind_index, u, v), R.contrasting(rng, mean))


def _render_shapes(rng, labels, res, split):
    return _clutter(rng, _draw_objects(rng, DOWNSTREAM_SHAPES, labels, res), res)


def _draw_textures(rng, families: Sequence[str], labels: np.ndarray, res: int) -> np.ndarray:
    field = np.zeros((len(labels), res, res), dtype=np.float32)
    for k, family in enumerate(families):
        sel = labels == k
        if sel.any():
            field[sel] = R.texture_field(family, rng, int(sel.sum()), res)
    return R.colourise(field, rng)


def _render_textures(rng, labels, res, split):
    return _clutter(rng, _draw_textures(rng, DOWNSTREAM_TEXTURES, labels, res), res, p=0.3)


# ---------------------------------------------------------------- specialized


def _render_cells(rng, labels, res, split):
    """Pink tissue with purple nuclei; class 1 has more, larger, darker, less round nuclei, with
    overlapping ranges so that single images can be ambiguous."""
    n = len(labels)
    tumour = labels.astype(np.float32)
    base = np.array([0.92, 0.72, 0.82], dtype=np.float32) + rng.normal(0, 0.07, (n, 3)).astype(np.float32)
    img = base[:, None, None, :] * (0.85 + 0.15 * R.smooth_noise(rng, n, res, 6))[..., None]
    count = rng.integers(6, 15, n) + (tumour * rng.integers(0, 6, n)).astype(int)
    nuclei = np.zeros((n, res, res), dtype=np.float32)
    for k in range(int(count.max())):
        active = (k < count).astype(np.float32)
        radius = rng.uniform(0.07, 0.12, n) + tumour * rng.uniform(0.0, 0.03, n)
        aspect = rng.uniform(1.0, 1.3, n) + tumour * rng.uniform(0.0, 0.5, n)
        u, v = R.local(res, *rng.uniform(-1, 1, (2, n)), radius, rng.uniform(0, R.TAU, n), aspect)
        density = R.col(active * (rng.uniform(0.55, 0.8, n) + 0.15 * tumour))
        np.maximum(nuclei, (u * u + v * v < 1) * density, out=nuclei)
    shade = np.array([0.35, 0.2, 0.55], dtype=np.float32) * rng.uniform(0.7, 1.2, (n, 1))
    shade *= 1 - 0.15 * tumour[:, None] * rng.random((n, 1))
    img = R.paint(img, nuclei, shade.astype(np.float32))
    return img


TERRAINS = ("water", "forest", "farmland", "urban", "desert", "river")
_PALETTE = {
    "water": ((0.1, 0.25, 0.5), (0.15, 0.35, 0.6)),
    "forest": ((0.1, 0.3, 0.12), (0.2, 0.4, 0.15)),
    "farmland": ((0.45, 0.6, 0.25), (0.75, 0.7, 0.35)),
    "urban": ((0.45, 0.45, 0.47), (0.7, 0.68, 0.66)),
    "desert": ((0.8, 0.68, 0.45), (0.88, 0.78, 0.55)),
    "river": ((0.3, 0.45, 0.2), (0.45, 0.5, 0.28)),
}


def _render_terrain(rng, labels, res, split):
    n = len(labels)
    x, y = R.grid(res)
    field = np.zeros((n, res, res), dtype=np.float32)
    lo, hi = np.zeros((n, 3), np.float32), np.zeros((n, 3), np.float32)
    for k, kind in enumerate(TERRAINS):
        sel = labels == k
        m = int(sel.sum())
        if not m:
            continue
        lo[sel], hi[sel] = _PALETTE[kind]
        if kind == "water":
            f = 0.3 * R.smooth_noise(rng, m, res, 3)
        elif kind == "forest":
            f = R.smooth_noise(rng, m, res, max(res // 4, 4))
        elif kind == "farmland":
            f = R.texture_field("gridlines", rng, m, res) * 0.4 + 0.6 * R.smooth_noise(rng, m, res, 3)
        elif kind == "urban":
            f = R.texture_field("bricks", rng, m, res) * 0.7 + 0.3 * R.smooth_noise(rng, m, res, max(res // 4, 4))
        elif kind == "desert":
            f = 0.5 + 0.25 * R.texture_field("waves", rng, m, res) - 0.125
        else:
            f = R.smooth_noise(rng, m, res, 4)
        field[sel] = f
    img = lo[:, None, None, :] + (hi - lo)[:, None, None, :] * field[..., None]
    river = labels == TERRAINS.index("river")
    m = int(river.sum())
    if m:
        angle = rng.uniform(0, np.pi, m)
        u = R.col(np.cos(angle)) * x + R.col(np.sin(angle)) * y
        v = -R.col(np.sin(angle)) * x + R.col(np.cos(angle)) * y
        bend = R.col(rng.uniform(0.1, 0.35, m)) * np.sin(R.col(rng.uniform(2, 5, m)) * u + R.col(rng.uniform(0, 6, m)))
        band = (np.abs(v - bend) < R.col(rng.uniform(0.06, 0.15, m))).astype(np.float32)
        img[river] = R.paint(img[river], band, np.tile(np.array([[0.15, 0.3, 0.55]], np.float32), (m, 1)))
    # Colour alone must not give the class away: shift every image towards a random tint.
    tint = rng.random((n, 1, 1, 3), dtype=np.float32)
    weight = rng.uniform(0.2, 0.5, (n, 1, 1, 1)).astype(np.float32)
    jitter = rng.uniform(0.75, 1.25, (n, 1, 1, 3)).astype(np.float32)
    return np.clip((img * (1 - weight) + tint * weight) * jitter, 0, 1)


# ---------------------------------------------------------------- structured


def _render_count(rng, labels, res, split):
    n = len(labels)
    img, mean = R.background(rng, n, res)
    count = labels + 1
    cells = rng.permuted(np.tile(np.arange(16), (n, 1)), axis=1)
    centres = np.array([-0.75, -0.25, 0.25, 0.75])
    for k in range(int(count.max())):
        active = k < count
        scale = rng.uniform(0.14, 0.21, n)
        cx = centres[cells[:, k] % 4] + rng.uniform(-1, 1, n) * (0.23 - scale)
        cy = centres[cells[:, k] // 4] + rng.uniform(-1, 1, n) * (0.23 - scale)
        kinds = rng.integers(0, len(DOWNSTREAM_SHAPES), n)
        drawn = _draw_objects(rng, DOWNSTREAM_SHAPES, kinds, res, img, mean, scale, cx, cy)
        img = np.where(active[:, None, None, None], drawn, img)
    return img


def _render_position(rng, labels, res, split, bins: int = 8):
    n = len(labels)
    scale = rng.uniform(0.15, 0.28, n)
    cx = -0.8 + (labels + rng.random(n)) * (1.6 / bins)
    cy = rng.uniform(-0.75, 0.75, n)
    kinds = rng.integers(0, len(DOWNSTREAM_SHAPES), n)
    return _draw_objects(rng, DOWNSTREAM_SHAPES, kinds, res, scale=scale, cx=cx, cy=cy)


def _render_orientation(rng, labels, res, split, bins: int = 8):
    n = len(labels)
    angle = (labels + rng.random(n)) * (R.TAU / bins)
    scale = rng.uniform(0.35, 0.6, n)
    cx, cy = rng.uniform(-1, 1, (2, n)) * (1 - scale)
    kinds = np.full(n, DOWNSTREAM_SHAPES.index("arrow"))
    return _clutter(
        rng,
        _draw_objects(rng, DOWNSTREAM_SHAPES, kinds, res, scale=scale, cx=cx, cy=cy, angle=angle),
        res,
        p=0.3,
    )


DISTANCE_BINS = 5
_MAX_DISTANCE = 6.5


def _render_distance(rng, labels, res, split):
    """An object on a ground plane: distance (5 geometric bins in [1, 6.5]) shows in its size and in
    how far below the horizon it stands, both jittered."""
    n = len(labels)
    x, y = R.grid(res)
    horizon = rng.uniform(-0.35, 0.0, n)
    sky = rng.uniform(0.5, 1.0, (n, 3)).astype(np.float32)
    ground = rng.uniform(0.1, 0.6, (n, 3)).astype(np.float32)
    below = (y > R.col(horizon)).astype(np.float32)[..., None]
    texture = 0.8 + 0.2 * R.smooth_noise(rng, n, res, 6)[..., None]
    img = sky[:, None, None, :] * (1 - below) + ground[:, None, None, :] * below * texture
    distance = np.exp((labels + rng.random(n)) / DISTANCE_BINS * np.log(_MAX_DISTANCE))
    scale = 0.5 / distance * rng.uniform(0.85, 1.15, n)
    base = horizon + 1.0 / distance * rng.uniform(0.9, 1.1, n)
    cx = rng.uniform(-0.75, 0.75, n)
    kinds = rng.integers(0, len(DOWNSTREAM_SHAPES), n)
    return _draw_objects(
        rng, DOWNSTREAM_SHAPES, kinds, res, img, img.mean(axis=(1, 2)), scale, cx, base - scale, np.zeros(n)
    )


GENERATED_TASKS: dict[str, GeneratedTaskInfo] = {
    "digits": GeneratedTaskInfo("natural", tuple(f"digit:{d}" for d in range(10)), _render_digits),
    "shapes": GeneratedTaskInfo("natural", tuple(f"shape:{s}" for s in DOWNSTREAM_SHAPES), _render_shapes),
    "textures": GeneratedTaskInfo("natural", tuple(f"texture:{t}" for t in DOWNSTREAM_TEXTURES), _render_textures),
    "cells": GeneratedTaskInfo("specialized", ("cells:normal", "cells:tumour"), _render_cells),
    "terrain": GeneratedTaskInfo("specialized", tuple(f"terrain:{t}" for t in TERRAINS), _render_terrain),
    "count": GeneratedTaskInfo("structured", tuple(f"count:{k}" for k in range(1, 7)), _render_count),
    "position": GeneratedTaskInfo("structured", tuple(f"position:x{k}" for k in range(8)), _render_position),
    "orientation": GeneratedTaskInfo(
        "structured", tuple(f"orientation:{45 * k}deg" for k in range(8)), _render_orientation
    ),
    "distance": GeneratedTaskInfo(
        "structured", tuple(f"distance:bin{k}" for k in range(DISTANCE_BINS)), _render_distance
    ),
}


def generated_task_names() -> list[str]:
    """Bare names of the downstream tasks (``digits``, ``shapes``, …); specs are ``generated/<name>``."""
    return list(GENERATED_TASKS)


# ---------------------------------------------------------------- generation


def _check_size(image_size: int) -> int:
    return check_value(image_size, "image_size", int, MIN_SIZE, MAX_SIZE, DataError)


def _rng(seed: int, task: str, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(task.encode()), zlib.crc32(split.encode())])


def _draw(task: str, render: Renderer, num_classes: int, n: int, split: str, seed: int, image_size: int):
    rng = _rng(seed, task, split)
    labels = rng.permutation(np.arange(n) % num_classes)
    res = 2 * image_size if image_size < _SUPERSAMPLE_BELOW else image_size
    images = np.concatenate(
        [R.finish(render(rng, labels[i : i + _CHUNK], res, split), rng, image_size) for i in range(0, n, _CHUNK)]
    )
    return images, labels.astype(np.int64)


@lru_cache(maxsize=64)
def _generate(task: str, split: str, seed: int, image_size: int, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    if split == "train800val200":
        parts = [_generate(task, s, seed, image_size, n_test) for s in ("train800", "val200")]
        images, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    else:
        info = GENERATED_TASKS[task]
        n = n_test if split == "test" else SPLIT_SIZES[split]
        images, labels = _draw(task, info.render, info.num_classes, n, split, seed, image_size)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def generate_split(
    task: str, split: str, seed: int = 0, image_size: int = 32, n_test: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(n, image_size, image_size, 3)`` uint8 and labels ``(n,)`` int64 of one split.

    The arrays are read-only and cached per arguments.
    """
    if task not in GENERATED_TASKS:
        raise DataError(f"unknown generated task {task!r}; known: {', '.join(GENERATED_TASKS)}.")
    if split not in SPLITS:
        raise DataError(f"generated/{task}: no split {split!r}; available: {', '.join(SPLITS)}.")
    seed, image_size, n_test = _options(seed, image_size, n_test).values()
    return _generate(task, split, seed, image_size, n_test)


class ArrayDataset(Dataset):
    """In-memory ``(image, label)`` pairs; images are returned as PIL RGB unless ``transform`` maps them."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        transform: Callable | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if len(images) != len(labels) or len(images) == 0:
            raise DataError(f"ArrayDataset needs as many labels as images (>0); got {len(images)} and {len(labels)}.")
        self.images, self.labels, self.transform = images, labels, transform
        self.class_names = tuple(class_names) if class_names else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = Image.fromarray(self.images[index])
        return (self.transform(img) if self.transform else img), int(self.labels[index])


def _options(seed: int = 0, image_size: int = 32, n_test: int = 1000) -> dict[str, int]:
    """The options typed and ranged before anything is drawn: ``n_test`` is held in memory whole."""
    return {
        "seed": check_value(seed, "seed", int, 0, 2**63 - 1, DataError),
        "image_size": _check_size(image_size),
        "n_test": check_value(n_test, "n_test", int, 1, MAX_N_TEST, DataError),
    }


@register_reader("generated", lambda: [f"generated/{t}" for t in GENERATED_TASKS])
def resolve_generated(rest: str, data_dir: Path | None, **options: Any) -> Task:
    """``generated/<task>``, in memory; options ``seed`` (0), ``image_size`` (32), ``n_test`` (1000)."""
    spec = f"generated/{rest}"
    if rest not in GENERATED_TASKS:
        hint = did_you_mean(rest, GENERATED_TASKS, prefix="generated/")
        raise DataError(f"{spec}: unknown generated task{hint}; known: {', '.join(GENERATED_TASKS)}.")
    reject_options(spec, options, ("seed", "image_size", "n_test"))
    opts = _options(**options)
    info = GENERATED_TASKS[rest]
    return Task(
        name=spec,
        num_classes=info.num_classes,
        protocol="vtab",
        splits=SPLITS,
        train_split="train800val200",
        eval_split="test",
        tuning_splits=("train800", "val200"),
        group=info.group,
        class_names=info.class_names,
        options=opts,
        factory=partial(_task_dataset, rest, opts),
    )


def _task_dataset(task: str, opts: dict[str, int], split: str, transform, options) -> ArrayDataset:
    """Drawn in memory: ``options`` (bad images, paths outside the root) have nothing to act on."""
    images, labels = generate_split(task, split, **opts)
    return ArrayDataset(images, labels, transform, GENERATED_TASKS[task].class_names)


def write_vtab_layout(
    root: str | Path,
    tasks: Sequence[str] | None = None,
    seed: int = 0,
    image_size: int = 32,
    n_test: int = 1000,
    image_format: str = "png",
) -> list[Path]:
    """Write tasks as ``<root>/vtab-1k/<task>/images/<split>/<index>.<ext>`` with the four split lists.

    ``train800val200.txt`` lists the train800 and val200 files, as the common VTAB generator does.
    PNG round-trips pixels exactly; ``jpg`` (quality 95) is closer to real VTAB folders.
    Returns the task folders; read them back with ``resolve_task("vtab1k/<task>", root)``.
    """
    if image_format not in ("png", "jpg"):
        raise DataError(f"image_format must be 'png' or 'jpg', got {image_format!r}.")
    folders = []
    for task in tasks or list(GENERATED_TASKS):
        folder = Path(root) / "vtab-1k" / task
        lines: dict[str, list[str]] = {}
        for split in ("train800", "val200", "test"):
            images, labels = generate_split(task, split, seed, image_size, n_test)
            (folder / "images" / split).mkdir(parents=True, exist_ok=True)
            lines[split] = []
            for i, (img, label) in enumerate(zip(images, labels, strict=True)):
                rel = f"images/{split}/{i:06d}.{image_format}"
                Image.fromarray(img).save(folder / rel, **({"quality": 95} if image_format == "jpg" else {}))
                lines[split].append(f"{rel} {int(label)}")
        lines["train800val200"] = lines["train800"] + lines["val200"]
        for split, entries in lines.items():
            (folder / f"{split}.txt").write_text("\n".join(entries) + "\n", encoding="utf-8")
        folders.append(folder)
    return folders


# ---------------------------------------------------------------- upstream


@cache
def _letter_glyphs(px: int = 16) -> np.ndarray:
    """Letters rendered once with Pillow's built-in font, as (len(UPSTREAM_LETTERS), px, px) in [0, 1]."""
    font = ImageFont.load_default(size=int(px * 0.9))
    glyphs = []
    for letter in UPSTREAM_LETTERS:
        canvas = Image.new("L", (px, px), 0)
        draw = ImageDraw.Draw(canvas)
        left, top, right, bottom = draw.textbbox((0, 0), letter, font=font)
        draw.text(((px - (right - left)) / 2 - left, (px - (bottom - top)) / 2 - top), letter, fill=255, font=font)
        glyphs.append(np.asarray(canvas, dtype=np.float32) / 255.0)
    return np.stack(glyphs)


UPSTREAM_CLASSES: tuple[str, ...] = (
    tuple(f"shape:{s}" for s in UPSTREAM_SHAPES)
    + tuple(f"texture:{t}" for t in UPSTREAM_TEXTURES)
    + tuple(f"letter:{c}" for c in UPSTREAM_LETTERS)
)


def _render_upstream(rng, labels, res, split):
    n_shapes, n_textures = len(UPSTREAM_SHAPES), len(UPSTREAM_TEXTURES)
    is_shape = labels < n_shapes
    is_texture = (labels >= n_shapes) & (labels < n_shapes + n_textures)
    is_letter = labels >= n_shapes + n_textures
    img = np.zeros((len(labels), res, res, 3), dtype=np.float32)
    if is_shape.any():
        img[is_shape] = _draw_objects(rng, UPSTREAM_SHAPES, labels[is_shape], res)
    if is_texture.any():
        img[is_texture] = _draw_textures(rng, UPSTREAM_TEXTURES, labels[is_texture] - n_shapes, res)
    if is_letter.any():
        letters = labels[is_letter] - n_shapes - n_textures
        img[is_letter] = _draw_glyphs(rng, _letter_glyphs()[letters], res)
    return _clutter(rng, img, res, p=0.3)


def upstream_arrays(n: int = 10000, seed: int = 0, image_size: int = 32, split: str = "train"):
    """Images and labels of the upstream pre-training distribution (classes in ``UPSTREAM_CLASSES``)."""
    _check_size(image_size)
    return _draw("upstream", _render_upstream, len(UPSTREAM_CLASSES), n, split, seed, image_size)


def upstream_dataset(
    n: int = 10000,
    seed: int = 0,
    image_size: int = 32,
    split: str = "train",
    transform: Callable | None = None,
) -> ArrayDataset:
    """A dataset for pre-training a tiny backbone; its classes are disjoint from every downstream task."""
    images, labels = upstream_arrays(n, seed, image_size, split)
    return ArrayDataset(images, labels, transform, UPSTREAM_CLASSES)
